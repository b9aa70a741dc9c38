"""Compiled code kept in DATA_DIR between starts: torch's mega-cache in one checked file.

inductor's own on-disk caches (pipeline_service._use_persistent_compile_cache) spare a restart the
kernel compilation, but each start still looks every graph up again and re-learns which dimensions
are dynamic. After a successful warm-up, `torch.compiler.save_cache_artifacts()` gathers everything
compiling produced in this process (inductor graphs and kernels, AOT autograd entries, the dynamic
shape profile, autotuning results) into one blob; the next start hands it back with
`load_cache_artifacts` before compiling, so the warm-up finds all of it at once.

The blob is only valid for the exact software, GPU, model and compile settings that made it, so the
file carries a header with that key and a checksum of the blob:

    MAGIC | 8-byte big-endian header length | header (JSON: format, key, size, sha256) | blob

A file whose key differs is never loaded (the start compiles again and says why); one that is
truncated, damaged or not ours is deleted with a warning; a write that fails (a full disk) is a
warning, never a failed start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from bot.model.errors import one_line

log = logging.getLogger(__name__)

MAGIC = b"ZIMAGE-BOT COMPILE ARTIFACTS\n"
FORMAT = 1
PREFIX = "artifacts-"
SUFFIX = ".bin"
# Files of other keys (another GPU model in the same DATA_DIR, older torch versions) kept besides the
# current one; older ones are deleted when a new file is written.
KEEP_FILES = 4
# A header is a few hundred bytes; anything claiming more is not ours.
MAX_HEADER_BYTES = 1 << 20

# Several workers of one process save the same process-wide artifacts; one writer at a time.
_WRITE_LOCK = threading.Lock()


class ArtifactFileError(ValueError):
    """The file is not a complete compile-artifact file of this format."""


@dataclass(frozen=True)
class ArtifactLoad:
    """What a start found in DATA_DIR: `loaded` says whether compiled code was handed to torch."""

    loaded: bool
    path: Path
    size_bytes: int = 0
    seconds: float = 0.0
    reason: str = ""  # why nothing was loaded
    sha256: str = ""

    def describe(self) -> str:
        if self.loaded:
            return f"compiled code loaded from {self.path} ({self.size_bytes / 1e6:.1f} MB in {self.seconds:.2f} s)"
        return f"no compiled code loaded ({self.reason}); compiling"


def artifact_key(
    *,
    model_id: str,
    commit: str | None,
    device: torch.device,
    dtype: torch.dtype,
    compile_options: Mapping,
    attention_backend: str | None,
    quantize: str,
    styles: tuple[str, ...],
    warmup_sizes: tuple[str, ...],
    enhancer: bool,
) -> dict[str, str]:
    """Everything that changes the compiled graphs or the code generated for them."""
    import diffusers
    import transformers

    key = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": _device_description(device),
        "model": model_id,
        "commit": commit or "unknown",
        "dtype": str(dtype).removeprefix("torch."),
        "compile_options": json.dumps(dict(compile_options), sort_keys=True, default=str),
        "attention_backend": attention_backend or "default",
        "quantize": quantize,
        "styles": ",".join(styles),
        "warmup_sizes": ",".join(warmup_sizes),
        "enhancer": "on" if enhancer else "off",
        # torch's experimental switch that also saves dynamo's traced bytecode: other artifacts.
        "caching_precompile": os.environ.get("TORCH_CACHING_PRECOMPILE", "0"),
    }
    if device.type == "cuda":
        key["cuda"] = str(torch.version.cuda)
        try:
            import triton

            key["triton"] = triton.__version__
        except ImportError:
            key["triton"] = "none"
    return key


def key_digest(key: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]


class CompileArtifacts:
    """The artifact file of one key in `directory` (DATA_DIR/compile-cache)."""

    def __init__(self, directory: Path, key: Mapping[str, str]) -> None:
        self.directory = directory
        self.key = dict(key)
        self.path = directory / f"{PREFIX}{key_digest(self.key)}{SUFFIX}"
        self.loaded: ArtifactLoad | None = None

    @property
    def job_id(self) -> str:
        """A name for torch's profile of dynamic dimensions (torch.compiler.config.job_id): the profile is
        kept only under a job id, and one per key keeps a different model's profile from applying."""
        return f"zimage-bot-{key_digest(self.key)}"

    def load(self) -> ArtifactLoad:
        """Hand a matching file's compiled code to torch (before compiling); never raises."""
        self.loaded = self._load()
        log.info("%s", self.loaded.describe())
        return self.loaded

    def _load(self) -> ArtifactLoad:
        if not self.path.is_file():
            return ArtifactLoad(False, self.path, reason=self._why_missing())
        started = time.perf_counter()
        try:
            data = self.path.read_bytes()
            header, blob = parse(data)
            if header["key"] != self.key:
                # Same digest, other key: not ours (or a collision); never hand it to torch.
                raise ArtifactFileError("its key does not match its name")
            if torch.compiler.load_cache_artifacts(blob) is None:
                raise ArtifactFileError("torch could not read the compiled code in it")
        except Exception as error:  # a damaged file (whatever torch makes of it) must never stop a start
            log.warning(
                "the compiled code in %s is unusable (%s); deleting it and compiling again", self.path, one_line(error)
            )
            log.debug("the unusable compile artifacts", exc_info=True)
            _remove(self.path)
            return ArtifactLoad(False, self.path, reason=f"the saved file was unusable: {one_line(error)}")
        seconds = time.perf_counter() - started
        return ArtifactLoad(True, self.path, len(blob), seconds, sha256=header["sha256"])

    def _why_missing(self) -> str:
        """One line on why no file matches: the differences to the newest file of another key, if any."""
        others = sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=_mtime, reverse=True)
        for other in others:
            try:
                header = read_header(other)
            except (OSError, ArtifactFileError):
                continue
            changed = [
                f"{name} {header['key'].get(name, '-')} -> {value}"
                for name, value in self.key.items()
                if header["key"].get(name) != value
            ]
            return "saved compiled code was made for other settings: " + "; ".join(changed)
        return "none saved yet"

    def discard(self) -> None:
        """Delete the file after compiling failed with its code loaded: it may be the cause, and the next
        start should not trip over it again."""
        if self.loaded is not None and self.loaded.loaded:
            log.warning("deleting the compiled code loaded from %s: compiling failed with it", self.path)
            _remove(self.path)

    def save(self) -> int | None:
        """Write what compiling produced in this process (after a successful warm-up); returns the bytes
        written, or None when nothing was (nothing new, nothing compiled, or the write failed)."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            log.debug("no compile artifacts to save")
            return None
        blob = saved[0]
        digest = hashlib.sha256(blob).hexdigest()
        if self.loaded is not None and self.loaded.loaded and self.loaded.sha256 == digest and self.path.is_file():
            return None  # the warm-up compiled nothing the file does not already hold
        data = build(self.key, blob, digest)
        with _WRITE_LOCK:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                _write_atomically(self.path, data)
            except OSError as error:
                log.warning(
                    "could not save the compiled code to %s (%s); the next start compiles again",
                    self.path,
                    one_line(error),
                )
                return None
            self._prune()
        log.info("compiled code saved to %s (%.1f MB) for the next start", self.path, len(blob) / 1e6)
        return len(blob)

    def _prune(self) -> None:
        files = sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=_mtime, reverse=True)
        for old in [path for path in files if path != self.path][KEEP_FILES - 1 :]:
            _remove(old)


def build(key: Mapping[str, str], blob: bytes, digest: str | None = None) -> bytes:
    header = {
        "format": FORMAT,
        "key": dict(key),
        "size": len(blob),
        "sha256": digest or hashlib.sha256(blob).hexdigest(),
    }
    encoded = json.dumps(header, sort_keys=True).encode()
    return MAGIC + len(encoded).to_bytes(8, "big") + encoded + blob


def parse(data: bytes) -> tuple[dict, bytes]:
    """The header and the blob of a file's bytes; ArtifactFileError for anything but an intact file."""
    header, start = _parse_header(data)
    blob = data[start:]
    if len(blob) != header["size"]:
        raise ArtifactFileError(f"truncated: {len(blob)} of {header['size']} bytes")
    if hashlib.sha256(blob).hexdigest() != header["sha256"]:
        raise ArtifactFileError("checksum mismatch")
    return header, blob


def read_header(path: Path) -> dict:
    """Only the header: cheap, for saying why another file does not match."""
    with path.open("rb") as file:
        head = file.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8:
            raise ArtifactFileError("too short")
        length = int.from_bytes(head[len(MAGIC) :], "big")
        if length > MAX_HEADER_BYTES:
            raise ArtifactFileError("not a compile-artifact file")
        header, _ = _parse_header(head + file.read(length))
    return header


def _parse_header(data: bytes) -> tuple[dict, int]:
    if not data.startswith(MAGIC):
        raise ArtifactFileError("not a compile-artifact file")
    offset = len(MAGIC) + 8
    if len(data) < offset:
        raise ArtifactFileError("truncated header")
    length = int.from_bytes(data[len(MAGIC) : offset], "big")
    if length > MAX_HEADER_BYTES or len(data) < offset + length:
        raise ArtifactFileError("truncated header")
    try:
        header = json.loads(data[offset : offset + length])
    except ValueError as error:
        raise ArtifactFileError("damaged header") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactFileError(f"format {header.get('format') if isinstance(header, dict) else '?'}, not {FORMAT}")
    if not isinstance(header.get("key"), dict) or not isinstance(header.get("size"), int):
        raise ArtifactFileError("damaged header")
    if not isinstance(header.get("sha256"), str):
        raise ArtifactFileError("damaged header")
    return header, offset + length


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part (a crash or a full disk mid-write)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(Path(temporary))
        raise


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    if device.type == "cpu":
        return f"cpu ({platform.machine()})"
    return device.type


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.debug("could not delete %s", path, exc_info=True)
