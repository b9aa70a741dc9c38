"""Self-check of the tiny Z-Image model the other tests rely on.

Cache-layout checks run in this process: they pass explicit paths and never depend on HF_HOME.
Loading and generating run in a fresh interpreter, because huggingface_hub reads HF_HOME,
HF_HUB_OFFLINE and HF_ENDPOINT once, when it is first imported, and this process has imported it
already (building the model imports diffusers).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from tiny_model import (
    NO_EXIST_FILES,
    TINY_REPO_ID,
    blob_path_of,
    build_tiny_model,
    install_copy,
    mark_incomplete,
    repo_folder_name,
    snapshot_dir,
)

REPO_FOLDER = repo_folder_name(TINY_REPO_ID)
SHARDED = {
    "text_encoder": ("model.safetensors.index.json", "BF16"),
    "transformer": ("diffusion_pytorch_model.safetensors.index.json", "F32"),
}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds the tiny model, built once for this module."""
    home = tmp_path_factory.mktemp("hf_home")
    build_tiny_model(home / "hub")
    return home


@pytest.fixture()
def hub_copy(hf_home: Path, tmp_path: Path) -> Path:
    """A private copy of the built cache that a test may damage."""
    hub = tmp_path / "hub"
    install_copy(hf_home / "hub", hub)
    return hub


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes in a safetensors file, read from its JSON header (8-byte little-endian length first)."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def test_snapshot_is_laid_out_like_a_real_download(hf_home: Path) -> None:
    hub = hf_home / "hub"
    repo_dir = hub / REPO_FOLDER
    commit = (repo_dir / "refs" / "main").read_bytes().decode()
    assert len(commit) == 40 and int(commit, 16) >= 0  # 40 hex digits, no newline
    snapshot = snapshot_dir(hub)
    assert snapshot == repo_dir / "snapshots" / commit

    files = sorted(p for p in snapshot.rglob("*") if not p.is_dir())
    names = {p.relative_to(snapshot).as_posix() for p in files}
    assert {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "transformer/config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    } <= names
    for link in files:
        assert link.is_symlink(), link
        target = os.readlink(link)
        assert not os.path.isabs(target) and target.startswith("../"), target
        blob = link.resolve(strict=True)
        assert blob.parent == repo_dir / "blobs"
        data = blob.read_bytes()
        if link.name.endswith(".safetensors"):
            assert blob.name == hashlib.sha256(data).hexdigest()
        else:
            assert blob.name == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert (hub / ".locks" / REPO_FOLDER / f"{blob.name}.lock").is_file()

    for relative_file in NO_EXIST_FILES:
        assert (repo_dir / ".no_exist" / commit / relative_file).is_file()
        assert relative_file not in names


@pytest.mark.parametrize("component", sorted(SHARDED))
def test_big_components_are_sharded_in_the_published_dtypes(hf_home: Path, component: str) -> None:
    index_name, dtype = SHARDED[component]
    folder = snapshot_dir(hf_home / "hub") / component
    index = json.loads((folder / index_name).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert shards == sorted(p.name for p in folder.glob("*.safetensors"))
    for shard in shards:
        assert safetensors_dtypes(folder / shard) == {dtype}


def test_scan_cache_dir_sees_the_revision(hf_home: Path) -> None:
    report = scan_cache_dir(hf_home / "hub")
    assert report.warnings == []
    (repo,) = report.repos
    assert (repo.repo_id, repo.repo_type) == (TINY_REPO_ID, "model")
    (revision,) = repo.revisions
    assert revision.commit_hash == snapshot_dir(hf_home / "hub").name
    assert revision.refs == frozenset({"main"})
    assert revision.nb_files == sum(1 for p in revision.snapshot_path.rglob("*") if p.is_symlink())


def test_same_seed_same_commit_other_seed_other_commit(hf_home: Path, tmp_path: Path) -> None:
    built = snapshot_dir(hf_home / "hub").name
    assert build_tiny_model(tmp_path / "again" / "hub").name == built
    assert build_tiny_model(tmp_path / "other" / "hub", seed=1).name != built


def test_install_copy_is_independent_of_its_source(hf_home: Path, hub_copy: Path) -> None:
    relative_file = "transformer/config.json"
    link = snapshot_dir(hub_copy) / relative_file
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert scan_cache_dir(hub_copy).repos

    blob_path_of(hub_copy, TINY_REPO_ID, relative_file).write_text("{ corrupted")
    assert json.loads(blob_path_of(hf_home / "hub", TINY_REPO_ID, relative_file).read_text())


def test_mark_incomplete_leaves_a_partial_blob_and_no_link(hub_copy: Path) -> None:
    relative_file = "transformer/diffusion_pytorch_model-00002-of-00003.safetensors"
    blob = blob_path_of(hub_copy, TINY_REPO_ID, relative_file)
    size = blob.stat().st_size

    incomplete = mark_incomplete(hub_copy, TINY_REPO_ID, relative_file)

    assert incomplete == blob.with_name(blob.name + ".incomplete")
    assert 0 < incomplete.stat().st_size < size
    assert not blob.exists()
    link = snapshot_dir(hub_copy) / relative_file
    assert not link.exists() and not link.is_symlink()
    (repo,) = scan_cache_dir(hub_copy).repos
    (revision,) = repo.revisions
    assert relative_file.rsplit("/", 1)[1] not in {f.file_name for f in revision.files}


# Loads the pipeline the way the bot will and reports, as one JSON line, what the test checks.
# A socket audit hook records any attempt to reach the network.
LOAD_AND_GENERATE = r"""
import json, sys, time

connections = []
def audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        connections.append(f"{event} {args[1] if event == 'socket.connect' else args[0]}")
sys.addaudithook(audit)

import numpy as np
import torch
from diffusers import ZImagePipeline
from transformers import AutoTokenizer

repo_id, full = sys.argv[1], sys.argv[2] == "full"
start = time.perf_counter()
pipe = ZImagePipeline.from_pretrained(repo_id, local_files_only=True, dtype=torch.float32)
load_s = time.perf_counter() - start
pipe.set_progress_bar_config(disable=True)

def generate(seed, size):
    image = pipe(
        "a cat", height=size, width=size, num_inference_steps=2, guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed), output_type="pil",
    ).images[0]
    return image.size, np.asarray(image)

result = {"load_s": load_s, "dtypes": {n: str(m.dtype) for n, m in pipe.components.items() if hasattr(m, "dtype")}}
size, first = generate(1, 64)
result["size_64"] = list(size)
if full:
    _, again = generate(1, 64)
    _, other = generate(2, 64)
    result["same_seed_identical"] = bool(np.array_equal(first, again))
    result["other_seed_differs"] = not np.array_equal(first, other)
    result["pixel_std"] = float(first.std())
    result["size_16"] = list(generate(1, 16)[0])
    result["size_256"] = list(generate(1, 256)[0])
    try:
        generate(1, 24)
        result["size_24"] = "accepted"
    except ValueError as error:
        result["size_24"] = str(error)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, subfolder="tokenizer")
    result["tokenizer"] = type(tokenizer).__name__
result["connections"] = connections
print(json.dumps(result))
"""


def run_loader(hf_home: Path, mode: str, **env_overrides: str) -> dict:
    """Run LOAD_AND_GENERATE in a fresh interpreter with HF_HOME set and return its result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **env_overrides)
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, TINY_REPO_ID, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_pipeline_loads_offline_and_generates(hf_home: Path) -> None:
    result = run_loader(hf_home, "full", HF_HUB_OFFLINE="1")

    assert result["connections"] == []
    assert result["dtypes"] == {"vae": "torch.float32", "text_encoder": "torch.float32", "transformer": "torch.float32"}
    assert result["size_64"] == [64, 64]
    assert result["size_16"] == [16, 16]
    assert result["size_256"] == [256, 256]
    assert "divisible by 16" in result["size_24"]
    assert result["same_seed_identical"] is True
    assert result["other_seed_differs"] is True
    assert result["pixel_std"] > 1.0  # an image, not a flat colour
    # Needs the .no_exist/<commit>/tokenizer/config.json marker.
    assert result["tokenizer"] == "Qwen2Tokenizer"


def test_local_files_only_never_touches_a_dead_endpoint(hf_home: Path) -> None:
    # Not offline: only local_files_only keeps huggingface_hub off the (unreachable) endpoint.
    result = run_loader(hf_home, "quick", HF_ENDPOINT="http://127.0.0.1:9")

    assert result["connections"] == []
    assert result["load_s"] < 10.0
    assert result["size_64"] == [64, 64]
