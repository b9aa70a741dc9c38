"""/status: what the bot is doing, for anyone, answered at once even while an image is being made."""

from __future__ import annotations

import asyncio
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.job_messages import format_seconds
from bot.model.cache_report import format_bytes, hub_cache_root


class Status(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """What the bot is doing: model, GPU, queue, speed."""
        embed = await self.build_embed()
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def build_embed(self) -> discord.Embed:
        bot, settings, service, runner = self.bot, self.bot.settings, self.bot.service, self.bot.runner
        stats = await asyncio.to_thread(bot.store.stats)  # a quick SQLite read, still off the loop
        workers = runner.workers
        # WORKERS=ray: no model in this process; the workers are the state.
        report = service.load_report if service is not None else None
        loaded = service.ready if service is not None else bool(workers.workers)
        ready = loaded and bool(workers.in_rotation()) and not runner.queue.closed
        embed = discord.Embed(
            title="zimage-bot status",
            colour=discord.Colour.green() if ready else discord.Colour.orange(),
        )
        if runner.queue.closed:
            state = "shutting down"
        elif workers.problem:
            state = f"{workers.problem}; jobs wait"
        elif loaded and not workers.in_rotation():
            state = "no worker available: jobs wait until one is back"
        elif service is not None and not service.ready:
            state = service.state.value
        else:
            state = "ready" if ready else "waiting for workers"
        if runner.queue.paused:
            state += " (queue paused)"
        embed.add_field(name="State", value=state)
        embed.add_field(name="Model", value=f"{settings.model_id}\n@ {settings.model_revision}")
        if service is None:
            embed.add_field(name="Device", value=f"Ray: {len(workers.in_rotation())} worker(s) in rotation")
        else:
            embed.add_field(name="Device", value=f"{service.device} · {str(service.dtype).removeprefix('torch.')}")
        embed.add_field(name="Safety check", value=settings.safety_check_text)
        memory = service.gpu_memory() if service is not None else None
        if memory is not None:
            embed.add_field(
                name="GPU memory",
                value=f"{memory.name}\n{format_bytes(memory.allocated_bytes)} used"
                f" of {format_bytes(memory.total_bytes)} (peak {format_bytes(memory.peak_bytes)})",
            )
        if report is not None:
            source = "local cache" if report.from_cache else "downloaded at start"
            embed.add_field(name="Load", value=f"{format_seconds(report.load_seconds)} ({source})")
            embed.add_field(name="Warm-up", value=format_seconds(report.warmup_seconds))
        embed.add_field(name="Cache folder", value=f"`{hub_cache_root()}`", inline=False)
        if service is None or len(workers.workers) > 1 or not all(worker.in_rotation for worker in workers.workers):
            embed.add_field(name="Workers", value=_workers_text(workers), inline=False)
            embed.add_field(name="Throughput", value=f"{workers.images_per_second():.2f} images/s (last 5 min)")
        running = len(runner.queue.running_jobs)
        queue_text = f"{len(runner.queue)} waiting" + (f", {running} running" if running else "")
        embed.add_field(name="Queue", value=queue_text)
        embed.add_field(name="Jobs done", value=f"{stats.jobs_done} ({stats.images_done} images)")
        mean = stats.mean_seconds_per_image
        embed.add_field(name="Mean time per image", value=format_seconds(mean) if mean is not None else "no data yet")
        embed.add_field(name="Uptime", value=format_seconds(time.time() - runner.started_at))
        problems = runner.health.problems()
        if problems:
            # A background failure (the worker, delivery, the job store, OUTPUT_DIR) is logged in full;
            # here the operator sees that it happened, and that the loops were restarted.
            embed.colour = discord.Colour.orange()
            lines = [
                f"{format_seconds(time.time() - problem.at)} ago, {problem.where}: {problem.error}"[:300]
                for problem in problems[-3:]
            ]
            restarts = ", ".join(f"{name} {count}x" for name, count in runner.health.restarts.items())
            if restarts:
                lines.append(f"restarted: {restarts}")
            embed.add_field(
                name=f"Problems ({len(problems)}, see the log)", value="\n".join(lines)[:1024], inline=False
            )
        return embed


def _workers_text(workers) -> str:
    """One line a worker: device, state, jobs done, memory."""
    lines = []
    for worker in workers.workers:
        state = worker.state.value if worker.in_rotation else "out of rotation"
        state += f" (job {worker.job_id})" if worker.job_id is not None else ""
        if worker.why_out:
            state += f": {worker.why_out}"
        line = f"`{worker.name}` {state} · {worker.jobs_done} jobs"
        memory = worker.gpu_memory() if worker.in_rotation else None
        if memory is not None:
            line += f" · {format_bytes(memory.allocated_bytes)} of {format_bytes(memory.total_bytes)}"
        lines.append(line)
    return "\n".join(lines)[:1024]  # an embed field holds at most 1024 characters


async def setup(bot) -> None:
    await bot.add_cog(Status(bot))
