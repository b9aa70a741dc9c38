"""Tiny LoRAs for the tiny Z-Image transformer, made with peft and saved in the published format.

`ZImagePipeline.save_lora_weights` writes `pytorch_lora_weights.safetensors` with `transformer.`-prefixed
peft keys, the file that LoRA repositories on the Hub hold; `install_lora_repo` puts one into a
Hugging Face cache layout like a download leaves it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.hub_layout import blob_name, install_snapshot, repo_folder_name
from tiny_model import snapshot_dir

LORA_FILE = "pytorch_lora_weights.safetensors"


def build_tiny_lora(
    hub_cache: Path,
    folder: Path,
    *,
    seed: int,
    rank: int = 4,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> Path:
    """A LoRA of `rank` on the tiny transformer's attention layers, with random (non-zero) weights so that
    it changes the picture; returns the .safetensors file."""
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = ZImageTransformer2DModel.from_pretrained(snapshot_dir(hub_cache) / "transformer")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.data.normal_(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder / LORA_FILE


def install_lora_repo(hub_cache: Path, repo_id: str, *, seed: int) -> Path:
    """Build a tiny LoRA (for the tiny model in `hub_cache`) and install it there as the Hub repository `repo_id`."""
    with tempfile.TemporaryDirectory(prefix="tiny-lora-") as staging:
        build_tiny_lora(hub_cache, Path(staging), seed=seed)
        files = sorted(path for path in Path(staging).rglob("*") if path.is_file())
        names = {path.relative_to(staging).as_posix(): blob_name(path) for path in files}
        return install_snapshot(Path(staging), Path(hub_cache) / repo_folder_name(repo_id), names)
