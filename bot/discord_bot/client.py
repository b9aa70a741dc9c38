"""The Discord client: built from the settings and an already-loaded model service.

It connects only after the model is ready (the command line loads it first), loads the cogs in
`setup_hook`, syncs slash commands only when they changed, and shuts down cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
from typing import Any

import discord
import yarl
from discord.ext import commands

from bot.discord_bot.delivery import DiscordJobPresenter
from bot.discord_bot.error_tree import ZImageCommandTree
from bot.discord_bot.translator import CatalogueTranslator
from bot.jobs.runner import JobRunner
from bot.jobs.store import JobStore
from bot.jobs.workers import WorkerPool
from bot.settings import Settings
from bot.translations import catalogues

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.generation", "cogs.status", "cogs.admin", "cogs.history", "cogs.server_settings")
SYNC_STATE_FILE = "command-sync.json"
SHUTDOWN_TIMEOUT = 25.0  # the contract allows 30 s for the whole shutdown; keep a margin for closing


class LoginRejected(RuntimeError):
    """Discord refused the token."""


class ZImageBot(commands.Bot):
    def __init__(
        self, settings: Settings, service, store: JobStore, *, workers: WorkerPool | None = None, **options
    ) -> None:
        """`service` is the (first) model service; `workers`, with several devices, all of them."""
        # Slash commands and buttons need no privileged intents; `guilds` keeps channel and
        # permission data for the guilds the bot is in.
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ZImageCommandTree,
            help_command=None,
            # Nothing the bot echoes (prompts!) may ping anyone unless a message says otherwise.
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.service = service
        self.store = store
        self.runner = JobRunner(settings, service, store, workers=workers)
        self._shutdown_task: asyncio.Task | None = None
        self.metrics: Any = None  # bot.metrics.BotMetrics when METRICS_PORT is set

    async def setup_hook(self) -> None:
        # Read the catalogues once, off the loop and before connecting: every text afterwards is a lookup.
        await asyncio.to_thread(catalogues)
        # Before any sync: the translator gives every description and choice its zh-CN (and later) texts.
        await self.tree.set_translator(CatalogueTranslator())
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("could not load %s; the other features still work", extension)
        presenter = DiscordJobPresenter(
            self,
            model_id=self.settings.model_id,
            paused=lambda: self.runner.queue.paused,
            health=self.runner.health,
            guild_settings=self.store.guild_settings,
        )
        await self.runner.start(presenter)
        if self.settings.metrics_port is not None:
            self.start_metrics(self.settings.metrics_port)
        await self.sync_commands_if_changed()

    def start_metrics(self, port: int) -> None:
        from bot.metrics import BotMetrics  # prometheus-client: only needed with METRICS_PORT

        metrics = BotMetrics(self.runner)
        try:
            metrics.serve(port)
        except OSError as error:
            # The bot is worth more than its metrics: it serves Discord without them.
            log.error("METRICS_PORT=%d cannot be served (%s); running without metrics", port, error)
            return
        self.metrics = metrics

    async def sync_commands_if_changed(self) -> bool:
        """Sync only when the command set differs from the last sync: global syncs are slow and
        rate-limited, and syncing on every start (or worse, in on_ready) is a known anti-pattern."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        translator = self.tree.translator
        # The translated payloads, so that a changed catalogue syncs too.
        commands_json = [
            await command.get_translated_payload(self.tree, translator) if translator else command.to_dict(self.tree)
            for command in self.tree.get_commands(guild=guild)
        ]
        fingerprint = hashlib.sha256(
            json.dumps(
                {"guild": self.settings.dev_guild_id, "app": self.application_id, "commands": commands_json},
                sort_keys=True,
            ).encode()
        ).hexdigest()
        state_file = self.settings.data_dir / SYNC_STATE_FILE
        previous = await asyncio.to_thread(_read_text, state_file)
        if previous == fingerprint:
            log.info("slash commands unchanged since the last sync; not syncing")
            return False
        where = f"guild {self.settings.dev_guild_id}" if guild else "all guilds (may take a while to show)"
        try:
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException as error:
            # The commands synced before stay registered with Discord and keep working, so a failed
            # sync is no reason to stop serving; without the record it is tried again at the next start.
            hint = (
                "is the bot in that guild, invited with applications.commands? Fix DEV_GUILD_ID or re-invite"
                if guild is not None and error.status == 403
                else "tried again at the next start"
            )
            log.warning(
                "could not sync slash commands to %s: Discord answered %d %s (%s); serving the commands synced before",
                where,
                error.status,
                error.text or type(error).__name__,
                hint,
            )
            return False
        await asyncio.to_thread(state_file.write_text, fingerprint)
        log.info("synced %d slash commands to %s", len(synced), where)
        return True

    async def on_ready(self) -> None:
        log.info(
            "connected to Discord as %s (id %s) in %d guild(s)",
            self.user,
            self.user.id if self.user else "?",
            len(self.guilds),
        )

    def request_shutdown(self) -> None:
        if self._shutdown_task is None:
            log.info("shutting down: no new jobs; finishing or cancelling the running one")
            self._shutdown_task = asyncio.create_task(self._shutdown())

    async def shutdown_finished(self) -> None:
        """Wait for a shutdown that `request_shutdown` started (returns at once if none was)."""
        if self._shutdown_task is not None:
            await self._shutdown_task

    async def _shutdown(self) -> None:
        try:
            await self.runner.stop(timeout=SHUTDOWN_TIMEOUT)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            await self.close()


def point_at_discord(settings: Settings) -> None:
    """Honour DISCORD_API_BASE and DISCORD_GATEWAY_URL (a rate-limit proxy or a compatible server)."""
    discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def serve(bot: ZImageBot, token: str) -> None:
    """Run until closed; SIGTERM and SIGINT start a clean shutdown."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C still raises KeyboardInterrupt
            loop.add_signal_handler(signum, bot.request_shutdown)
    async with bot:
        try:
            await bot.start(token)
        except discord.LoginFailure as error:
            raise LoginRejected(
                "Discord rejected DISCORD_TOKEN (401). Copy a fresh token from the Developer Portal "
                "(your app > Bot > Reset Token) into .env."
            ) from error
    await bot.shutdown_finished()


def run_bot(
    settings: Settings, services: list, store: JobStore, token: str, *, workers: WorkerPool | None = None
) -> None:
    """Run the bot on already-loaded model services (one per device, usually one), or on `workers`
    elsewhere (WORKERS=ray: no service in this process)."""
    point_at_discord(settings)
    if workers is None and len(services) > 1:
        workers = WorkerPool.of(services)
    bot = ZImageBot(settings, services[0] if services else None, store, workers=workers)
    asyncio.run(serve(bot, token))


def _read_text(path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
