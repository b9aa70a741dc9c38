"""What a job looks like in Discord: status text, the result embed, and the buttons under it.

The buttons are one discord.py DynamicItem, `JobButton`, whose custom_id carries the action, the
job id and, for the per-image buttons (U1, V2...), the image's index (`zimage:ACTION:ID` or
`zimage:ACTION:ID:INDEX`, made here and nowhere else), so they work on every message the bot ever
posted, across restarts. Views hold the DynamicItem itself, as discord.py's dynamic_counter example
does; what a click does lives in the generation cog.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.generation import GenerationRequest
from bot.translations import Text, localise, tr

BUTTON_PREFIX = "zimage"
# Upscale and the Vary pair redraw one image of a result (the index in the custom_id; 0 for a single image).
IMAGE_ACTIONS = ("upscale", "vary-subtle", "vary-strong")
BUTTON_ACTIONS = ("reroll", "variations", "info", "delete", "cancel", "enhance", *IMAGE_ACTIONS)
PROMPT_PREVIEW = 300
BUTTONS_COG = "Generation"  # the cog that answers clicks
ROW_WIDTH = 5  # Discord's most buttons in one row


def button_id(action: str, job_id: int, index: int | None = None) -> str:
    return f"{BUTTON_PREFIX}:{action}:{job_id}" + (f":{index}" if index is not None else "")


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=re.escape(BUTTON_PREFIX)
    + r":(?P<action>"
    + "|".join(re.escape(action) for action in BUTTON_ACTIONS)
    + r"):(?P<job_id>\d+)(?::(?P<index>\d+))?",
):
    """Any button on a job's message, before or after a restart: the job id (and image index) is in the
    custom_id."""

    def __init__(
        self,
        action: str,
        job_id: int,
        index: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=button_id(action, job_id, index), row=row
            )
        )
        self.action = action
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        index = match["index"]
        return cls(match["action"], int(match["job_id"]), int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        handler: Any = interaction.client.get_cog(BUTTONS_COG)  # type: ignore[attr-defined]
        if handler is None:
            await interaction.response.send_message(
                tr(interaction.locale, "Image generation is not available right now."), ephemeral=True
            )
            return
        try:
            await handler.on_button(interaction, self.action, self.job_id, self.index or 0)
        except Exception as error:
            await handler.on_button_error(interaction, error)


def requester_locale(job) -> object | None:
    """The language of a job's requester, for messages that outlive the interaction (None: English).
    Read from the stored record's `locale` where the store keeps one."""
    return getattr(job.record, "locale", None)


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
    """The live line of a waiting or running job (`job` is a runner.ActiveJob), in its requester's language."""
    locale = requester_locale(job)
    notes = getattr(job, "notes", ())
    prompt = quote(job.request.prompt) + "".join(f"\n-# {localise(note, locale)}" for note in notes)
    if job.progress is not None:
        step = job.progress
        if job.request.count > 1:
            return (
                tr(
                    locale,
                    "🎨 Job {job_id} generating: step {step} of {total} · image {image} of {count}",
                    job_id=job.job_id,
                    step=step.step,
                    total=step.total,
                    image=step.image_index + 1,
                    count=job.request.count,
                )
                + f"\n{prompt}"
            )
        return (
            tr(
                locale,
                "🎨 Job {job_id} generating: step {step} of {total}",
                job_id=job.job_id,
                step=step.step,
                total=step.total,
            )
            + f"\n{prompt}"
        )
    position = job.position or "?"
    if paused:
        return (
            tr(
                locale,
                "⏸️ Job {job_id}: queue paused by an admin. You are number {position} in line.",
                job_id=job.job_id,
                position=position,
            )
            + f"\n{prompt}"
        )
    if job.eta_seconds:
        return (
            tr(
                locale,
                "⏳ Job {job_id} queued: number {position} in line, about {wait} to wait.",
                job_id=job.job_id,
                position=position,
                wait=format_seconds(job.eta_seconds),
            )
            + f"\n{prompt}"
        )
    return tr(locale, "⏳ Job {job_id} queued: number {position} in line.", job_id=job.job_id, position=position) + (
        f"\n{prompt}"
    )


def result_embed(
    request: GenerationRequest,
    seeds: list[int],
    seconds: float | None,
    job_id: int,
    model_id: str,
    first_file: str | None,
    *,
    enhanced_prompt: str | None = None,
    enhancement_note: Text | None = None,
    notes: tuple[Text, ...] = (),
    locale: object | None = None,
) -> discord.Embed:
    """The result's embed. The title is the requester's own prompt; an enhanced prompt that made the
    images is shown beside it, and why an enhancement that was asked for was not used."""
    title = " ".join(request.prompt.split())
    embed = discord.Embed(
        title=title if len(title) <= 256 else title[:255] + "…",
        description=request.prompt if len(title) > 256 else None,
        colour=discord.Colour.blurple(),
    )
    embed.add_field(
        name=tr(locale, "Seed") if len(seeds) == 1 else tr(locale, "Seeds"), value=", ".join(str(s) for s in seeds)
    )
    embed.add_field(name=tr(locale, "Size"), value=str(request.size))
    embed.add_field(name=tr(locale, "Steps"), value=str(request.steps))
    if request.guidance:
        embed.add_field(name=tr(locale, "Guidance"), value=f"{request.guidance:g}")
    if request.source_image is not None and request.strength is not None:
        embed.add_field(name=tr(locale, "Strength"), value=f"{request.strength:g}")
    if request.style is not None:
        embed.add_field(name=tr(locale, "Style"), value=request.style)
    if seconds is not None:
        embed.add_field(name=tr(locale, "Time"), value=format_seconds(seconds))
    if request.negative_prompt:
        embed.add_field(name=tr(locale, "Negative prompt"), value=request.negative_prompt[:1024], inline=False)
    if enhanced_prompt:
        embed.add_field(name=tr(locale, "Enhanced prompt (used)"), value=enhanced_prompt[:1024], inline=False)
    elif enhancement_note:
        embed.add_field(
            name=tr(locale, "Prompt enhancer"),
            value=tr(locale, "Not used: {reason}. The original prompt was drawn.", reason=enhancement_note)[:1024],
            inline=False,
        )
    if notes:
        shown = "\n".join(localise(note, locale) for note in notes)
        embed.add_field(name=tr(locale, "Your picture"), value=shown[:1024], inline=False)
    if first_file:
        embed.set_image(url=f"attachment://{first_file}")
    # The footer is how the bot (and people) find a result's job again: the same in every language.
    embed.set_footer(text=f"Job {job_id} · {model_id}")
    return embed


def info_embed(record, model_id: str, locale: object | None = None) -> discord.Embed:
    """Every parameter of a stored job (a job_store.JobRecord), for the Info button and /info."""
    embed = discord.Embed(
        title=tr(locale, "Job {job_id}", job_id=record.id),
        description=record.prompt[:4000],
        colour=discord.Colour.dark_grey(),
    )
    seeds = record.seeds or [record.seed + i for i in range(record.count)]
    embed.add_field(name=tr(locale, "Seeds"), value=", ".join(str(s) for s in seeds))
    embed.add_field(name=tr(locale, "Size"), value=f"{record.width}x{record.height}")
    embed.add_field(name=tr(locale, "Steps"), value=str(record.steps))
    embed.add_field(name=tr(locale, "Guidance"), value=f"{record.guidance:g}")
    embed.add_field(name=tr(locale, "Images"), value=str(record.count))
    embed.add_field(name=tr(locale, "State"), value=record.state.value)
    if record.negative_prompt:
        embed.add_field(name=tr(locale, "Negative prompt"), value=record.negative_prompt[:1024], inline=False)
    if record.source_image:
        embed.add_field(name=tr(locale, "Strength"), value=f"{record.strength:g}" if record.strength else "?")
        embed.add_field(name=tr(locale, "Input picture (SHA-256)"), value=f"`{(record.source_sha256 or '?')[:16]}`")
    if record.style:
        weight = f" ({record.style_weight:g})" if record.style_weight is not None else ""
        embed.add_field(name=tr(locale, "Style"), value=record.style + weight)
    # The description holds the requester's own prompt; the enhancer's rewrite, or why there is none.
    if record.enhanced_prompt:
        embed.add_field(name=tr(locale, "Enhanced prompt (used)"), value=record.enhanced_prompt[:1024], inline=False)
    elif record.enhancement_note:
        embed.add_field(
            name=tr(locale, "Prompt enhancer"),
            value=tr(locale, "Not used: {reason}.", reason=record.enhancement_note)[:1024],
            inline=False,
        )
    if record.seconds is not None:
        embed.add_field(name=tr(locale, "Time"), value=format_seconds(record.seconds))
    if record.error:
        embed.add_field(name=tr(locale, "What happened"), value=record.error[:1024], inline=False)
    embed.add_field(name=tr(locale, "Requested by"), value=f"<@{record.user_id}>")
    kind = record.kind + (f" of job {record.parent_id}" if record.parent_id else "")
    embed.add_field(name=tr(locale, "Kind"), value=kind)
    embed.set_footer(text=model_id)
    return embed


def _view(*buttons: JobButton) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(button)
    return view


def result_view(job_id: int, count: int = 1, locale: object | None = None) -> discord.ui.View:
    """Reroll, Variations, Info and Delete; then Upscale, Vary and Enhance for one image, or a row of
    U1..Un and one of V1..Vn for several (n is at most 4, so each fits one of Discord's 5-button rows)."""
    buttons = [
        JobButton("reroll", job_id, label=tr(locale, "Reroll"), emoji="🎲", style=discord.ButtonStyle.primary, row=0),
        JobButton("variations", job_id, label=tr(locale, "Variations"), emoji="🔀", row=0),
        JobButton("info", job_id, label=tr(locale, "Info"), emoji="ℹ️", row=0),
        JobButton("delete", job_id, label=tr(locale, "Delete"), emoji="🗑️", style=discord.ButtonStyle.danger, row=0),
    ]
    if count <= 1:
        buttons += [
            JobButton("upscale", job_id, 0, label=tr(locale, "Upscale"), emoji="⬆️", row=1),
            JobButton("vary-subtle", job_id, 0, label=tr(locale, "Vary (Subtle)"), emoji="🌱", row=1),
            JobButton("vary-strong", job_id, 0, label=tr(locale, "Vary (Strong)"), emoji="🌪️", row=1),
            JobButton("enhance", job_id, label=tr(locale, "Enhance"), emoji="✨", row=1),
        ]
    else:
        shown = min(count, ROW_WIDTH)
        buttons += [JobButton("upscale", job_id, i, label=f"U{i + 1}", row=1) for i in range(shown)]
        buttons += [JobButton("vary-strong", job_id, i, label=f"V{i + 1}", row=2) for i in range(shown)]
    return _view(*buttons)


def cancel_view(job_id: int, locale: object | None = None) -> discord.ui.View:
    return _view(JobButton("cancel", job_id, label=tr(locale, "Cancel"), emoji="✖️"))
