"""What the Hugging Face cache holds of the model, and whether it is complete enough to load offline.

Import this module only after `.env` has been applied: huggingface_hub reads HF_HOME, HF_HUB_CACHE
and HF_HUB_OFFLINE when it is first imported.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound

_COMMIT = re.compile(r"[0-9a-f]{40}")

# What the cache must hold of a model, by kind: a diffusers pipeline (what its model_index.json and
# weight indexes name), or an image classifier loaded with transformers' auto classes.
PIPELINE = "pipeline"
CLASSIFIER = "classifier"
# The files an image classifier is loaded from (and the only ones downloaded of its repository).
CLASSIFIER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json")
CLASSIFIER_SHARDS = "model-*-of-*.safetensors"
# What a download fetches of a classifier's repository: Falconsai's also holds a PyTorch pickle of the
# same weights and other formats, which the bot never reads.
CLASSIFIER_PATTERNS = [*CLASSIFIER_FILES, CLASSIFIER_SHARDS]


@dataclass(frozen=True)
class CachedRevision:
    commit: str
    refs: tuple[str, ...]
    file_count: int
    size_bytes: int


@dataclass
class CacheReport:
    cache_root: Path
    cache_root_exists: bool
    model_id: str
    revision: str
    model_dir: Path
    cached: bool = False
    complete: bool = False
    commit: str | None = None
    snapshot_dir: Path | None = None
    revisions: list[CachedRevision] = field(default_factory=list)
    file_count: int = 0
    size_bytes: int = 0
    free_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    kind: str = PIPELINE

    def rows(self) -> list[tuple[str, str]]:
        """Label and value pairs, shared by the command line and the Discord embed."""
        root_state = "exists" if self.cache_root_exists else "does not exist yet"
        if self.complete:
            state = "complete"
        elif self.cached:
            state = "INCOMPLETE"
        else:
            state = "not cached"
        revisions = ", ".join(
            f"{rev.commit[:12]}" + (f" ({', '.join(rev.refs)})" if rev.refs else "") for rev in self.revisions
        )
        rows = [
            ("Cache root", f"{self.cache_root} ({root_state})"),
            ("Safety model" if self.kind == CLASSIFIER else "Model", f"{self.model_id} @ {self.revision}"),
            ("Model folder", str(self.model_dir)),
            ("Cached", "yes" if self.cached else "no"),
            ("Complete", state),
            ("Files", str(self.file_count)),
            ("Size", format_bytes(self.size_bytes)),
            ("Revisions", revisions or "none"),
            ("Free disk", format_bytes(self.free_bytes) if self.free_bytes is not None else "unknown"),
        ]
        rows.extend(("Problem", problem) for problem in self.problems)
        return rows

    def to_text(self) -> str:
        width = max(len(label) for label, _ in self.rows())
        return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in self.rows())


def format_bytes(count: int | None) -> str:
    if count is None:
        return "unknown"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - loop always returns


def hub_cache_root() -> Path:
    return Path(constants.HF_HUB_CACHE)


def inspect_cache(
    model_id: str, revision: str = "main", cache_root: Path | None = None, *, kind: str = PIPELINE
) -> CacheReport:
    """Report on `model_id` (a PIPELINE or a CLASSIFIER) in the cache without touching the network."""
    root = cache_root or hub_cache_root()
    model_dir = root / f"models--{model_id.replace('/', '--')}"
    report = CacheReport(
        cache_root=root,
        cache_root_exists=root.is_dir(),
        model_id=model_id,
        revision=revision,
        model_dir=model_dir,
        free_bytes=_free_bytes(root),
        kind=kind,
    )
    if not model_dir.is_dir():
        report.problems.append("the model has not been downloaded (run `zimage-bot download`)")
        return report
    report.cached = True
    _add_scan_figures(report, root)
    report.commit = _resolve_commit(model_dir, revision)
    if report.commit is None:
        report.problems.append(f"no snapshot for revision {revision!r} (run `zimage-bot download`)")
        return report
    report.snapshot_dir = model_dir / "snapshots" / report.commit
    if kind == CLASSIFIER:
        report.problems.extend(_classifier_problems(report.snapshot_dir))
    else:
        report.problems.extend(_snapshot_problems(report.snapshot_dir))
    partial = sorted((model_dir / "blobs").glob("*.incomplete"))
    if partial:
        report.problems.append(
            f"{len(partial)} interrupted download(s) in blobs/ (run `zimage-bot download` to resume)"
        )
    report.complete = not report.problems
    return report


def _free_bytes(path: Path) -> int | None:
    # The cache may not exist yet: ask about the nearest folder that does.
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def _add_scan_figures(report: CacheReport, root: Path) -> None:
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id == report.model_id:
            report.file_count = repo.nb_files
            report.size_bytes = repo.size_on_disk
            report.revisions = sorted(
                (
                    CachedRevision(rev.commit_hash, tuple(sorted(rev.refs)), len(rev.files), rev.size_on_disk)
                    for rev in repo.revisions
                ),
                key=lambda rev: rev.commit,
            )


def _resolve_commit(model_dir: Path, revision: str) -> str | None:
    if _COMMIT.fullmatch(revision) and (model_dir / "snapshots" / revision).is_dir():
        return revision
    ref = model_dir / "refs" / revision
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    return commit if (model_dir / "snapshots" / commit).is_dir() else None


def _snapshot_problems(snapshot: Path) -> list[str]:
    """Every file that model_index.json and each component's weight index names must be present."""
    index_file = snapshot / "model_index.json"
    if not index_file.is_file():
        return ["model_index.json is missing"]
    try:
        model_index = json.loads(index_file.read_text())
    except (OSError, ValueError) as error:
        return [f"model_index.json cannot be read: {error}"]
    problems = []
    for name, spec in model_index.items():
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0]):
            continue  # "_class_name", "_diffusers_version" and optional components set to null
        problems.extend(_component_problems(snapshot / name, name))
    return problems


def _classifier_problems(snapshot: Path) -> list[str]:
    """Its config, its image preprocessing and its safetensors weights (one file, or an index and its shards)."""
    problems = [f"{name} is missing" for name in CLASSIFIER_FILES[:2] if not (snapshot / name).exists()]
    index = snapshot / "model.safetensors.index.json"
    if (snapshot / "model.safetensors").exists():
        return problems
    if not index.exists():
        return [*problems, "model.safetensors is missing"]
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError) as error:
        return [*problems, f"{index.name} cannot be read: {error}"]
    return problems + [f"{shard} is missing" for shard in sorted(shards) if not (snapshot / shard).exists()]


def _component_problems(folder: Path, name: str) -> list[str]:
    if not folder.is_dir():
        return [f"component folder {name}/ is missing"]
    files = [path for path in folder.iterdir()]
    broken = [path.name for path in files if not path.exists()]  # a symlink whose blob is gone
    if broken:
        return [f"{name}/{file} points to a missing blob" for file in sorted(broken)]
    if not files:
        return [f"component folder {name}/ is empty"]
    problems = []
    indexes = [path for path in files if path.name.endswith(".index.json")]
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as error:
            problems.append(f"{name}/{index.name} cannot be read: {error}")
            continue
        problems.extend(f"{name}/{shard} is missing" for shard in sorted(shards) if not (folder / shard).exists())
    # A model component (it has config.json) needs weights; tokenizers and schedulers do not.
    has_weights = any(path.suffix in (".safetensors", ".bin") for path in files)
    if (folder / "config.json").exists() and not indexes and not has_weights:
        problems.append(f"{name}/ has a config.json but no weights")
    return problems
