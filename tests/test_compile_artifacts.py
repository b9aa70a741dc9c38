"""Compiled code saved in DATA_DIR after a warm-up and handed to torch at the next start.

The restart test compiles the tiny model for real with inductor's CPU backend (a C++ compiler), in fresh
processes, as two starts of the bot would; the file-format tests need no compiling.
"""

from __future__ import annotations

import logging
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.model.compile_artifacts import (
    MAGIC,
    ArtifactFileError,
    CompileArtifacts,
    artifact_key,
    build,
    key_digest,
    parse,
)
from test_bf16_copy import probe

KEY = artifact_key(
    model_id="tiny-org/tiny-z-image",
    commit="a" * 40,
    device=torch.device("cpu"),
    dtype=torch.float32,
    compile_options={"fullgraph": True},
    attention_backend=None,
    quantize="none",
    styles=(),
    warmup_sizes=("64x64",),
    enhancer=False,
)


def test_the_key_names_what_changes_the_compiled_code():
    assert KEY["torch"] == torch.__version__ and KEY["device"].startswith("cpu")
    assert KEY["commit"] == "a" * 40 and KEY["dtype"] == "float32" and KEY["warmup_sizes"] == "64x64"
    other = dict(KEY, dtype="bfloat16")
    assert key_digest(other) != key_digest(KEY)
    assert CompileArtifacts(Path("x"), KEY).path.name == f"artifacts-{key_digest(KEY)}.bin"


def test_a_file_round_trips_and_any_damage_is_detected():
    data = build(KEY, b"compiled code")
    header, blob = parse(data)
    assert blob == b"compiled code" and header["key"] == KEY
    with pytest.raises(ArtifactFileError, match="truncated"):
        parse(data[:-3])
    with pytest.raises(ArtifactFileError, match="checksum"):
        parse(data[:-1] + b"X")
    with pytest.raises(ArtifactFileError, match="not a compile-artifact file"):
        parse(b"\x00" * 200)
    with pytest.raises(ArtifactFileError, match="truncated header"):
        parse(data[: len(MAGIC) + 20])
    with pytest.raises(ArtifactFileError, match="format 2"):
        parse(data.replace(b'"format": 1', b'"format": 2'))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("contents", "why"),
    [
        (lambda: build(KEY, b"x" * 1000)[:-10], "truncated"),
        (lambda: build(KEY, b"x" * 1000)[:-1] + b"y", "checksum mismatch"),
        (lambda: b"#!/bin/sh\necho not ours\n", "not a compile-artifact file"),
        (lambda: build(dict(KEY, torch="0.0"), b"x"), "its key does not match its name"),
        # Intact and ours, but not something torch can read: torch's own check.
        (lambda: build(KEY, b"not a pickle of compiled code"), "torch could not read"),
    ],
)
def test_an_unusable_file_is_deleted_with_a_warning_and_never_stops_the_start(tmp_path, caplog, contents, why):
    artifacts = CompileArtifacts(tmp_path / "compile-cache", KEY)
    _write(artifacts.path, contents())
    with caplog.at_level(logging.INFO, logger="bot.model.compile_artifacts"):
        loaded = artifacts.load()
    assert not loaded.loaded and why in loaded.reason
    ours = [record for record in caplog.records if record.name == "bot.model.compile_artifacts"]
    warnings = [record for record in ours if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unusable" in warnings[0].getMessage() and why in warnings[0].getMessage()
    assert not artifacts.path.exists()


def test_a_file_made_for_other_settings_is_not_loaded_and_the_log_says_which(tmp_path, caplog):
    directory = tmp_path / "compile-cache"
    old_key = dict(KEY, torch="2.12.0", device="NVIDIA H100 (sm_90)")
    old = CompileArtifacts(directory, old_key)
    _write(old.path, build(old_key, b"compiled for another torch and GPU"))
    with caplog.at_level(logging.INFO, logger="bot.model.compile_artifacts"):
        loaded = CompileArtifacts(directory, KEY).load()
    assert not loaded.loaded
    assert f"torch 2.12.0 -> {torch.__version__}" in loaded.reason
    assert "device NVIDIA H100 (sm_90) -> cpu" in loaded.reason
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "made for other settings" in lines[0] and lines[0].endswith("compiling")
    assert old.path.exists()  # another GPU of the same DATA_DIR may still use it


def test_nothing_saved_yet_is_said_plainly(tmp_path):
    loaded = CompileArtifacts(tmp_path / "compile-cache", KEY).load()
    assert not loaded.loaded and loaded.reason == "none saved yet"


@pytest.fixture
def something_compiled():
    """A small function compiled with inductor in this process, so torch has artifacts to save."""
    torch.compiler.reset()
    compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1, fullgraph=True)
    compiled(torch.randn(8))
    yield
    torch.compiler.reset()


def test_saving_on_a_full_disk_is_a_warning_and_leaves_no_partial_file(tmp_path, caplog, something_compiled):
    artifacts = CompileArtifacts(tmp_path / "compile-cache", KEY)
    artifacts.directory.mkdir()
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Writes past 100 bytes fail with an OSError (EFBIG), as writes to a full disk do (ENOSPC).
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, limits[1]))
    try:
        with caplog.at_level(logging.WARNING, logger="bot.model.compile_artifacts"):
            assert artifacts.save() is None
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert "could not save the compiled code" in caplog.text and "the next start compiles again" in caplog.text
    assert list(artifacts.directory.iterdir()) == []

    written = artifacts.save()  # with room again, the same artifacts are written whole
    assert written and parse(artifacts.path.read_bytes())[0]["key"] == KEY


def test_a_restart_loads_the_compiled_code_the_first_start_saved(tmp_path, hub_cache):
    """Two starts with COMPILE=1, in fresh processes, on the same DATA_DIR: the first compiles and saves
    the artifacts, the second loads them before compiling; both draw the same pixels as eager code."""
    options = dict(COMPILE="1", DTYPE="float32")
    first, first_log, first_pixels = probe(tmp_path, hub_cache, "first.npy", own_compile_cache=True, **options)
    assert first["compiled_code"] == "compiled", first_log[-2000:]
    assert "no compiled code loaded (none saved yet); compiling" in first_log
    assert "compiled code saved to" in first_log
    saved = list((tmp_path / "data" / "compile-cache").glob("artifacts-*.bin"))
    assert len(saved) == 1
    header, _ = parse(saved[0].read_bytes())
    assert header["key"]["torch"] == torch.__version__ and header["key"]["model"] == "tiny-org/tiny-z-image"

    second, second_log, second_pixels = probe(tmp_path, hub_cache, "second.npy", own_compile_cache=True, **options)
    assert second["compiled_code"] == "loaded", second_log[-2000:]
    assert f"compiled code loaded from {saved[0]}" in second_log
    assert "warm-up took" in second_log and "(compiled code loaded from DATA_DIR)" in second_log
    assert "WARNING" not in second_log
    np.testing.assert_array_equal(second_pixels, first_pixels)
    # inductor's own caches went to DATA_DIR too, not to a temporary folder a reboot empties.
    assert any(path.is_dir() for path in (tmp_path / "data" / "compile-cache").iterdir())

    _, _, eager_pixels = probe(tmp_path, hub_cache, "eager.npy", COMPILE="0", DTYPE="float32")
    np.testing.assert_allclose(second_pixels.astype(float), eager_pixels.astype(float), atol=2)


def test_compiling_off_reports_no_compiled_code_and_saves_none(loaded_service):
    assert not loaded_service.compile and loaded_service.load_report.compiled_code == "off"
    assert not (loaded_service.settings.data_dir / "compile-cache").exists()


def test_a_loaded_file_is_deleted_when_compiling_fails_with_it(tmp_path, caplog, something_compiled):
    directory = tmp_path / "compile-cache"
    assert CompileArtifacts(directory, KEY).save()
    artifacts = CompileArtifacts(directory, KEY)
    loaded = artifacts.load()
    assert loaded.loaded and loaded.size_bytes > 0 and "compiled code loaded from" in loaded.describe()
    assert artifacts.save() is None  # nothing new was compiled: the file is not written again
    with caplog.at_level(logging.WARNING, logger="bot.model.compile_artifacts"):
        artifacts.discard()
    assert "compiling failed with it" in caplog.text and not artifacts.path.exists()
