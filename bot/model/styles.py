"""Styles: the LoRAs of LORAS, found in the cache (or on disk), loaded once at start-up and switched per job.

Uncompiled, every LoRA is its own diffusers adapter and a switch is `set_adapters` / `disable_lora`:
no weights are read again. Compiled blocks would recompile whenever the set of active adapters or
their scales changed, so with compilation the LoRAs share one adapter slot prepared for hot-swapping
(`enable_lora_hotswap`, called before the first LoRA is loaded and before compiling): ranks are
padded to the largest, scales are tensors, and a switch copies the other LoRA's weights into the
slot in place (`load_lora_weights(..., hotswap=True)`) and sets the scale tensors; no style is the
scale 0. Every LoRA's weights are kept, converted, in memory, so a switch never touches the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from bot.settings import LoraSource

log = logging.getLogger(__name__)

HOTSWAP_SLOT = "style"
LORA_FILE_NAMES = ("pytorch_lora_weights.safetensors",)  # what diffusers' save_lora_weights writes


class StyleError(RuntimeError):
    """A LORAS entry cannot be used; the message is one line naming it and what to do."""


def lora_file(lora: LoraSource) -> Path:
    """The weights file of `lora` from the local disk or the Hugging Face cache; never downloads."""
    if lora.path is not None:
        if not lora.path.is_file():
            raise StyleError(f"LORAS: style {lora.name!r}: the file {lora.path} does not exist")
        return lora.path
    from huggingface_hub import hf_hub_download, snapshot_download

    assert lora.repo_id is not None
    missing = (
        f"LORAS: style {lora.name!r} ({lora.source}) is not in the Hugging Face cache; "
        "run `zimage-bot download` where there is internet"
    )
    try:
        if lora.filename:
            return Path(hf_hub_download(lora.repo_id, lora.filename, local_files_only=True))
        folder = Path(snapshot_download(lora.repo_id, local_files_only=True, allow_patterns=["*.safetensors"]))
    except Exception as error:  # the hub raises several types for "not cached"
        raise StyleError(missing) from error
    return _pick_weights(lora, folder)


def download_lora(lora: LoraSource) -> Path:
    """Fetch `lora` into the cache (only its .safetensors files); a local file is just checked."""
    if lora.path is not None:
        return lora_file(lora)
    from huggingface_hub import hf_hub_download, snapshot_download

    assert lora.repo_id is not None
    try:
        if lora.filename:
            return Path(hf_hub_download(lora.repo_id, lora.filename))
        folder = Path(snapshot_download(lora.repo_id, allow_patterns=["*.safetensors"]))
    except Exception as error:
        raise StyleError(f"LORAS: style {lora.name!r}: downloading {lora.source} failed: {error}") from error
    return _pick_weights(lora, folder)


def lora_report(loras: Sequence[LoraSource]) -> list[tuple[str, str, bool]]:
    """(name, where or what is wrong, usable) for each LoRA, for cache-check."""
    rows = []
    for lora in loras:
        try:
            path = lora_file(lora)
        except StyleError as error:
            rows.append((lora.name, str(error).split(": ", 2)[-1], False))
        else:
            rows.append((lora.name, f"{lora.source} -> {path} ({path.stat().st_size / 2**20:.1f} MiB)", True))
    return rows


def _pick_weights(lora: LoraSource, folder: Path) -> Path:
    files = sorted(folder.rglob("*.safetensors"))
    named = [path for path in files if path.name in LORA_FILE_NAMES]
    if len(named) == 1 or len(files) == 1:
        return (named or files)[0]
    if not files:
        raise StyleError(f"LORAS: style {lora.name!r}: {lora.repo_id} holds no .safetensors file")
    names = ", ".join(path.relative_to(folder).as_posix() for path in files[:5])
    raise StyleError(
        f"LORAS: style {lora.name!r}: {lora.repo_id} holds several weight files ({names}); "
        f"name one: {lora.name}={lora.repo_id}/FILE.safetensors"
    )


class StyleBank:
    """The configured LoRAs, loaded into one pipeline, and which of them is active."""

    def __init__(self, loras: Sequence[LoraSource]) -> None:
        self.loras = {lora.name: lora for lora in loras}
        self.hotswap = False
        self._states: dict[str, dict[str, torch.Tensor]] = {}
        self._slot_holds: str | None = None
        self._unit_scales: list[tuple[object, float]] = []  # the slot's scales at weight 1 of the LoRA it holds
        self._active: tuple[str | None, float] = (None, 0.0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.loras)

    def default_weight(self, name: str) -> float:
        return self.loras[name].weight

    def load(self, pipe, *, hotswap: bool) -> None:
        """Load every LoRA into `pipe` (before compiling it); raises StyleError naming a bad one."""
        if not self.loras:
            return
        from safetensors.torch import load_file

        files = {name: lora_file(lora) for name, lora in self.loras.items()}
        self.hotswap = hotswap
        states = {}
        for name, path in files.items():
            try:
                state = load_file(str(path))
            except Exception as error:
                raise StyleError(
                    f"LORAS: style {name!r}: {path} is not a readable safetensors file ({error})"
                ) from error
            states[name] = state
        if hotswap:
            rank = max(_rank(state) for state in states.values())
            pipe.transformer.enable_lora_hotswap(target_rank=rank)
            first = next(iter(states))
            self._load_one(pipe, first, states[first], adapter=HOTSWAP_SLOT)
            self._slot_holds = first
            # Hot-swapping checks every later LoRA against the slot now, at start-up, not on a user's job.
            for name, state in states.items():
                if name != first:
                    self._load_one(pipe, name, state, adapter=HOTSWAP_SLOT, swap=True)
                    self._slot_holds = name
            self._states = states
            self._unit_scales = self._read_slot_scales(pipe)
            self._set_slot_scale(pipe, 0.0)
        else:
            for name, state in states.items():
                self._load_one(pipe, name, state, adapter=name)
            pipe.disable_lora()
        self._active = (None, 0.0)
        log.info("styles loaded: %s%s", ", ".join(self.loras), " (hot-swap slot for compilation)" if hotswap else "")

    def apply(self, pipe, name: str | None, weight: float | None = None) -> None:
        """Make `name` at `weight` (its LORAS weight when None) the active style; None for no style."""
        if not self.loras:
            return
        wanted = (name, 0.0 if name is None else (weight if weight is not None else self.loras[name].weight))
        if wanted == self._active:
            return
        if self.hotswap:
            if name is not None and name != self._slot_holds:
                pipe.load_lora_weights(dict(self._states[name]), adapter_name=HOTSWAP_SLOT, hotswap=True)
                self._slot_holds = name
                self._unit_scales = self._read_slot_scales(pipe)
            self._set_slot_scale(pipe, wanted[1])
        elif name is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([name], [wanted[1]])
        self._active = wanted

    def _load_one(self, pipe, name: str, state: dict, *, adapter: str, swap: bool = False) -> None:
        source = self.loras[name].source
        try:
            # diffusers may take keys out of the dict it is given: hand it a copy.
            pipe.load_lora_weights(dict(state), adapter_name=adapter, hotswap=swap)
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise StyleError(f"LORAS: style {name!r} ({source}) does not fit this model: {reason}") from error
        if adapter not in pipe.transformer.peft_config:
            raise StyleError(f"LORAS: style {name!r} ({source}) does not fit this model: none of its layers are in it")

    @staticmethod
    def _read_slot_scales(pipe) -> list[tuple[object, float]]:
        """What loading the slot's LoRA set each layer's scale to: its alpha / rank, at weight 1."""
        from peft.tuners.lora import LoraLayer

        return [
            (module, float(module.scaling[HOTSWAP_SLOT]))
            for module in pipe.transformer.modules()
            if isinstance(module, LoraLayer) and HOTSWAP_SLOT in module.scaling
        ]

    def _set_slot_scale(self, pipe, weight: float) -> None:
        """Scales of a hot-swap slot are tensors: filled in place, so compiled code sees no new constant."""
        for module, unit in self._unit_scales:
            scaling = module.scaling[HOTSWAP_SLOT]  # type: ignore[attr-defined]
            if isinstance(scaling, torch.Tensor):
                scaling.fill_(weight * unit)
            else:
                module.scaling[HOTSWAP_SLOT] = weight * unit  # type: ignore[attr-defined]


def _rank(state: dict[str, torch.Tensor]) -> int:
    ranks = [tensor.shape[0] for key, tensor in state.items() if "lora_A" in key or "lora_down" in key]
    return max(ranks, default=1)
