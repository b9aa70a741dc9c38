"""The opt-in local bf16 copy of the transformer (BF16_COPY=1).

Z-Image-Turbo's transformer is published in fp32 and the bot runs it in bf16, so every start reads
twice the bytes it keeps. The copy holds the same weights already cast to bf16 (the cast
`from_pretrained(dtype=bfloat16)` does at every start, done once), in DATA_DIR:

    DATA_DIR/bf16/<org>--<name>/<commit>/transformer/   config.json, the index, the bf16 shards
    DATA_DIR/bf16/<org>--<name>/<commit>/manifest.json  source repo and commit, sha256 and size of each file

It is made shard by shard from the cached files (one shard in memory at a time), in a temporary
folder renamed into place once complete, so a crash or a full disk never leaves a half copy that
looks whole. It is used only while the cache's revision resolves to the commit it was made from. At
each start the manifest and the files' sizes are checked, and a file whose modification time
changed is hashed again; anything that does not match is deleted and made again with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
TRANSFORMER = "transformer"
WEIGHTS_SUFFIX = ".safetensors"
# safetensors dtype names of the floating-point tensors cast to bf16; anything else is copied as it is.
CAST_DTYPES = frozenset({"F32", "F64", "F16"})
# Room beyond the copy's own size that must stay free on the disk: the job store and outputs live there too.
DISK_MARGIN_BYTES = 1 << 30
_HASH_CHUNK = 8 << 20

# Several workers of one process load side by side; one of them makes the copy, the others then find it.
_LOCK = threading.Lock()


class CopyProblem(ValueError):
    """Why an existing copy may not be used."""


@dataclass(frozen=True)
class Bf16Copy:
    """A usable copy: load the transformer from `transformer_dir`. `made`: made by this start."""

    transformer_dir: Path
    made: bool


def copy_root(data_dir: Path, model_id: str, commit: str) -> Path:
    return data_dir / "bf16" / model_id.replace("/", "--") / commit


def prepare(data_dir: Path, model_id: str, commit: str, snapshot_dir: Path) -> Bf16Copy | None:
    """The copy for `commit`, made first if missing or damaged; None (after saying why) when the normal
    path must be used: the source is not fp32 safetensors, or the copy cannot be written."""
    source = snapshot_dir / TRANSFORMER
    with _LOCK:
        shards = sorted(source.glob(f"*{WEIGHTS_SUFFIX}"))
        if not shards:
            log.warning("BF16_COPY: %s has no safetensors weights; loading the model as usual", source)
            return None
        if not any(_float_dtypes(shard) & CAST_DTYPES for shard in shards):
            log.info("BF16_COPY: the transformer of %s is stored in bf16 already; no copy needed", model_id)
            return None
        root = copy_root(data_dir, model_id, commit)
        if root.exists():
            try:
                check(root, commit)
            except CopyProblem as problem:
                log.warning("BF16_COPY: the copy in %s is unusable (%s); making it again", root, problem)
                shutil.rmtree(root, ignore_errors=True)
            else:
                log.info("BF16_COPY: loading the transformer from the bf16 copy in %s", root)
                return Bf16Copy(root / TRANSFORMER, made=False)
        try:
            make(source, root, model_id, commit)
        except OSError as error:
            log.warning("BF16_COPY: could not make the bf16 copy in %s (%s); loading the model as usual", root, error)
            return None
        _remove_other_commits(root)
        return Bf16Copy(root / TRANSFORMER, made=True)


def check(root: Path, commit: str, *, full: bool = False) -> None:
    """Raise CopyProblem unless `root` is a complete copy of `commit`. Files whose size and modification
    time are as recorded are trusted (hashing gigabytes at every start would cost what the copy saves);
    the others, or all with `full`, are hashed."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise CopyProblem(f"no readable manifest ({type(error).__name__})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CopyProblem("the manifest is of another format")
    source = manifest.get("source")
    if not isinstance(source, dict) or source.get("commit") != commit:
        made_from = source.get("commit") if isinstance(source, dict) else None
        raise CopyProblem(f"made from commit {made_from}, the cache has {commit}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not any(name.endswith(WEIGHTS_SUFFIX) for name in files):
        raise CopyProblem("the manifest lists no weights")
    for name, recorded in files.items():
        path = root / name
        try:
            status = path.stat()
        except OSError as error:
            raise CopyProblem(f"{name} is missing") from error
        if status.st_size != recorded.get("size"):
            raise CopyProblem(f"{name} has {status.st_size} bytes, not {recorded.get('size')} (truncated?)")
        changed = full or status.st_mtime_ns != recorded.get("mtime_ns")
        if changed and sha256_of(path) != recorded.get("sha256"):
            raise CopyProblem(f"{name} does not match its sha256")


def make(source: Path, root: Path, model_id: str, commit: str) -> None:
    """Write the copy into a temporary folder beside `root`, then rename it into place. OSError (a full
    disk included) leaves nothing behind."""
    import torch
    from huggingface_hub.utils import tqdm
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    shards = sorted(source.glob(f"*{WEIGHTS_SUFFIX}"))
    source_bytes = sum(shard.stat().st_size for shard in shards)
    needed = _copy_size(shards) + DISK_MARGIN_BYTES
    root.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root.parent).free
    if free < needed:
        raise OSError(f"{free / 1e9:.1f} GB free on the disk, the copy needs {needed / 1e9:.1f} GB")
    staging = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    target = staging / TRANSFORMER
    log.info("BF16_COPY: making a bf16 copy of the transformer of %s@%s in %s (once)", model_id, commit[:12], root)
    try:
        target.mkdir(parents=True)
        files: dict[str, dict] = {}
        with tqdm(total=source_bytes, unit="B", unit_scale=True, desc="bf16 copy of the transformer") as bar:
            for shard in shards:
                tensors = {}
                # One tensor read and cast at a time: memory holds one shard in bf16, never two copies.
                with safe_open(str(shard), framework="pt") as reader:
                    metadata = reader.metadata()
                    for name in reader.keys():  # noqa: SIM118 (safe_open is not iterable)
                        tensor = reader.get_tensor(name)
                        bar.update(tensor.numel() * tensor.element_size())
                        if tensor.is_floating_point() and tensor.dtype != torch.bfloat16:
                            tensor = tensor.to(torch.bfloat16)
                        tensors[name] = tensor
                try:
                    save_file(tensors, str(target / shard.name), metadata=metadata)
                except SafetensorError as error:  # its I/O errors (a full disk) are not OSErrors
                    raise OSError(str(error)) from error
                del tensors
            bar.update(max(0, source_bytes - bar.n))
        for other in source.iterdir():
            if other.is_file() and not other.name.endswith(WEIGHTS_SUFFIX):
                shutil.copyfile(other, target / other.name)
        _rewrite_index_size(target)
        for path in sorted(target.iterdir()):
            status = path.stat()
            files[f"{TRANSFORMER}/{path.name}"] = {
                "size": status.st_size,
                "mtime_ns": status.st_mtime_ns,
                "sha256": sha256_of(path),
            }
        manifest = {
            "format": FORMAT,
            "source": {"model_id": model_id, "commit": commit},
            "dtype": "bfloat16",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("BF16_COPY: copy complete (%.1f MB)", sum(entry["size"] for entry in files.values()) / 1e6)


def discard(transformer_dir: Path) -> None:
    """Delete a copy that failed to load, so the next start makes it again."""
    shutil.rmtree(transformer_dir.parent, ignore_errors=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_safetensors_header(path: Path) -> dict:
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        return json.loads(file.read(length))


def _float_dtypes(shard: Path) -> set[str]:
    try:
        header = _read_safetensors_header(shard)
    except (OSError, ValueError):
        return set()
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def _copy_size(shards: list[Path]) -> int:
    """Bytes the bf16 shards will take: fp32/fp64/fp16 tensors at 2 bytes an element, others as they are."""
    widths = {"F64": 8, "F32": 4, "F16": 2}
    total = 0
    for shard in shards:
        header = _read_safetensors_header(shard)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            total += (end - start) // widths[entry["dtype"]] * 2 if entry["dtype"] in widths else end - start
    return total


def _rewrite_index_size(target: Path) -> None:
    """A sharded model's index records the total size of its weights; keep it true for the copy."""
    for index in target.glob("*.index.json"):
        data = json.loads(index.read_text())
        if isinstance(data.get("metadata"), dict):
            data["metadata"]["total_size"] = sum(
                _tensor_bytes(shard) for shard in sorted(target.glob(f"*{WEIGHTS_SUFFIX}"))
            )
        index.write_text(json.dumps(data, indent=2, sort_keys=True))


def _tensor_bytes(shard: Path) -> int:
    header = _read_safetensors_header(shard)
    offsets = [entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"]
    return sum(end - start for start, end in offsets)


def _remove_other_commits(root: Path) -> None:
    """Copies of the model's older commits are never used again: free their disk."""
    for other in root.parent.iterdir():
        if other != root and other.is_dir() and not other.name.startswith("."):
            log.info("BF16_COPY: deleting the copy of an older revision, %s", other)
            shutil.rmtree(other, ignore_errors=True)
