"""/status: what the bot is doing, for anyone, answered at once even while an image is being made."""

from __future__ import annotations

import asyncio
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.job_messages import format_seconds
from bot.jobs.workers import WorkerState
from bot.model.cache_report import format_bytes, hub_cache_root
from bot.translations import Text, tr

# The words for each state, in the reader's language (the enums' values are the English ones, for logs).
# The model service's states by value: this cog need not import the torch side for them.
SERVICE_STATES = {
    "not loaded": Text("not loaded"),
    "loading": Text("loading"),
    "warming up": Text("warming up"),
    "ready": Text("ready"),
    "failed": Text("failed"),
    "closed": Text("closed"),
}
WORKER_STATES = {
    WorkerState.IDLE: Text("idle"),
    WorkerState.BUSY: Text("busy"),
    WorkerState.OUT: Text("out of rotation"),
}


class Status(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """What the bot is doing: model, GPU, queue, speed."""
        embed = await self.build_embed(interaction.locale)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def build_embed(self, locale: object | None = None) -> discord.Embed:
        bot, settings, service, runner = self.bot, self.bot.settings, self.bot.service, self.bot.runner
        stats = await asyncio.to_thread(bot.store.stats)  # a quick SQLite read, still off the loop
        workers = runner.workers
        # WORKERS=ray: no model in this process; the workers are the state.
        report = service.load_report if service is not None else None
        loaded = service.ready if service is not None else bool(workers.workers)
        ready = loaded and bool(workers.in_rotation()) and not runner.queue.closed
        embed = discord.Embed(
            title=tr(locale, "zimage-bot status"),
            colour=discord.Colour.green() if ready else discord.Colour.orange(),
        )
        if runner.queue.closed:
            state = tr(locale, "shutting down")
        elif workers.problem:
            state = tr(locale, "{problem}; jobs wait", problem=workers.problem)
        elif loaded and not workers.in_rotation():
            state = tr(locale, "no worker available: jobs wait until one is back")
        elif service is not None and not service.ready:
            state = SERVICE_STATES.get(service.state.value, Text("{state}", state=service.state.value)).render(locale)
        else:
            state = tr(locale, "ready") if ready else tr(locale, "waiting for workers")
        if runner.queue.paused:
            state = tr(locale, "{state} (queue paused)", state=state)
        embed.add_field(name=tr(locale, "State"), value=state)
        embed.add_field(name=tr(locale, "Model"), value=f"{settings.model_id}\n@ {settings.model_revision}")
        if service is None:
            embed.add_field(
                name=tr(locale, "Device"),
                value=tr(locale, "Ray: {count} worker(s) in rotation", count=len(workers.in_rotation())),
            )
        else:
            embed.add_field(
                name=tr(locale, "Device"), value=f"{service.device} · {str(service.dtype).removeprefix('torch.')}"
            )
        safety = settings.safety_check_text if settings.safety_model else tr(locale, "off")
        embed.add_field(name=tr(locale, "Safety check"), value=safety)
        memory = service.gpu_memory() if service is not None else None
        if memory is not None:
            embed.add_field(
                name=tr(locale, "GPU memory"),
                value=memory.name
                + "\n"
                + tr(
                    locale,
                    "{used} used of {total} (peak {peak})",
                    used=format_bytes(memory.allocated_bytes),
                    total=format_bytes(memory.total_bytes),
                    peak=format_bytes(memory.peak_bytes),
                ),
            )
        if report is not None:
            source = Text("local cache") if report.from_cache else Text("downloaded at start")
            if report.transformer_copy != "off":
                source = Text("local cache, transformer from the bf16 copy in DATA_DIR")
            embed.add_field(
                name=tr(locale, "Load"),
                value=tr(locale, "{time} ({source})", time=format_seconds(report.load_seconds), source=source),
            )
            warm_up = format_seconds(report.warmup_seconds)
            if report.compiled_code == "loaded":
                warm_up = tr(locale, "{time} (compiled code from DATA_DIR)", time=warm_up)
            embed.add_field(name=tr(locale, "Warm-up"), value=warm_up)
        embed.add_field(name=tr(locale, "Cache folder"), value=f"`{hub_cache_root()}`", inline=False)
        if service is None or len(workers.workers) > 1 or not all(worker.in_rotation for worker in workers.workers):
            embed.add_field(name=tr(locale, "Workers"), value=_workers_text(workers, locale), inline=False)
            embed.add_field(
                name=tr(locale, "Throughput"),
                value=tr(locale, "{rate} images/s (last 5 min)", rate=f"{workers.images_per_second():.2f}"),
            )
        running = len(runner.queue.running_jobs)
        queue_text = (
            tr(locale, "{waiting} waiting, {running} running", waiting=len(runner.queue), running=running)
            if running
            else tr(locale, "{waiting} waiting", waiting=len(runner.queue))
        )
        embed.add_field(name=tr(locale, "Queue"), value=queue_text)
        embed.add_field(
            name=tr(locale, "Jobs done"),
            value=tr(locale, "{jobs} ({images} images)", jobs=stats.jobs_done, images=stats.images_done),
        )
        mean = stats.mean_seconds_per_image
        embed.add_field(
            name=tr(locale, "Mean time per image"),
            value=format_seconds(mean) if mean is not None else tr(locale, "no data yet"),
        )
        embed.add_field(name=tr(locale, "Uptime"), value=format_seconds(time.time() - runner.started_at))
        problems = runner.health.problems()
        if problems:
            # A background failure (the worker, delivery, the job store, OUTPUT_DIR) is logged in full;
            # here the operator sees that it happened, and that the loops were restarted.
            embed.colour = discord.Colour.orange()
            lines = [
                tr(
                    locale,
                    "{age} ago, {where}: {error}",
                    age=format_seconds(time.time() - problem.at),
                    where=problem.where,
                    error=problem.error,
                )[:300]
                for problem in problems[-3:]
            ]
            restarts = ", ".join(f"{name} {count}x" for name, count in runner.health.restarts.items())
            if restarts:
                lines.append(tr(locale, "restarted: {restarts}", restarts=restarts))
            embed.add_field(
                name=tr(locale, "Problems ({count}, see the log)", count=len(problems)),
                value="\n".join(lines)[:1024],
                inline=False,
            )
        return embed


def _workers_text(workers, locale: object | None = None) -> str:
    """One line a worker: device, state, jobs done, memory."""
    lines = []
    for worker in workers.workers:
        state = WORKER_STATES[worker.state if worker.in_rotation else WorkerState.OUT].render(locale)
        if worker.job_id is not None:
            state += tr(locale, " (job {job})", job=worker.job_id)
        if worker.why_out:
            state += f": {worker.why_out}"
        line = f"`{worker.name}` {state} · " + tr(locale, "{count} jobs", count=worker.jobs_done)
        memory = worker.gpu_memory() if worker.in_rotation else None
        if memory is not None:
            line += " · " + tr(
                locale,
                "{used} of {total}",
                used=format_bytes(memory.allocated_bytes),
                total=format_bytes(memory.total_bytes),
            )
        lines.append(line)
    return "\n".join(lines)[:1024]  # an embed field holds at most 1024 characters


async def setup(bot) -> None:
    await bot.add_cog(Status(bot))
