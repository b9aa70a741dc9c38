"""Installing a locally built model into a Hugging Face cache exactly as a download lays it out,
and the small Qwen-style tokenizer such a model needs.

Shared by the benchmark's full-size random-weight model and the test suite's tiny one: both must go
through the real `from_pretrained(repo_id)` and cache-scanning code paths on machines that cannot
reach the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

# Suffixes the Hub stores with Git LFS (blob named by sha256); other files are named by their git-sha1.
LFS_SUFFIXES = (".safetensors",)

QWEN3_STYLE_CHAT_TEMPLATE = (
    # A trimmed Qwen3 template: the same turn markers and the same `enable_thinking` switch, which
    # only matters when it is false (an empty think block closes the reasoning before the answer).
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Text the BPE is trained on: enough repeated words to fill the vocabulary with merges, fixed so
# that the vocabulary (and so the text encoder's embedding table) is the same on every build.
TOKENIZER_CORPUS = (
    "a cat sitting on a windowsill in the morning light",
    "a photo of a dog running across a green field",
    "a watercolor painting of a lighthouse by the sea at sunset",
    "portrait of an astronaut riding a horse, highly detailed",
    "a red apple on a wooden table, studio lighting, 4k",
    "the quick brown fox jumps over the lazy dog",
    "user assistant system think image prompt photograph cinematic",
    "一只猫坐在窗台上",
) * 4


def repo_folder_name(repo_id: str) -> str:
    """The cache folder name of a model repository, as huggingface_hub spells it."""
    return "models--" + repo_id.replace("/", "--")


def blob_name(path: Path) -> str:
    """The name the Hub gives a file's blob: sha256 for LFS files, the git object id otherwise."""
    if path.name.endswith(LFS_SUFFIXES):
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as file:
        while chunk := file.read(64 << 20):
            digest.update(chunk)  # hashlib releases the GIL on large buffers: shards hash in parallel
    return digest.hexdigest()


def install_snapshot(
    staging: Path, repo_dir: Path, blob_names: Mapping[str, str], no_exist_files: Iterable[str] = ()
) -> Path:
    """Move the files of `staging` (relative path -> blob name) into `repo_dir` as blobs and link a
    snapshot to them: `blobs/<hash>`, `snapshots/<commit>/` of relative symlinks, `refs/main`, the
    `.locks/` a download leaves, and `.no_exist/<commit>/` markers for files loaders probe for.
    The commit id depends only on the contents, so equal builds share it."""
    listing = "".join(f"{name} {blob}\n" for name, blob in sorted(blob_names.items()))
    commit = hashlib.sha1(listing.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    locks = repo_dir.parent / ".locks" / repo_dir.name
    for folder in (snapshot, locks, repo_dir / "refs", repo_dir / "blobs"):
        folder.mkdir(parents=True, exist_ok=True)
    for relative, name in blob_names.items():
        blob = repo_dir / "blobs" / name
        source = staging / relative
        if blob.exists():
            source.unlink()
        else:
            source.rename(blob)
        (locks / f"{name}.lock").touch()  # filelock leaves its (empty) lock file behind
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    for relative in no_exist_files:
        marker = repo_dir / ".no_exist" / commit / relative
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    # No trailing newline, as huggingface_hub writes it: scan_cache_dir matches the text against the
    # snapshot folder names and reports the repository as corrupted when none matches.
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def make_tokenizer(vocab_size: int = 320, extra_corpus: Iterable[str] = ()):
    """A byte-level BPE trained here, wrapped as the Qwen2Tokenizer the published repository uses.
    Every byte is in the base alphabet, so any text (emoji, CJK, ...) encodes without unknowns."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    special_tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # Train with the same normaliser and pre-tokeniser Qwen2Tokenizer rebuilds around the
    # vocabulary, so the learned merges are the ones it will apply.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*TOKENIZER_CORPUS, *extra_corpus], trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(merge) for merge in model["merges"]],  # the tokenizers model wants tuples, not lists
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])  # Qwen3 keeps its reasoning markers as added tokens
    tokenizer.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    return tokenizer


def save_vit_classifier(
    folder: Path,
    labels: Iterable[str],
    *,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate_size: int = 3072,
    head_bias: Iterable[float] | None = None,
    seed: int = 0,
) -> None:
    """Write a random-weight `ViTForImageClassification` (config.json, model.safetensors in fp32) and its
    `preprocessor_config.json` into `folder`, as an image classifier's repository holds them. The
    defaults are ViT-base patch16 224, the architecture of Falconsai/nsfw_image_detection.

    `head_bias`: set the classification head's weights to zero and its bias to these logits, so that
    every image gets the same probabilities (tests decide what is flagged); None keeps random weights."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = list(labels)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    config.architectures = ["ViTForImageClassification"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config).eval()
    if head_bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(list(head_bias)))
    model.save_pretrained(folder)
    # Falconsai's preprocessing: resize to the model's input, scale to 0..1, normalise with mean and std 0.5.
    ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
