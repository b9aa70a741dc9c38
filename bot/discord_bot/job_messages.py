"""What a job looks like in Discord: status text, the result embed, and the buttons under it.

The buttons are one discord.py DynamicItem, `JobButton`, whose custom_id carries the action and the
job id (`zimage:ACTION:ID`, made here and nowhere else), so they work on every message the bot ever
posted, across restarts. Views hold the DynamicItem itself, as discord.py's dynamic_counter example
does; what a click does lives in the generation cog.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.generation import GenerationRequest

BUTTON_PREFIX = "zimage"
BUTTON_ACTIONS = ("reroll", "variations", "info", "delete", "cancel")
PROMPT_PREVIEW = 300
BUTTONS_COG = "Generation"  # the cog that answers clicks


def button_id(action: str, job_id: int) -> str:
    return f"{BUTTON_PREFIX}:{action}:{job_id}"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=re.escape(BUTTON_PREFIX) + r":(?P<action>" + "|".join(BUTTON_ACTIONS) + r"):(?P<job_id>\d+)",
):
    """Any button on a job's message, before or after a restart: the job id is in the custom_id."""

    def __init__(
        self,
        action: str,
        job_id: int,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
    ) -> None:
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=button_id(action, job_id)))
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        handler: Any = interaction.client.get_cog(BUTTONS_COG)  # type: ignore[attr-defined]
        if handler is None:
            await interaction.response.send_message("Image generation is not available right now.", ephemeral=True)
            return
        try:
            await handler.on_button(interaction, self.action, self.job_id)
        except Exception as error:
            await handler.on_button_error(interaction, error)


def quote(text: str, limit: int = PROMPT_PREVIEW) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "> " + text


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes} min {rest:02d} s"


def status_text(job, paused: bool) -> str:
    """The live line of a waiting or running job (`job` is a runner.ActiveJob)."""
    prompt = quote(job.request.prompt)
    if job.progress is not None:
        step = job.progress
        image = f" · image {step.image_index + 1} of {job.request.count}" if job.request.count > 1 else ""
        return f"🎨 Job {job.job_id} generating: step {step.step} of {step.total}{image}\n{prompt}"
    wait = f", about {format_seconds(job.eta_seconds)} to wait" if job.eta_seconds else ""
    if paused:
        return f"⏸️ Job {job.job_id}: queue paused by an admin. You are number {job.position or '?'} in line.\n{prompt}"
    return f"⏳ Job {job.job_id} queued: number {job.position or '?'} in line{wait}.\n{prompt}"


def result_embed(
    request: GenerationRequest,
    seeds: list[int],
    seconds: float | None,
    job_id: int,
    model_id: str,
    first_file: str | None,
) -> discord.Embed:
    title = " ".join(request.prompt.split())
    embed = discord.Embed(
        title=title if len(title) <= 256 else title[:255] + "…",
        description=request.prompt if len(title) > 256 else None,
        colour=discord.Colour.blurple(),
    )
    embed.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(str(s) for s in seeds))
    embed.add_field(name="Size", value=str(request.size))
    embed.add_field(name="Steps", value=str(request.steps))
    if request.guidance:
        embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    if seconds is not None:
        embed.add_field(name="Time", value=format_seconds(seconds))
    if request.negative_prompt:
        embed.add_field(name="Negative prompt", value=request.negative_prompt[:1024], inline=False)
    if first_file:
        embed.set_image(url=f"attachment://{first_file}")
    embed.set_footer(text=f"Job {job_id} · {model_id}")
    return embed


def info_embed(record, model_id: str) -> discord.Embed:
    """Every parameter of a stored job (a job_store.JobRecord), for the Info button and /info."""
    embed = discord.Embed(title=f"Job {record.id}", description=record.prompt[:4000], colour=discord.Colour.dark_grey())
    seeds = record.seeds or [record.seed + i for i in range(record.count)]
    embed.add_field(name="Seeds", value=", ".join(str(s) for s in seeds))
    embed.add_field(name="Size", value=f"{record.width}x{record.height}")
    embed.add_field(name="Steps", value=str(record.steps))
    embed.add_field(name="Guidance", value=f"{record.guidance:g}")
    embed.add_field(name="Images", value=str(record.count))
    embed.add_field(name="State", value=record.state.value)
    if record.negative_prompt:
        embed.add_field(name="Negative prompt", value=record.negative_prompt[:1024], inline=False)
    # The description holds the requester's own prompt; the enhancer's rewrite, or why there is none.
    if record.enhanced_prompt:
        embed.add_field(name="Enhanced prompt (used)", value=record.enhanced_prompt[:1024], inline=False)
    elif record.enhancement_note:
        embed.add_field(name="Prompt enhancer", value=f"Not used: {record.enhancement_note}."[:1024], inline=False)
    if record.seconds is not None:
        embed.add_field(name="Time", value=format_seconds(record.seconds))
    if record.error:
        embed.add_field(name="What happened", value=record.error[:1024], inline=False)
    embed.add_field(name="Requested by", value=f"<@{record.user_id}>")
    embed.add_field(name="Kind", value=record.kind + (f" of job {record.parent_id}" if record.parent_id else ""))
    embed.set_footer(text=model_id)
    return embed


def _view(*buttons: JobButton) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(button)
    return view


def result_view(job_id: int) -> discord.ui.View:
    return _view(
        JobButton("reroll", job_id, label="Reroll", emoji="🎲", style=discord.ButtonStyle.primary),
        JobButton("variations", job_id, label="Variations", emoji="🔀"),
        JobButton("info", job_id, label="Info", emoji="ℹ️"),
        JobButton("delete", job_id, label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger),
    )


def cancel_view(job_id: int) -> discord.ui.View:
    return _view(JobButton("cancel", job_id, label="Cancel", emoji="✖️"))
