"""Shared fixtures: an offline Hugging Face cache holding a tiny random-weight Z-Image model.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, when it is first imported, so they are set
here, before any test module (or the bot) can import it. Nothing in the suite reaches the network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_HF_HOME = Path(tempfile.mkdtemp(prefix="zimage-tests-hf-"))
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_CACHE"] = str(_HF_HOME / "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
# A dead endpoint: if anything tried the network despite the offline flag, it would fail fast.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

import pytest  # noqa: E402

from tiny_model import TINY_REPO_ID, TINY_SAFETY_NEVER, build_tiny_classifiers, build_tiny_model, install_copy  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HUB_CACHE = _HF_HOME / "hub"
TINY_SIZES = "64x64,96x64,64x96"


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    """The process-wide cache (HF_HUB_CACHE) with the tiny model and the tiny safety classifiers in it, built once."""
    build_tiny_model(HUB_CACHE)
    build_tiny_classifiers(HUB_CACHE)
    return HUB_CACHE


@pytest.fixture
def own_hub_cache(hub_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the cache that a test may damage."""
    destination = tmp_path / "hf" / "hub"
    install_copy(hub_cache, destination)
    return destination


def tiny_env(tmp_path: Path, hub: Path | None = None, **overrides: str) -> dict[str, str]:
    """Environment for running `zimage-bot` in a subprocess against the tiny model."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DISCORD_", "PYTEST_"))}
    hub = hub or HUB_CACHE
    env.update(
        HF_HOME=str(hub.parent),
        HF_HUB_CACHE=str(hub),
        MODEL_ID=TINY_REPO_ID,
        # The safety check on, as by default, with a classifier that flags nothing; tests that need
        # flagged images choose another (tiny_model.TINY_CLASSIFIERS) or a SAFETY_THRESHOLD.
        SAFETY_MODEL=TINY_SAFETY_NEVER,
        IMAGE_SIZES=TINY_SIZES,
        DEFAULT_STEPS="2",
        DEVICE="cpu",
        COMPILE="0",
        OUTPUT_DIR=str(tmp_path / "outputs"),
        DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture
def tiny_settings(tmp_path: Path, hub_cache: Path):
    from bot.settings import Settings

    return Settings.from_env(tiny_env(tmp_path, hub_cache))


@pytest.fixture(scope="session")
def loaded_service(hub_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One resident tiny pipeline for the whole session, as `zimage-bot run` would hold it."""
    from bot.model.pipeline_service import PipelineService
    from bot.settings import Settings

    settings = Settings.from_env(tiny_env(tmp_path_factory.mktemp("service"), hub_cache))
    service = PipelineService(settings)
    service.load()
    yield service
    service.close()


PYTHON = sys.executable


# ----- the Discord side: the real bot, in this process, against the local Discord API double -----

import asyncio  # noqa: E402

import pytest_asyncio  # noqa: E402

ADMIN_ID = 4242


@pytest_asyncio.fixture
async def discord_api():
    from discord_double import DiscordDouble

    async with DiscordDouble() as api:
        yield api


class RunningBot:
    """A started ZImageBot plus what a test needs to drive and inspect it."""

    def __init__(self, bot, task: asyncio.Task, api) -> None:
        self.bot = bot
        self.task = task
        self.api = api

    @property
    def runner(self):
        return self.bot.runner

    async def stop(self) -> None:
        if not self.task.done():
            self.bot.request_shutdown()
        await asyncio.wait_for(self.task, 40)


@pytest_asyncio.fixture
async def start_bot(discord_api, loaded_service, tmp_path):
    """Start the real bot (shared tiny model service) against the double; stops it afterwards."""
    from bot.discord_bot.client import ZImageBot, point_at_discord, serve
    from bot.jobs.store import JobStore
    from bot.settings import Settings

    started: list[RunningBot] = []

    async def start(*, busy_timeout: float | None = None, service=None, **overrides: str) -> RunningBot:
        """`service`: another model service than the shared one (one with a working enhancer, say)."""
        env = tiny_env(
            tmp_path,
            DISCORD_API_BASE=discord_api.api_base,
            DISCORD_GATEWAY_URL=discord_api.gateway_url,
            DEV_GUILD_ID=str(discord_api.guild_id),
            ADMIN_USER_IDS=str(ADMIN_ID),
        )
        env.update(overrides)
        settings = Settings.from_env(env)
        point_at_discord(settings)
        store = (
            JobStore(settings.data_dir)
            if busy_timeout is None
            else JobStore(settings.data_dir, busy_timeout=busy_timeout)
        )
        bot = ZImageBot(settings, service or loaded_service, store, guild_ready_timeout=0.05)
        task = asyncio.create_task(serve(bot, discord_api.valid_token))
        await discord_api.wait_for(lambda: bot.is_ready() or task.done(), timeout=15)
        if task.done():
            task.result()
        running = RunningBot(bot, task, discord_api)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()
        running.bot.store.close()
