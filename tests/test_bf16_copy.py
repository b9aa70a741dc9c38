"""BF16_COPY=1: the transformer's bf16 copy in DATA_DIR, made once, checked, used only for its commit.

The tiny model's transformer is stored in fp32 in three shards, as the published one is, so the copy is
a real cast, shard by shard, and a start from it must give the pixels a start from the fp32 files gives
(both are the same round-to-nearest cast of the same numbers).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bot.generation import GenerationRequest
from bot.image_size import ImageSize
from bot.model import bf16_copy
from bot.model.pipeline_service import PipelineService
from bot.settings import Settings
from conftest import PROJECT_ROOT, tiny_env
from tiny_model import TINY_REPO_ID, build_tiny_model, snapshot_dir

SMALL = ImageSize(64, 64)
MADE = "making a bf16 copy of the transformer"
USED = "loading the transformer from the bf16 copy"
UNUSABLE = "is unusable"


def start(tmp_path: Path, hub_cache: Path, **overrides: str) -> tuple[str, np.ndarray]:
    """One start (bf16 on the CPU, no compiling) and one image; returns the report's `transformer_copy`."""
    env = dict(DTYPE="bfloat16", COMPILE="0", SAFETY_MODEL="", ENHANCER="off", IMAGE_SIZES="64x64")
    env.update(overrides)
    service = PipelineService(Settings.from_env(tiny_env(tmp_path, hub_cache, **env)))
    try:
        report = service.load()
        image = service.generate(GenerationRequest("a red fox in the snow", SMALL, 2, seed=7)).images[0]
        dtype = service.call_on_worker(lambda pipe: next(pipe.transformer.parameters()).dtype)
    finally:
        service.close()
    assert str(dtype) == "torch.bfloat16"
    return report.transformer_copy, np.asarray(image)


def copy_folder(tmp_path: Path, hub_cache: Path) -> Path:
    commit = snapshot_dir(hub_cache).name
    return bf16_copy.copy_root(tmp_path / "data", TINY_REPO_ID, commit)


def safetensors_dtypes(path: Path) -> set[str]:
    with path.open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


@pytest.fixture(scope="module")
def plain_pixels(hub_cache, tmp_path_factory) -> np.ndarray:
    """The image of a start without the copy: what every start with it must give."""
    used, pixels = start(tmp_path_factory.mktemp("plain"), hub_cache, BF16_COPY="0")
    assert used == "off"
    return pixels


def test_the_first_start_makes_the_copy_and_the_next_loads_it_with_the_same_pixels(
    tmp_path, hub_cache, plain_pixels, caplog
):
    source = snapshot_dir(hub_cache) / "transformer"
    assert all(safetensors_dtypes(shard) == {"F32"} for shard in source.glob("*.safetensors"))

    with caplog.at_level(logging.INFO, logger="bot.model.bf16_copy"):
        made, pixels = start(tmp_path, hub_cache, BF16_COPY="1")
    assert made == "made" and MADE in caplog.text and USED not in caplog.text
    np.testing.assert_array_equal(pixels, plain_pixels)

    root = copy_folder(tmp_path, hub_cache)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["source"] == {"model_id": TINY_REPO_ID, "commit": snapshot_dir(hub_cache).name}
    shards = sorted((root / "transformer").glob("*.safetensors"))
    assert [shard.name for shard in shards] == sorted(path.name for path in source.glob("*.safetensors"))
    for shard in shards:
        assert safetensors_dtypes(shard) == {"BF16"}
        assert manifest["files"][f"transformer/{shard.name}"]["sha256"] == bf16_copy.sha256_of(shard)
    # Half the bytes of the fp32 weights (plus the small safetensors headers).
    copy_bytes = sum(shard.stat().st_size for shard in shards)
    source_bytes = sum(shard.stat().st_size for shard in source.glob("*.safetensors"))
    assert copy_bytes < 0.55 * source_bytes
    assert (root / "transformer" / "config.json").is_file()
    bf16_copy.check(root, snapshot_dir(hub_cache).name, full=True)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.model.bf16_copy"):
        used, pixels = start(tmp_path, hub_cache, BF16_COPY="1")
    assert used == "used" and USED in caplog.text and MADE not in caplog.text
    np.testing.assert_array_equal(pixels, plain_pixels)


def _truncate(root: Path) -> None:
    shard = sorted((root / "transformer").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1000])


def _flip_a_byte(root: Path) -> None:
    # Same size: only the hash can tell (the modification time changed, so the start hashes it).
    shard = sorted((root / "transformer").glob("*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))


def _drop_the_manifest(root: Path) -> None:
    (root / "manifest.json").unlink()


def _garble_the_manifest(root: Path) -> None:
    (root / "manifest.json").write_text("{not json")


def _another_commit_in_the_manifest(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["source"]["commit"] = "0" * 40
    (root / "manifest.json").write_text(json.dumps(manifest))


def _lose_the_config(root: Path) -> None:
    (root / "transformer" / "config.json").unlink()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "truncated"),
        (_flip_a_byte, "does not match its sha256"),
        (_drop_the_manifest, "no readable manifest"),
        (_garble_the_manifest, "no readable manifest"),
        (_another_commit_in_the_manifest, "made from commit 0000"),
        (_lose_the_config, "config.json is missing"),
    ],
)
def test_a_damaged_copy_is_deleted_and_made_again(tmp_path, hub_cache, plain_pixels, caplog, damage, why):
    assert start(tmp_path, hub_cache, BF16_COPY="1")[0] == "made"
    root = copy_folder(tmp_path, hub_cache)
    damage(root)
    with pytest.raises(bf16_copy.CopyProblem, match=why):
        bf16_copy.check(root, snapshot_dir(hub_cache).name)

    with caplog.at_level(logging.INFO, logger="bot.model.bf16_copy"):
        made, pixels = start(tmp_path, hub_cache, BF16_COPY="1")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and UNUSABLE in warnings[0].getMessage() and why in warnings[0].getMessage()
    assert made == "made"
    np.testing.assert_array_equal(pixels, plain_pixels)
    bf16_copy.check(root, snapshot_dir(hub_cache).name, full=True)


def test_float32_or_copy_off_never_touches_it(tmp_path, hub_cache, caplog):
    with caplog.at_level(logging.WARNING):
        service = PipelineService(
            Settings.from_env(
                tiny_env(tmp_path, hub_cache, BF16_COPY="1", DTYPE="float32", SAFETY_MODEL="", ENHANCER="off")
            )
        )
        try:
            assert service.load(warm_up=False).transformer_copy == "off"
        finally:
            service.close()
    assert "BF16_COPY=1 ignored: the model runs in float32" in caplog.text
    assert not (tmp_path / "data" / "bf16").exists()


def probe(
    tmp_path: Path,
    hub: Path,
    image: str,
    *,
    file_size_limit: int | None = None,
    own_compile_cache: bool = False,
    **overrides: str,
):
    """A start in a fresh process (tests/service_probe.py): the report, the log and the image."""
    env = tiny_env(tmp_path, hub, DTYPE="bfloat16", COMPILE="0", SAFETY_MODEL="", ENHANCER="off", IMAGE_SIZES="64x64")
    env.update(overrides)
    if own_compile_cache:
        # torch set this in the test process when it was imported; a bot started by an operator has none.
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)

    def limit_file_size() -> None:
        # A disk too small for the copy: writes past the limit fail with an OSError (EFBIG), as on a
        # full disk, instead of killing the process.
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "tests" / "service_probe.py"), str(tmp_path / image)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size if file_size_limit else None,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, np.load(tmp_path / image)


def test_a_new_revision_in_the_cache_makes_a_new_copy_and_the_old_one_is_never_used(tmp_path, own_hub_cache):
    first, _, old_pixels = probe(tmp_path, own_hub_cache, "old.npy", BF16_COPY="1")
    assert first["transformer_copy"] == "made"
    old_root = copy_folder(tmp_path, own_hub_cache)
    assert old_root.is_dir()

    build_tiny_model(own_hub_cache, seed=1)  # the revision `main` now resolves to other weights
    _, _, new_plain = probe(tmp_path, own_hub_cache, "plain.npy", BF16_COPY="0")
    report, log, pixels = probe(tmp_path, own_hub_cache, "new.npy", BF16_COPY="1")
    assert report["transformer_copy"] == "made" and MADE in log and USED not in log
    new_root = copy_folder(tmp_path, own_hub_cache)
    assert new_root != old_root and new_root.is_dir() and not old_root.exists()
    np.testing.assert_array_equal(pixels, new_plain)
    assert not np.array_equal(pixels, old_pixels)


def test_a_disk_too_small_for_the_copy_keeps_serving_from_the_cache(tmp_path, hub_cache, plain_pixels):
    # The copy's first shard is about 0.5 MB; the images and the job's files are far smaller.
    report, log, pixels = probe(tmp_path, hub_cache, "image.npy", BF16_COPY="1", file_size_limit=300_000)
    assert report["transformer_copy"] == "off"
    assert "WARNING" in log and "could not make the bf16 copy" in log and "loading the model as usual" in log
    assert "Traceback" not in log
    np.testing.assert_array_equal(pixels, plain_pixels)
    # Nothing half-written is left to be mistaken for a copy.
    leftovers = [path for path in (tmp_path / "data").rglob("*") if path.is_file() and "bf16" in path.parts]
    assert leftovers == []
    assert not copy_folder(tmp_path, hub_cache).exists()


async def test_status_says_the_transformer_came_from_the_copy(start_bot, discord_api, tmp_path, hub_cache):
    from test_generation_cog import reply_text
    from test_status_cog import fields_of

    env = dict(BF16_COPY="1", DTYPE="bfloat16", COMPILE="0", SAFETY_MODEL="", ENHANCER="off", IMAGE_SIZES="64x64")
    service = PipelineService(Settings.from_env(tiny_env(tmp_path / "copy", hub_cache, **env)))
    service.load()
    try:
        await start_bot(service=service)
        message = await reply_text(discord_api, await discord_api.invoke("status", {}))
        fields = fields_of(message)
        assert fields["Load"].endswith("(local cache, transformer from the bf16 copy in DATA_DIR)")
        assert fields["Warm-up"].endswith(" s")  # not compiled: no compiled code to speak of
    finally:
        service.close()
