"""/imagine, the "Imagine from image" context menu, and the buttons on results: Reroll, Variations,
Info, Delete, Cancel, Upscale, Vary, Enhance and the per-image U1..Un / V1..Vn."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import replace
from pathlib import Path

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.discord_bot.error_tree import NotAllowed, answer_privately_from_now_on, report_error
from bot.discord_bot.guild_rules import check_imagine_allowed
from bot.discord_bot.job_messages import JobButton, info_embed
from bot.discord_bot.permissions import may_see_job, no_such_job, require_job_manager
from bot.generation import (
    DEFAULT_STRENGTH,
    MAX_COUNT,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_STRENGTH,
    UPSCALE_STRENGTH,
    VARY_STRONG_STRENGTH,
    VARY_SUBTLE_STRENGTH,
    GenerationRequest,
    InvalidRequest,
    image_to_image,
    random_seed,
    validate_request,
)
from bot.guild_settings import EnhanceDefault
from bot.image_input import (
    MAX_INPUT_BYTES,
    PreparedImage,
    SavedInput,
    check_byte_size,
    prepare_image,
    save_input,
    source_of_file,
    upscale_size,
)
from bot.image_size import ImageSize
from bot.jobs.runner import new_record, record_to_request
from bot.jobs.store import JobRecord, JobState
from bot.prompt_flags import nearest_size, parse_prompt_flags
from bot.settings import MAX_STEPS
from bot.translations import Text, tr

# A download from Discord's CDN that takes longer than this is given up (the user is told to try again).
DOWNLOAD_TIMEOUT = 30.0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")
# What each image button redraws: (strength, keeps the image's seed). Upscale keeps it, so the enlarged
# picture keeps its grain; Vary takes a new one, which is what makes it a variation.
IMAGE_BUTTONS = {
    "upscale": (UPSCALE_STRENGTH, True),
    "vary-subtle": (VARY_SUBTLE_STRENGTH, False),
    "vary-strong": (VARY_STRONG_STRENGTH, False),
}

log = logging.getLogger(__name__)


class Generation(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.runner = bot.runner
        # The size choices come from IMAGE_SIZES, known only at run time: the command is built here.
        self.imagine = _imagine_command(self)
        self.imagine_from_image = app_commands.ContextMenu(name="Imagine from image", callback=self._from_message)
        # One member's requests in one server are admitted one at a time: two sent together must not
        # both pass the daily limit before either is recorded. A lock lives while someone holds it.
        self._admission: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.imagine)
        self.bot.tree.add_command(self.imagine_from_image)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.imagine.name)
        self.bot.tree.remove_command(self.imagine_from_image.name, type=discord.AppCommandType.message)

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

    async def imagine_job(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        image: discord.Attachment | None,
        strength: float | None,
        style: str | None,
        enhance: bool | None,
        size_given: bool,
    ) -> None:
        """/imagine (and the context menu) after the text options are checked: style, strength, enhancer,
        then the job, from a picture when one is attached."""
        locale = interaction.locale
        if style is not None:
            names = [lora.name for lora in self.settings.loras]
            if style not in names:
                offered = ", ".join(names) or tr(locale, "none are set up on this bot")
                raise InvalidRequest(
                    tr(locale, "Style {style} is not offered; choose one of: {offered}.", style=style, offered=offered)
                )
        if strength is not None and image is None:
            raise InvalidRequest(
                tr(
                    locale,
                    "Strength only applies when you start from a picture: attach one, or leave strength out.",
                )
            )
        if strength is not None and not MIN_STRENGTH <= strength <= MAX_STRENGTH:
            raise InvalidRequest(
                tr(
                    locale,
                    "Strength must be from {low} (keep the picture) to {high} (redraw it all); got {value}.",
                    low=f"{MIN_STRENGTH:g}",
                    high=f"{MAX_STRENGTH:g}",
                    value=f"{strength:g}",
                )
            )
        request = replace(request, style=style, enhance=await self.resolve_enhance(interaction, enhance))
        if image is None:
            await self.enqueue(interaction, request, kind="imagine")
            return
        request = replace(
            request,
            strength=strength if strength is not None else DEFAULT_STRENGTH,
            count=1 if False else request.count,
        )
        await self.enqueue_with_image(interaction, request, image, size_given=size_given)

    async def enqueue(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        kind: str,
        parent_id: int | None = None,
        deferred: discord.InteractionCallbackResponse | None = None,
        notes: tuple[Text, ...] = (),
    ) -> None:
        """Record, acknowledge at once, then queue the job. Refusals are private and queue nothing.

        `deferred`: the interaction was already acknowledged (publicly, with answer_privately_from_now_on)
        because a picture had to be downloaded first; the job is recorded and queued now."""
        key = (interaction.guild_id, interaction.user.id)
        admission = self._admission.setdefault(key, asyncio.Lock())
        async with admission:
            request = await check_imagine_allowed(
                interaction, request, self.bot.store, clamp=kind not in ("imagine", "image")
            )
            self.runner.reserve(interaction.user.id)
            record = new_record(
                request,
                user_id=interaction.user.id,
                channel_id=interaction.channel_id or 0,
                guild_id=interaction.guild_id,
                kind=kind,
                parent_id=parent_id,
                interaction_token=interaction.token,
                token_created_at=time.time(),
                locale=interaction.locale.value,  # later messages (status, result, DMs) speak the requester's language
            )
            record = await self.runner.record(record)
        callback = deferred
        if callback is None:
            try:
                callback = await interaction.response.defer(thinking=True)
            except BaseException:
                await self.runner.discard(record)
                raise
            # From here a refusal (shutdown began meanwhile) must not become the public message.
            answer_privately_from_now_on(interaction)
        job = await self.runner.accept(
            record,
            application_id=interaction.application_id,
            attachment_size_limit=interaction.filesize_limit,
            status_message_id=callback.message_id if callback is not None else None,
        )
        job.notes = notes  # set before any await: the first status edit is only scheduled so far

    # ----- pictures in, enhancer ---------------------------------------------------------------

    async def enqueue_with_image(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        attachment: discord.Attachment,
        *,
        size_given: bool,
    ) -> None:
        """`request` redrawn from the attachment: cheap checks first (answered at once, privately), then a
        public deferral, the download and the preparation (in a thread), then the job is recorded and queued."""
        locale = interaction.locale
        check_byte_size(attachment.size, MAX_INPUT_BYTES)
        await check_imagine_allowed(interaction, request, self.bot.store)
        self.runner.queue.check_admission(interaction.user.id)
        callback = await interaction.response.defer(thinking=True)
        answer_privately_from_now_on(interaction)
        data = await _download(attachment, locale)
        prepared, saved = await asyncio.to_thread(
            _prepare_and_save,
            data,
            self.settings.image_sizes,
            request.size if size_given else None,
            self.settings.output_dir,
        )
        request = replace(request, size=prepared.size, source_image=str(saved.path), source_sha256=saved.sha256)
        request = validate_request(request, max_steps=MAX_STEPS)
        await self.enqueue(interaction, request, kind="image", deferred=callback, notes=prepared.notes)

    async def resolve_enhance(self, interaction: discord.Interaction, asked: bool | None) -> bool:
        """Whether this job's prompt is enhanced: the member's choice, else the server's default; refused
        where the server forbids it or the bot's enhancer is off."""
        default = EnhanceDefault.OFF
        if interaction.guild_id is not None:
            guild = await asyncio.to_thread(self.bot.store.guild_settings, interaction.guild_id)
            default = guild.enhance_default
        locale = interaction.locale
        if asked and default is EnhanceDefault.FORBIDDEN:
            raise NotAllowed(
                tr(locale, "This server does not allow the prompt enhancer. Leave enhance out and try again.")
            )
        wanted = asked if asked is not None else default is EnhanceDefault.ON
        problem = self.enhancer_problem()
        if wanted and problem is not None:
            if asked:  # asked for by name: say why it cannot be had, rather than quietly drawing without it
                raise InvalidRequest(
                    tr(
                        locale,
                        "The prompt enhancer is not available on this bot ({reason}). Leave enhance out.",
                        reason=problem,
                    )
                )
            return False
        return wanted

    def enhancer_problem(self) -> Text | str | None:
        """Why the prompt enhancer cannot run here, or None when it can."""
        if not self.settings.enhancer:
            return "ENHANCER=off"
        status = getattr(self.bot.service, "enhancer_status", "on")  # no local service with WORKERS=ray
        if status == "on":
            return None
        # The self-test's reason is a Text: shown in the reader's language, the English as `status`.
        problem = getattr(self.bot.service, "enhancer_problem", None)
        return Text("off: {reason}", reason=problem) if isinstance(problem, Text) else status

    @app_commands.command(name="cancel")
    @app_commands.describe(job=locale_str("The job number (shown under each image and in /history)"))
    async def cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        """Cancel a queued or running job (yours, or any if you are an admin)."""
        await self.cancel_job(interaction, job)

    async def cancel_job(self, interaction: discord.Interaction, job_id: int) -> None:
        record = await self._stored_job(
            job_id, interaction.locale
        )  # one short read; everything slow comes after the answer
        await require_job_manager(interaction, record, "cancel it")
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await self.runner.cancel(job_id, interaction.user.id)
        await interaction.followup.send(
            tr(interaction.locale, "Job {job_id}: {outcome}.", job_id=job_id, outcome=outcome), ephemeral=True
        )

    async def _stored_job(self, job_id: int, locale: object | None = None) -> JobRecord:
        record = await asyncio.to_thread(self.bot.store.get, job_id)
        if record is None:
            raise InvalidRequest(
                tr(
                    locale,
                    "Job {job_id} no longer exists (old jobs are removed after {days} days). "
                    "Use /imagine to make a new one.",
                    job_id=job_id,
                    days=self.settings.retention_days,
                )
            )
        return record

    # ----- buttons -------------------------------------------------------------------------------

    async def on_button_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)

    async def on_button(self, interaction: discord.Interaction, action: str, job_id: int, index: int = 0) -> None:
        if action == "cancel":
            await self.cancel_job(interaction, job_id)
            return
        record = await self._stored_job(job_id, interaction.locale)
        if action == "info":
            if not await may_see_job(interaction, record):
                raise InvalidRequest(no_such_job(job_id))
            await interaction.response.send_message(
                embed=info_embed(record, self.settings.model_id, interaction.locale), ephemeral=True
            )
        elif action in ("reroll", "variations"):
            count = record.count if action == "reroll" else MAX_COUNT
            # The same job with new seeds: from the same picture and in the same style, if it had them.
            request = replace(record_to_request(record), seed=random_seed(), count=count)
            if request.source_image is not None:
                await self._check_source(interaction, record.id, request.source_image)
            if request.enhance:
                request = replace(request, enhance=await self._still_enhances(interaction))
            await self.enqueue(interaction, request, kind=action, parent_id=job_id)
        elif action in IMAGE_BUTTONS:
            await self.redraw_image(interaction, record, action, index)
        elif action == "enhance":
            await self.enhance_again(interaction, record)
        elif action == "delete":
            await require_job_manager(interaction, record, "delete it")
            await interaction.response.defer(ephemeral=True, thinking=True)
            if interaction.message is not None:
                await interaction.message.delete()
            await interaction.followup.send(tr(interaction.locale, "🗑️ Deleted."), ephemeral=True)

    async def redraw_image(self, interaction: discord.Interaction, record: JobRecord, action: str, index: int) -> None:
        """Upscale or Vary one image of a result: image-to-image from its saved PNG, through the same queue."""
        locale = interaction.locale
        if record.state is not JobState.DELIVERED and record.state is not JobState.DONE:
            raise InvalidRequest(tr(locale, "Job {job_id} has no finished pictures to start from.", job_id=record.id))
        if not 0 <= index < len(record.output_files):
            raise InvalidRequest(
                tr(locale, "Job {job_id} has no picture number {number}.", job_id=record.id, number=index + 1)
            )
        source = await self._check_source(interaction, record.id, record.output_files[index])
        strength, keep_seed = IMAGE_BUTTONS[action]
        # The prompt that made the picture (the enhanced one, if it was), not enhanced again.
        base = replace(record_to_request(record), prompt=record.enhanced_prompt or record.prompt, enhance=False)
        seed = record.seeds[index] if keep_seed and index < len(record.seeds) else random_seed()
        size = upscale_size(base.size) if action == "upscale" else base.size
        request = replace(
            image_to_image(base, str(source.path), source.sha256, strength=strength, size=size), seed=seed
        )
        await self.enqueue(interaction, request, kind=action, parent_id=record.id)

    async def enhance_again(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """The Enhance button: the requester's own prompt, rewritten, drawn again with the same seed, so
        the difference in the picture is the prompt's alone."""
        await self.resolve_enhance(interaction, True)
        request = replace(record_to_request(record), enhance=True)
        if request.source_image is not None:
            await self._check_source(interaction, record.id, request.source_image)
        await self.enqueue(interaction, request, kind="enhance", parent_id=record.id)

    async def _check_source(self, interaction: discord.Interaction, job_id: int | None, path: str) -> SavedInput:
        """A job's picture, to start a new job from; refused clearly when retention removed it."""
        try:
            return await asyncio.to_thread(source_of_file, Path(path))
        except InvalidRequest:
            raise InvalidRequest(
                tr(
                    interaction.locale,
                    "The pictures of job {job_id} were removed (old results are deleted after a while). "
                    "Use /imagine to make a new one.",
                    job_id=job_id,
                )
            ) from None

    async def _still_enhances(self, interaction: discord.Interaction) -> bool:
        """Reroll and Variations of an enhanced job enhance again, unless the server forbids it now or the
        enhancer is off: then they draw the original prompt rather than refuse a button that did not ask."""
        try:
            return await self.resolve_enhance(interaction, True)
        except (NotAllowed, InvalidRequest):
            return False

    # ----- the "Imagine from image" context menu -----------------------------------------------

    async def _from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Make a picture starting from this message's picture."""
        attachment = first_image(message)
        if attachment is None:
            raise InvalidRequest(
                tr(
                    interaction.locale,
                    "That message has no picture. Use this on a message with a PNG, JPEG, WebP or GIF attached.",
                )
            )
        check_byte_size(attachment.size, MAX_INPUT_BYTES)
        await interaction.response.send_modal(ImagineModal(self, attachment, interaction.locale))


def _imagine_command(cog: Generation) -> app_commands.Command:
    """/imagine, with the size choices of this bot's IMAGE_SIZES."""
    sizes = [
        app_commands.Choice(name=_size_label(size, index == 0), value=str(size))
        for index, size in enumerate(cog.settings.image_sizes)
    ]
    styles = [app_commands.Choice(name=lora.name, value=lora.name) for lora in cog.settings.loras]

    describe = app_commands.describe(
        prompt=locale_str("What to draw. Flags work too: --ar 16:9 --seed 42 --no text --steps 8"),
        size=locale_str("Width x height in pixels"),
        seed=locale_str("Same prompt, size, steps and seed give the same picture"),
        steps=locale_str("More steps: slower, sometimes finer"),
        negative_prompt=locale_str("What to avoid (only used when guidance is above 0)"),
        guidance=locale_str("Prompt adherence; Turbo is made for 0"),
        count=locale_str("How many pictures (1-4)"),
        image=locale_str("A picture to start from (PNG, JPEG, WebP or GIF, at most 25 MB)"),
        strength=locale_str(
            "With a picture: how much of it is redrawn, 0.05 (keep it) to 1 (redraw it all); 0.6 if not given"
        ),
        enhance=locale_str("Let the bot rewrite your prompt in more detail before drawing"),
    )

    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        size: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        enhance: bool | None = None,
    ) -> None:
        """Make a picture from a text prompt."""
        await imagine_with_style(
            interaction, prompt, size, seed, steps, negative_prompt, guidance, count, image, strength, enhance
        )

    async def imagine_with_style(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        size: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        enhance: bool | None = None,
        style: str | None = None,
    ) -> None:
        """Make a picture from a text prompt."""
        await cog.imagine_job(
            interaction,
            cog.build_request(prompt, size, seed, steps, negative_prompt, guidance, count),
            image=image,
            strength=strength,
            style=style,
            enhance=enhance,
            size_given=size is not None or parse_prompt_flags(prompt).aspect is not None,
        )

    # `style` only when LORAS is set (CONTRACT.md): without styles the command has no such option at all.
    if styles:
        styled = app_commands.describe(style=locale_str("A style (LoRA) set up on this bot"))(
            describe(imagine_with_style)
        )
        return app_commands.command(name="imagine")(app_commands.choices(size=sizes, style=styles)(styled))
    return app_commands.command(name="imagine")(app_commands.choices(size=sizes)(describe(imagine)))


class ImagineModal(discord.ui.Modal):
    """ "Imagine from image": the prompt and the strength, then the same job as /imagine image:."""

    def __init__(self, cog: Generation, attachment: discord.Attachment, locale: object | None) -> None:
        super().__init__(title=tr(locale, "Imagine from image"), timeout=15 * 60)
        self.cog = cog
        self.attachment = attachment
        self.prompt: discord.ui.TextInput = discord.ui.TextInput(
            label=tr(locale, "Prompt"),
            style=discord.TextStyle.paragraph,
            custom_id="prompt",
            max_length=MAX_PROMPT_CHARS,
            placeholder=tr(locale, "What to make of the picture. Flags work too: --seed 42"),
        )
        self.strength: discord.ui.TextInput = discord.ui.TextInput(
            label=tr(locale, "Strength (0.05 to 1)"),
            custom_id="strength",
            required=False,
            max_length=6,
            placeholder=tr(
                locale, "{default}: 0.05 keeps the picture, 1 redraws it all", default=f"{DEFAULT_STRENGTH:g}"
            ),
        )
        self.add_item(self.prompt)
        self.add_item(self.strength)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = self.strength.value.strip().replace(",", ".")
        strength = None
        if text:
            try:
                strength = float(text)
            except ValueError:
                raise InvalidRequest(
                    tr(
                        interaction.locale,
                        "Strength must be a number from {low} to {high}, like 0.6 (got {value}).",
                        low=f"{MIN_STRENGTH:g}",
                        high=f"{MAX_STRENGTH:g}",
                        value=text[:20],
                    )
                ) from None
        request = self.cog.build_request(self.prompt.value, None, None, None, None, None, None)
        await self.cog.imagine_job(
            interaction,
            request,
            image=self.attachment,
            strength=strength,
            style=None,
            enhance=None,
            size_given=parse_prompt_flags(self.prompt.value).aspect is not None,
        )

    # Modal.on_error takes no item (discord.py types it as the base View's, which does).
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report_error(interaction, error)


def first_image(message: discord.Message) -> discord.Attachment | None:
    """The message's first attachment that is a picture (by its type, or its name when Discord gives none)."""
    for attachment in message.attachments:
        content_type = attachment.content_type or ""
        if content_type.startswith("image/") or (
            not content_type and attachment.filename.lower().endswith(IMAGE_EXTENSIONS)
        ):
            return attachment
    return None


async def _download(attachment: discord.Attachment, locale: object | None) -> bytes:
    """The attachment's bytes from the URL Discord gave (through discord.py), within DOWNLOAD_TIMEOUT."""
    try:
        return await asyncio.wait_for(attachment.read(), DOWNLOAD_TIMEOUT)
    except asyncio.TimeoutError:
        raise InvalidRequest(
            tr(locale, "Downloading your picture from Discord took too long; try again in a moment.")
        ) from None
    except (discord.HTTPException, OSError) as error:
        log.warning("downloading attachment %s failed: %s", attachment.id, error)
        raise InvalidRequest(
            tr(locale, "Your picture could not be downloaded from Discord; send it again and retry.")
        ) from None


def _prepare_and_save(
    data: bytes, sizes: tuple[ImageSize, ...], size: ImageSize | None, output_dir: Path
) -> tuple[PreparedImage, SavedInput]:
    """Decode, fit and save an input picture (blocking: run in a thread)."""
    prepared = prepare_image(data, sizes=sizes, size=size)
    return prepared, save_input(prepared.image, output_dir)


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
