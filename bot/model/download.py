"""Fetching the model into the Hugging Face cache (the only code that reaches the network for it)."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import constants, snapshot_download

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The model could not be fetched; the message says why and what to do."""


def offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing may be fetched."""
    return bool(constants.HF_HUB_OFFLINE)


def download_model(model_id: str, revision: str, allow_patterns: list[str] | None = None) -> Path:
    """Download (or finish downloading) the model's files (all, or those matching `allow_patterns`);
    returns the snapshot folder.

    huggingface_hub keeps partial files as `.incomplete` blobs and resumes them, and skips files
    already in the cache, so running this again after an interruption continues where it stopped.
    It shows a progress bar on the terminal.
    """
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(
            f"{model_id} is not completely in the cache and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE (or run `zimage-bot download` on a machine with internet access)"
        )
    size_note = " (about 33 GB for Z-Image-Turbo)" if allow_patterns is None else ""
    log.info("downloading %s@%s into %s%s", model_id, revision, constants.HF_HUB_CACHE, size_note)
    try:
        return Path(snapshot_download(model_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as error:  # the hub raises many types: network, auth, missing repo, disk full
        raise DownloadError(f"downloading {model_id}@{revision} failed: {error}") from error
