"""The cache report on real Hugging Face cache layouts, and `zimage-bot cache-check`'s exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from bot.model.cache_report import inspect_cache
from conftest import TINY_REPO_ID, tiny_env
from tiny_model import mark_incomplete, snapshot_dir


def test_complete_model(own_hub_cache):
    report = inspect_cache(TINY_REPO_ID, "main", own_hub_cache)
    assert report.cache_root_exists and report.cached and report.complete
    assert report.problems == []
    assert report.snapshot_dir == snapshot_dir(own_hub_cache)
    assert report.commit == snapshot_dir(own_hub_cache).name
    assert [rev.commit for rev in report.revisions] == [report.commit]
    assert report.revisions[0].refs == ("main",)
    snapshot_files = [path for path in snapshot_dir(own_hub_cache).rglob("*") if path.is_file()]
    assert report.file_count == len(snapshot_files) > 10
    assert report.size_bytes > 100_000
    assert report.free_bytes and report.free_bytes > 0
    text = report.to_text()
    assert "Complete:" in text and "complete" in text and str(own_hub_cache) in text


def test_the_commit_hash_works_as_revision(own_hub_cache):
    commit = snapshot_dir(own_hub_cache).name
    assert inspect_cache(TINY_REPO_ID, commit, own_hub_cache).complete
    unknown = inspect_cache(TINY_REPO_ID, "v9", own_hub_cache)
    assert unknown.cached and not unknown.complete
    assert "no snapshot for revision 'v9'" in unknown.problems[0]


def test_missing_weight_shard(own_hub_cache):
    snapshot = snapshot_dir(own_hub_cache)
    index = json.loads((snapshot / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (snapshot / "transformer" / shard).unlink()
    report = inspect_cache(TINY_REPO_ID, "main", own_hub_cache)
    assert report.cached and not report.complete
    assert report.problems == [f"transformer/{shard} is missing"]
    assert "INCOMPLETE" in report.to_text()


def test_missing_component_folder(own_hub_cache):
    shutil.rmtree(snapshot_dir(own_hub_cache) / "vae")
    report = inspect_cache(TINY_REPO_ID, "main", own_hub_cache)
    assert not report.complete
    assert report.problems == ["component folder vae/ is missing"]


def test_blob_gone_behind_a_symlink(own_hub_cache):
    (snapshot_dir(own_hub_cache) / "scheduler/scheduler_config.json").resolve().unlink()
    report = inspect_cache(TINY_REPO_ID, "main", own_hub_cache)
    assert report.problems == ["scheduler/scheduler_config.json points to a missing blob"]


def test_interrupted_download(own_hub_cache):
    index = json.loads((snapshot_dir(own_hub_cache) / "text_encoder/model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    mark_incomplete(own_hub_cache, TINY_REPO_ID, f"text_encoder/{shard}")
    report = inspect_cache(TINY_REPO_ID, "main", own_hub_cache)
    assert not report.complete
    assert f"text_encoder/{shard} is missing" in report.problems
    assert any("1 interrupted download" in problem for problem in report.problems)


def test_absent_model_and_absent_cache(tmp_path):
    root = tmp_path / "nowhere" / "hub"
    report = inspect_cache(TINY_REPO_ID, "main", root)
    assert not report.cache_root_exists and not report.cached and not report.complete
    assert report.file_count == 0 and report.revisions == []
    assert report.free_bytes and report.free_bytes > 0  # measured on the nearest existing folder
    assert "has not been downloaded" in report.problems[0]
    assert "does not exist yet" in report.to_text()


def _cache_check(env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bot", "cache-check"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cache_check_exit_codes(own_hub_cache, tmp_path):
    complete = _cache_check(tiny_env(tmp_path, own_hub_cache), tmp_path)
    assert complete.returncode == 0, complete.stderr
    assert "Complete:" in complete.stdout and "Cache root:" in complete.stdout
    assert str(own_hub_cache) in complete.stdout

    shutil.rmtree(snapshot_dir(own_hub_cache) / "text_encoder")
    incomplete = _cache_check(tiny_env(tmp_path, own_hub_cache), tmp_path)
    assert incomplete.returncode == 1
    assert "component folder text_encoder/ is missing" in incomplete.stdout

    absent = _cache_check(tiny_env(tmp_path, tmp_path / "empty" / "hub"), tmp_path)
    assert absent.returncode == 1
    assert "Cached:" in absent.stdout and "not cached" in absent.stdout
    assert not (tmp_path / "empty").exists()  # cache-check never downloads or creates anything
