"""/imagine and the buttons on its messages: Reroll, Variations, Info, Delete and Cancel."""

from __future__ import annotations

import asyncio
import logging
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.error_tree import answer_privately_from_now_on, report_error
from bot.discord_bot.guild_rules import check_imagine_allowed
from bot.discord_bot.job_messages import JobButton, info_embed
from bot.discord_bot.permissions import may_see_job, no_such_job, require_job_manager
from bot.generation import (
    MAX_COUNT,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    GenerationRequest,
    InvalidRequest,
    random_seed,
    validate_request,
)
from bot.image_size import ImageSize
from bot.jobs.runner import new_record
from bot.jobs.store import JobRecord
from bot.prompt_flags import nearest_size, parse_prompt_flags
from bot.settings import MAX_STEPS
from bot.translations import Text

log = logging.getLogger(__name__)


class Generation(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.runner = bot.runner
        # The size choices come from IMAGE_SIZES, known only at run time: the command is built here.
        self.imagine = _imagine_command(self)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.imagine)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.imagine.name)

    def build_request(
        self,
        prompt: str,
        size: str | None,
        seed: int | None,
        steps: int | None,
        negative_prompt: str | None,
        guidance: float | None,
        count: int | None,
    ) -> GenerationRequest:
        """Options win over flags in the prompt; every value is checked again here, since a
        client can send anything regardless of what was declared to Discord."""
        flags = parse_prompt_flags(prompt)
        sizes = self.settings.image_sizes
        if size is not None:
            try:
                chosen = ImageSize.parse(size)
            except ValueError as error:
                raise InvalidRequest(str(error).capitalize() + ".") from None
        elif flags.aspect is not None:
            chosen = nearest_size(flags.aspect, sizes)
        else:
            chosen = self.settings.default_size
        request = GenerationRequest(
            prompt=flags.prompt,
            size=chosen,
            steps=_first(steps, flags.steps, self.settings.default_steps),
            seed=_first(seed, flags.seed, random_seed()),
            negative_prompt=_first(negative_prompt, flags.negative_prompt, ""),
            guidance=_first(guidance, None, 0.0),
            count=_first(count, None, 1),
        )
        return validate_request(request, max_steps=MAX_STEPS, allowed_sizes=sizes)

    async def enqueue(
        self, interaction: discord.Interaction, request: GenerationRequest, *, kind: str, parent_id: int | None = None
    ) -> None:
        """Record, acknowledge at once, then queue the job. Refusals are private and queue nothing."""
        request = await check_imagine_allowed(interaction, request, self.bot.store, clamp=kind != "imagine")
        self.runner.reserve(interaction.user.id)
        record = new_record(
            request,
            user_id=interaction.user.id,
            user_name=str(interaction.user),
            channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id,
            kind=kind,
            parent_id=parent_id,
            interaction_token=interaction.token,
            token_created_at=time.time(),
            locale=interaction.locale.value,  # later messages (status, result, DMs) speak the requester's language
        )
        record = await self.runner.record(record)
        try:
            callback = await interaction.response.defer(thinking=True)
        except BaseException:
            await self.runner.discard(record)
            raise
        # From here a refusal (shutdown began meanwhile) must not become the public message.
        answer_privately_from_now_on(interaction)
        await self.runner.accept(
            record,
            application_id=interaction.application_id,
            attachment_size_limit=interaction.filesize_limit,
            status_message_id=callback.message_id if callback is not None else None,
        )

    @app_commands.command(name="cancel")
    @app_commands.describe(job="The job number (shown under each image and in /history)")
    async def cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        """Cancel a queued or running job (yours, or any if you are an admin)."""
        await self.cancel_job(interaction, job)

    async def cancel_job(self, interaction: discord.Interaction, job_id: int) -> None:
        record = await self._stored_job(job_id)  # one short read; everything slow comes after the answer
        await require_job_manager(interaction, record, "cancel it")
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await self.runner.cancel(job_id, interaction.user.id)
        await interaction.followup.send(f"Job {job_id}: {outcome}.", ephemeral=True)

    async def _stored_job(self, job_id: int) -> JobRecord:
        record = await asyncio.to_thread(self.bot.store.get, job_id)
        if record is None:
            raise InvalidRequest(
                f"Job {job_id} no longer exists (old jobs are removed after {self.settings.retention_days} days). "
                "Use /imagine to make a new one."
            )
        return record

    # ----- buttons -------------------------------------------------------------------------------

    async def on_button_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)

    async def on_button(self, interaction: discord.Interaction, action: str, job_id: int) -> None:
        if action == "cancel":
            await self.cancel_job(interaction, job_id)
            return
        record = await self._stored_job(job_id)
        if action == "info":
            if not await may_see_job(interaction, record):
                raise InvalidRequest(no_such_job(job_id))
            await interaction.response.send_message(embed=info_embed(record, self.settings.model_id), ephemeral=True)
        elif action in ("reroll", "variations"):
            count = record.count if action == "reroll" else MAX_COUNT
            request = GenerationRequest(
                prompt=record.prompt,
                size=ImageSize(record.width, record.height),
                steps=record.steps,
                seed=random_seed(),
                negative_prompt=record.negative_prompt,
                guidance=record.guidance,
                count=count,
            )
            await self.enqueue(interaction, request, kind=action, parent_id=job_id)
        elif action == "delete":
            await require_job_manager(interaction, record, "delete it")
            await interaction.response.defer(ephemeral=True, thinking=True)
            if interaction.message is not None:
                await interaction.message.delete()
            await interaction.followup.send("🗑️ Deleted.", ephemeral=True)


def _imagine_command(cog: Generation) -> app_commands.Command:
    """/imagine, with the size choices of this bot's IMAGE_SIZES."""
    sizes = [
        app_commands.Choice(name=_size_label(size, index == 0), value=str(size))
        for index, size in enumerate(cog.settings.image_sizes)
    ]

    @app_commands.command(name="imagine")
    @app_commands.describe(
        prompt="What to draw. Flags work too: --ar 16:9 --seed 42 --no text --steps 8",
        size="Width x height in pixels",
        seed="Same prompt, size, steps and seed give the same picture",
        steps="More steps: slower, sometimes finer",
        negative_prompt="What to avoid (only used when guidance is above 0)",
        guidance="Prompt adherence; Turbo is made for 0",
        count="How many pictures (1-4)",
    )
    @app_commands.choices(size=sizes)
    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        size: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
    ) -> None:
        """Make a picture from a text prompt."""
        request = cog.build_request(prompt, size, seed, steps, negative_prompt, guidance, count)
        await cog.enqueue(interaction, request, kind="imagine")

    return imagine


def _first(*values):
    return next((value for value in values if value is not None), None)


def _size_label(size: ImageSize, default: bool) -> app_commands.locale_str:
    """The choice's English name, carrying its Text for the translator (one whole label a case, so that
    each language words it its own way)."""
    shown = str(size)
    if size.width == size.height:
        label = Text("{size} (square, default)", size=shown) if default else Text("{size} (square)", size=shown)
    elif size.width > size.height:
        label = Text("{size} (landscape, default)", size=shown) if default else Text("{size} (landscape)", size=shown)
    else:
        label = Text("{size} (portrait, default)", size=shown) if default else Text("{size} (portrait)", size=shown)
    return app_commands.locale_str(label.render(None), text=label)


async def setup(bot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(Generation(bot))
