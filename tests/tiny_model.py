"""A tiny random-weight Z-Image pipeline, installed in a Hugging Face cache like a real download.

The bot's tests load the model with the real ``ZImagePipeline.from_pretrained(repo_id)`` and inspect
the real cache layout, so this module builds a pipeline with the published repository's structure
(same components, same file names, text encoder in bf16 and transformer in fp32, both sharded) but
sizes small enough that a build takes well under a second once diffusers is imported, loading about
0.2 s and a 256x256 image well under 0.1 s on a CPU. About 2 MB on disk.

Nothing here touches the network. Building imports torch, transformers and diffusers lazily, so the
cache helpers (``snapshot_dir``, ``blob_path_of``, ``mark_incomplete``, ``install_copy``) stay cheap
to import. Note that importing diffusers also imports huggingface_hub, which reads ``HF_HOME`` and
``HF_HUB_OFFLINE`` once: set those before the first build in a process if that process also loads.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from bench.hub_layout import blob_name, install_snapshot, make_tokenizer, repo_folder_name, save_vit_classifier

TINY_REPO_ID = "tiny-org/tiny-z-image"

# Tiny image safety classifiers (ViT, labels normal / nsfw). Their heads ignore the image: each gives
# every image the same nsfw probability, so a test decides what is flagged by choosing one.
TINY_SAFETY_NEVER = "tiny-org/tiny-nsfw-never"  # nsfw about 1e-13: nothing flagged (the suite's default)
TINY_SAFETY_ALWAYS = "tiny-org/tiny-nsfw-always"  # nsfw 1.0, label spelled NSFW and first
TINY_SAFETY_HALF = "tiny-org/tiny-nsfw-half"  # nsfw exactly 0.5: flagged at a threshold of 0.5, not above
TINY_NO_NSFW_LABEL = "tiny-org/tiny-no-nsfw-label"  # labels drawing / photo
TINY_SAFETY_NAN = "tiny-org/tiny-nsfw-nan"  # its head gives NaN: a classifier that gives no number
TINY_CLASSIFIERS: dict[str, tuple[tuple[str, ...], float]] = {
    # repo id: (labels, probability of the nsfw label, or of the first label where there is none)
    TINY_SAFETY_NEVER: (("normal", "nsfw"), 1e-13),
    TINY_SAFETY_ALWAYS: (("NSFW", "normal"), 1.0),
    TINY_SAFETY_HALF: (("normal", "nsfw"), 0.5),
    TINY_NO_NSFW_LABEL: (("drawing", "photo"), 0.5),
}

# Text encoder (Qwen3). Two layers at least: the pipeline reads hidden_states[-2].
TEXT_HIDDEN_SIZE = 32
TEXT_LAYERS = 2
TEXT_HEADS = 2
TEXT_KV_HEADS = 1
TEXT_HEAD_DIM = 16  # explicit: Qwen3 does not derive it from hidden_size / heads
TEXT_INTERMEDIATE_SIZE = 64
# The pipeline pads every prompt to max_sequence_length (512), so positions must reach that far.
TEXT_MAX_POSITIONS = 1024

# The tokenizer's BPE vocabulary: 256 bytes, 3 special tokens and what is left for merges.
TOKENIZER_VOCAB_SIZE = 320

# Shard limits that split the tiny weights into several files, like the published repository's
# 3 transformer and 3 text encoder shards; tests delete one to check that the cache report notices.
TEXT_ENCODER_SHARD_SIZE = 24_000  # bytes; about 64 kB of bf16 weights in all
# The transformer's timestep MLP alone is 1 MB, so 300 kB gives 3 shards, as published.
TRANSFORMER_SHARD_SIZE = 300_000  # bytes; about 1.5 MB of fp32 weights in all

# Files transformers and diffusers probe for and a real download records as missing (`.no_exist/`);
# offline, AutoTokenizer fails without the tokenizer/config.json marker.
NO_EXIST_FILES = (
    "tokenizer/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/added_tokens.json",
    "tokenizer/special_tokens_map.json",
    "text_encoder/model.safetensors",
    "vae/diffusion_pytorch_model.safetensors.index.json",
)


def snapshot_dir(hub_cache: Path, repo_id: str = TINY_REPO_ID) -> Path:
    """The snapshot folder that `refs/main` points at."""
    repo_dir = Path(hub_cache) / repo_folder_name(repo_id)
    commit = (repo_dir / "refs" / "main").read_text()
    return repo_dir / "snapshots" / commit


def blob_path_of(hub_cache: Path, repo_id: str, relative_file: str) -> Path:
    """The blob behind a snapshot file, e.g. ``"transformer/config.json"``, so a test can corrupt it."""
    link = snapshot_dir(hub_cache, repo_id) / relative_file
    return link.resolve(strict=True)


def mark_incomplete(hub_cache: Path, repo_id: str, relative_file: str) -> Path:
    """Make one file look like an interrupted download; returns the ``.incomplete`` blob.

    huggingface_hub writes into ``blobs/<hash>.incomplete`` and only renames it and links the snapshot
    file once the download finishes, so an interrupted one leaves a partial blob and no symlink.
    """
    link = snapshot_dir(hub_cache, repo_id) / relative_file
    blob = link.resolve(strict=True)
    incomplete = blob.with_name(blob.name + ".incomplete")
    data = blob.read_bytes()
    incomplete.write_bytes(data[: len(data) // 2])
    link.unlink()
    blob.unlink()
    return incomplete


def install_copy(source_hub_cache: Path, dest_hub_cache: Path) -> None:
    """Copy a built cache into another one, keeping the snapshot symlinks relative and intact.

    Lets a session-scoped fixture build once and give each test its own cache to damage.
    """
    shutil.copytree(source_hub_cache, dest_hub_cache, symlinks=True, dirs_exist_ok=True)


def build_tiny_model(hub_cache: Path, repo_id: str = TINY_REPO_ID, *, seed: int = 0) -> Path:
    """Build a tiny random-weight ZImagePipeline and install it into `hub_cache`.

    `hub_cache` is the folder HF_HUB_CACHE points at (HF_HOME/hub). The layout is what
    `snapshot_download` leaves: ``models--{org}--{name}/blobs/<hash>``, ``snapshots/<commit>/`` of
    relative symlinks into the blobs, ``refs/main`` holding the commit hash (no trailing newline),
    ``.no_exist/<commit>/`` markers for files the loaders probe for, and ``.locks/``.
    The same seed gives the same weights, the same blobs and so the same commit hash.
    Returns the snapshot folder.
    """
    with tempfile.TemporaryDirectory(prefix="tiny-z-image-") as staging:
        _save_pipeline(Path(staging), seed)
        return _install_snapshot(Path(staging), Path(hub_cache), repo_id)


def build_tiny_classifier(
    hub_cache: Path,
    repo_id: str,
    labels: tuple[str, ...] = ("normal", "nsfw"),
    nsfw_probability: float = 0.5,
    *,
    head_bias: list[float] | None = None,
) -> Path:
    """Build a tiny ViTForImageClassification whose `nsfw` label (or, with none, its first label) gets
    `nsfw_probability` for every image, and install it into `hub_cache` like a download. `head_bias`
    gives the head's logits directly instead (NaN makes a classifier that gives no number). Returns the
    snapshot."""
    if head_bias is None:
        target = next((index for index, label in enumerate(labels) if label.lower() == "nsfw"), 0)
        # Softmax over the bias logits: the target gets logit(p) against 0 for each other label.
        if nsfw_probability >= 1.0:
            logit = 60.0  # exp(-60) is far below float32's resolution near 1: the probability is exactly 1.0
        else:
            logit = math.log(nsfw_probability * (len(labels) - 1) / (1.0 - nsfw_probability))
        head_bias = [logit if index == target else 0.0 for index in range(len(labels))]
    with tempfile.TemporaryDirectory(prefix="tiny-classifier-") as staging:
        save_vit_classifier(
            Path(staging),
            labels,
            image_size=32,
            patch_size=8,
            hidden_size=16,
            layers=1,
            heads=2,
            intermediate_size=32,
            head_bias=head_bias,
        )
        return _install_snapshot(Path(staging), Path(hub_cache), repo_id, ())


def build_tiny_classifiers(hub_cache: Path) -> None:
    """Every classifier of TINY_CLASSIFIERS, and TINY_SAFETY_NAN."""
    for repo_id, (labels, probability) in TINY_CLASSIFIERS.items():
        build_tiny_classifier(hub_cache, repo_id, labels, probability)
    build_tiny_classifier(hub_cache, TINY_SAFETY_NAN, head_bias=[math.nan, 0.0])


def _save_pipeline(folder: Path, seed: int) -> None:
    """Write the pipeline's files in the published repository's layout into `folder`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = make_tokenizer(TOKENIZER_VOCAB_SIZE)

    # fork_rng keeps the caller's global RNG untouched while the seed fixes every initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_HIDDEN_SIZE,
                intermediate_size=TEXT_INTERMEDIATE_SIZE,
                num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=TEXT_HEADS,
                num_key_value_heads=TEXT_KV_HEADS,
                head_dim=TEXT_HEAD_DIM,
                max_position_embeddings=TEXT_MAX_POSITIONS,
                rms_norm_eps=1e-6,
                rope_theta=1_000_000.0,
                tie_word_embeddings=True,
                bos_token_id=None,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        ).eval()
        # diffusers' own test sizes; axes_dims must add up to dim / n_heads.
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            norm_eps=1e-5,
            qk_norm=True,
            cap_feat_dim=TEXT_HIDDEN_SIZE,
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        ).eval()
        # Four levels, like the FLUX VAE: a scale factor of 8, so sizes stay multiples of 16.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            force_upcast=True,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=True,
        ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)

    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    # Components are saved one by one rather than through pipe.save_pretrained, whose single
    # max_shard_size would also split the VAE (a single file in the published repository).
    pipe.save_config(folder)
    scheduler.save_pretrained(folder / "scheduler")
    tokenizer.save_pretrained(folder / "tokenizer")
    text_encoder.to(torch.bfloat16).save_pretrained(folder / "text_encoder", max_shard_size=TEXT_ENCODER_SHARD_SIZE)
    transformer.save_pretrained(folder / "transformer", max_shard_size=TRANSFORMER_SHARD_SIZE)
    vae.save_pretrained(folder / "vae")


def _install_snapshot(staging: Path, hub_cache: Path, repo_id: str, no_exist_files=NO_EXIST_FILES) -> Path:
    """Move the files of `staging` into the cache as blobs and link a snapshot to them."""
    files = sorted(path for path in staging.rglob("*") if path.is_file())
    blob_names = {path.relative_to(staging).as_posix(): blob_name(path) for path in files}
    return install_snapshot(staging, hub_cache / repo_folder_name(repo_id), blob_names, no_exist_files)
