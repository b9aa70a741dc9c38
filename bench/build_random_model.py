"""A random-weight Z-Image pipeline in the published repository's layout, installed in a Hugging Face cache.

Speed does not depend on the weights' values, so a model with the published architecture, file layout
and dtypes (fp32 transformer in 3 shards, bf16 text encoder in 3 shards, bf16 VAE, tokenizer, scheduler)
measures loading and generation like the real one, on machines that cannot download it.

Weights are made shard by shard directly in their stored dtype on the given device (a GPU makes the
33 GB in seconds) and written with safetensors; no model is ever materialised: the modules are built
on the meta device only to learn the parameter names and shapes. Hashing (blob names) and writing
overlap the making of the next shard.

With --classifier it builds the safety check's stand-in instead: Falconsai/nsfw_image_detection's
architecture (ViT-base patch16 224, labels normal / nsfw) with random weights (made on the CPU; 343 MB).

Usage: python -m bench.build_random_model HUB_CACHE [--repo-id ORG/NAME] [--tiny] [--device cuda] [--classifier]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.hub_layout import blob_name, install_snapshot, make_tokenizer, repo_folder_name, save_vit_classifier

BENCH_REPO_ID = "random-weights/Z-Image-Turbo"
# The safety classifier's stand-in: Falconsai/nsfw_image_detection's architecture (ViT-base patch16 224,
# labels normal / nsfw) with random weights, fp32 in one model.safetensors as published.
BENCH_SAFETY_REPO_ID = "random-weights/nsfw_image_detection"
TINY_CLASSIFIER = dict(image_size=32, patch_size=8, hidden_size=16, layers=1, heads=2, intermediate_size=32)


@dataclass(frozen=True)
class ModelSpec:
    """Component configurations and how the weights are stored; the full size is the published model's."""

    transformer: dict
    text_encoder: dict  # Qwen3Config arguments; vocab_size None means the tokenizer's size
    vae: dict
    scheduler: dict
    transformer_shards: int = 3
    text_encoder_shards: int = 3
    # Large enough that every word of the benchmark's prompts becomes one token, as most English words
    # are for Qwen's tokenizer: captions then have about the real length.
    tokenizer_vocab_size: int = 4096
    init_std: float = 0.02
    components: dict = field(
        default_factory=lambda: {
            # component: (library, class, stored dtype)
            "transformer": ("diffusers", "ZImageTransformer2DModel", "float32"),
            "text_encoder": ("transformers", "Qwen3Model", "bfloat16"),
            "vae": ("diffusers", "AutoencoderKL", "bfloat16"),
        }
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)

# The published Tongyi-MAI/Z-Image-Turbo configurations (see ZIMAGE.md).
FULL_SIZE = ModelSpec(
    transformer=dict(
        all_patch_size=[2],
        all_f_patch_size=[1],
        axes_dims=[32, 48, 48],
        axes_lens=[1536, 512, 512],
        cap_feat_dim=2560,
        dim=3840,
        in_channels=16,
        n_heads=30,
        n_kv_heads=30,
        n_layers=30,
        n_refiner_layers=2,
        norm_eps=1e-5,
        qk_norm=True,
        rope_theta=256.0,
        t_scale=1000.0,
    ),
    text_encoder=dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        vocab_size=151936,
    ),
    vae=dict(_VAE_COMMON, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32),
    scheduler=_SCHEDULER,
)

# diffusers' own test sizes: builds and loads in well under a second on a CPU.
TINY = ModelSpec(
    transformer=dict(
        FULL_SIZE.transformer,
        axes_dims=[8, 4, 4],  # must add up to dim / n_heads
        axes_lens=[256, 32, 32],
        cap_feat_dim=32,
        dim=32,
        n_heads=2,
        n_kv_heads=2,
        n_layers=2,
        n_refiner_layers=1,
    ),
    text_encoder=dict(
        FULL_SIZE.text_encoder,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,  # the pipeline reads hidden_states[-2]
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,  # prompts are padded to 512 tokens
        vocab_size=None,
    ),
    vae=dict(_VAE_COMMON, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4),
    scheduler=_SCHEDULER,
    tokenizer_vocab_size=320,
)


def build_random_model(
    hub_cache: Path,
    repo_id: str = BENCH_REPO_ID,
    spec: ModelSpec = FULL_SIZE,
    *,
    device: str = "cpu",
    seed: int = 0,
    log=print,
) -> Path:
    """Write the pipeline into `hub_cache` (what HF_HUB_CACHE names) as a download would; returns the snapshot.

    The layout is what `snapshot_download` leaves: blobs named by their hash, a snapshot folder of
    relative symlinks, and `refs/main` holding the commit (no trailing newline).
    """
    hub_cache = Path(hub_cache)
    repo_dir = hub_cache / repo_folder_name(repo_id)
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    # Staged inside blobs/ so that installing a 8 GB shard is a rename, not a copy.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo_dir / "blobs"))
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="bench-write") as writer:
            blob_names = _write_pipeline(staging, spec, device, seed, writer)
            snapshot = install_snapshot(staging, repo_dir, {path: f.result() for path, f in blob_names.items()})
        log(f"built {repo_id} ({_tree_bytes(snapshot) / 1e9:.1f} GB) in {time.perf_counter() - started:.1f} s")
        return snapshot
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_random_classifier(
    hub_cache: Path, repo_id: str = BENCH_SAFETY_REPO_ID, *, tiny: bool = False, seed: int = 0, log=print
) -> Path:
    """Write the random-weight safety classifier into `hub_cache` as a download would; returns the snapshot."""
    repo_dir = Path(hub_cache) / repo_folder_name(repo_id)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as staging:
        save_vit_classifier(Path(staging), ("normal", "nsfw"), seed=seed, **(TINY_CLASSIFIER if tiny else {}))
        files = sorted(path for path in Path(staging).rglob("*") if path.is_file())
        names = {path.relative_to(staging).as_posix(): blob_name(path) for path in files}
        snapshot = install_snapshot(Path(staging), repo_dir, names)
    log(f"built {repo_id} ({_tree_bytes(snapshot) / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return snapshot


def _write_pipeline(staging: Path, spec: ModelSpec, device: str, seed: int, writer: ThreadPoolExecutor) -> dict:
    """Write every file into `staging`; returns {relative path: future of its blob name}."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from bench.measure import PROMPTS

    # Trained on the benchmark's prompts too: other text falls apart into more, shorter tokens.
    tokenizer = make_tokenizer(spec.tokenizer_vocab_size, extra_corpus=PROMPTS * 4)
    tokenizer.save_pretrained(staging / "tokenizer")
    FlowMatchEulerDiscreteScheduler(**spec.scheduler).save_config(staging / "scheduler")

    text_config = dict(spec.text_encoder)
    text_config["vocab_size"] = text_config["vocab_size"] or len(tokenizer)
    text_config.update(
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    qwen_config = Qwen3Config(**text_config)
    qwen_config.architectures = ["Qwen3Model"]

    # Built on the meta device: names and shapes only, no memory, no initialisation.
    with torch.device("meta"):
        modules = {
            "transformer": ZImageTransformer2DModel(**spec.transformer),
            "text_encoder": Qwen3Model(qwen_config),
            "vae": AutoencoderKL(**spec.vae),
        }
    modules["transformer"].save_config(staging / "transformer")
    modules["vae"].save_config(staging / "vae")
    qwen_config.dtype = torch.bfloat16
    qwen_config.save_pretrained(staging / "text_encoder")

    model_index = {"_class_name": "ZImagePipeline", "_diffusers_version": diffusers.__version__}
    for name in ("scheduler", "text_encoder", "tokenizer", "transformer", "vae"):
        if name == "scheduler":
            model_index[name] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        elif name == "tokenizer":
            model_index[name] = ["transformers", type(tokenizer).__name__]
        else:
            model_index[name] = list(spec.components[name][:2])
    (staging / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")

    blob_names: dict[str, Future] = {}
    generator = torch.Generator(device=device).manual_seed(seed)
    shard_counts = {"transformer": spec.transformer_shards, "text_encoder": spec.text_encoder_shards, "vae": 1}
    for name, module in modules.items():
        library, _, dtype_name = spec.components[name]
        dtype = getattr(torch, dtype_name)
        shapes = [(key, tuple(value.shape)) for key, value in module.state_dict().items()]
        weights_name = "diffusion_pytorch_model" if library == "diffusers" else "model"
        shards = _split(shapes, shard_counts[name], dtype.itemsize)
        weight_map = {}
        for index, keys in enumerate(shards, start=1):
            file_name = (
                f"{weights_name}.safetensors"
                if len(shards) == 1
                else f"{weights_name}-{index:05d}-of-{len(shards):05d}.safetensors"
            )
            tensors = {key: _random_tensor(key, shape, dtype, device, generator, spec.init_std) for key, shape in keys}
            # Copied to host memory here (the GPU is free for the next shard); written and hashed in a thread.
            host = {key: tensor.to("cpu") for key, tensor in tensors.items()}
            del tensors
            relative = f"{name}/{file_name}"
            blob_names[relative] = writer.submit(_save_and_hash, host, staging / relative)
            weight_map.update({key: file_name for key, _ in keys})
        if len(shards) > 1:
            total = sum(_numel(shape) * dtype.itemsize for _, shape in shapes)
            index_file = staging / name / f"{weights_name}.safetensors.index.json"
            index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    for future in list(blob_names.values()):
        future.result()  # every shard written, so that only finished files are listed below
    for path in sorted(staging.rglob("*")):
        relative = path.relative_to(staging).as_posix()
        if path.is_file() and relative not in blob_names:
            blob_names[relative] = writer.submit(blob_name, path)
    return blob_names


def _random_tensor(key: str, shape: tuple, dtype, device: str, generator, std: float):
    import torch

    tensor = torch.empty(shape, dtype=dtype, device=device)
    if len(shape) >= 2:
        return tensor.normal_(0.0, std, generator=generator)
    # Norm scales at one and biases at zero keep activations finite through 30 layers of random weights.
    return tensor.fill_(1.0 if "norm" in key and key.endswith("weight") else 0.0)


def _numel(shape: tuple) -> int:
    count = 1
    for side in shape:
        count *= side
    return count


def _split(shapes: list[tuple[str, tuple]], count: int, itemsize: int) -> list[list[tuple[str, tuple]]]:
    """`count` consecutive groups of about equal bytes, in state-dict order (as save_pretrained shards)."""
    sizes = [_numel(shape) * itemsize for _, shape in shapes]
    target = sum(sizes) / count
    shards: list[list[tuple[str, tuple]]] = [[] for _ in range(count)]
    filled = 0
    for (key, shape), size in zip(shapes, sizes, strict=True):
        # A tensor goes to the shard its middle byte falls in: no shard is more than half a tensor off.
        shards[min(count - 1, int((filled + size / 2) // target))].append((key, shape))
        filled += size
    return [shard for shard in shards if shard]


def _save_and_hash(tensors: dict, path: Path) -> str:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return blob_name(path)


def _tree_bytes(snapshot: Path) -> int:
    return sum(path.stat().st_size for path in snapshot.rglob("*") if path.is_file())


def snapshot_files(snapshot: Path) -> Iterable[Path]:
    """The snapshot's files, links resolved: what reading the model from disk reads."""
    return sorted(path.resolve() for path in snapshot.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hub_cache", type=Path, help="the folder HF_HUB_CACHE points at")
    parser.add_argument("--repo-id", default=BENCH_REPO_ID)
    parser.add_argument("--tiny", action="store_true", help="diffusers' test sizes instead of the full model")
    parser.add_argument("--device", default="cuda", help="where the random weights are made (default: cuda)")
    parser.add_argument("--classifier", action="store_true", help="build the safety classifier instead")
    args = parser.parse_args(argv)
    if args.classifier:
        print(build_random_classifier(args.hub_cache, tiny=args.tiny))
        return 0
    snapshot = build_random_model(args.hub_cache, args.repo_id, TINY if args.tiny else FULL_SIZE, device=args.device)
    print(snapshot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
