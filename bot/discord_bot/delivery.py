"""Showing jobs in Discord: throttled status edits, and delivery that survives an expired token.

A job's status and result live in the message its interaction created, edited through the
interaction's webhook token. That token dies after 15 minutes (and may be gone after a restart), so
later the same message, whose id is stored with the job, is edited with the bot token instead. Only
when that message cannot be edited is the result posted to the channel (mentioning only the
requester, with a nonce so a retry after a crash cannot post it twice), and when the channel refuses
it for good (no access, channel gone), sent to the requester directly.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import discord

from bot.discord_bot.job_messages import (
    cancel_view,
    quote,
    requester_locale,
    result_embed,
    result_view,
    status_text,
)
from bot.guild_settings import GuildSettings, NsfwPolicy
from bot.image_files import files_for_upload
from bot.jobs.health import TaskHealth
from bot.jobs.runner import ActiveJob, OutputFile, Undeliverable
from bot.jobs.store import JobState
from bot.moderation import ImageAction, image_actions, mentions_minors
from bot.translations import Text, localise, tr

log = logging.getLogger(__name__)

# Discord rate-limits edits of one message at about 5 per 5 s; stay well under it.
MIN_EDIT_INTERVAL = 1.5
# Stop using the interaction token a little before its 15 minutes are up.
TOKEN_LIFETIME = 14 * 60
# Error codes that mean "this interaction token can no longer be used".
DEAD_TOKEN_CODES = {50027, 10015, 10062, 10008}
ORIGINAL = "@original"
REMEMBERED_FINAL = 4096  # the interaction's own message, for a job whose message id is not known


@dataclass
class _LiveMessage:
    """Per-job edit state: at most one edit in flight, the latest state wins."""

    dirty: bool = False
    finished: bool = False
    last_edit: float = 0.0
    task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordJobPresenter:
    def __init__(
        self,
        bot: discord.Client,
        *,
        model_id: str,
        paused: Callable[[], bool],
        health: TaskHealth | None = None,
        guild_settings: Callable[[int], GuildSettings] = GuildSettings,
    ) -> None:
        self.bot = bot
        self.model_id = model_id
        self._paused = paused
        self.health = health or TaskHealth()
        self._guild_settings = guild_settings  # blocking (the job store): called in a thread
        self._live: dict[int, _LiveMessage] = {}
        # Jobs whose message holds its final text: a late update must never show them again. Late
        # updates come within seconds, so the most recent few thousand are enough to remember.
        self._final: OrderedDict[int, None] = OrderedDict()
        self._notices: dict[int, asyncio.Task] = {}  # "the bot restarted" edits still in flight

    # ----- live status -----------------------------------------------------------------------

    def show(self, job: ActiveJob) -> None:
        if job.job_id in self._final or not self._token_usable(job):
            return
        live = self._live.setdefault(job.job_id, _LiveMessage())
        live.dirty = True
        if live.task is None or live.task.done():
            live.task = self.health.spawn(self._edit_loop(job, live), name=f"status-{job.job_id}")

    async def _edit_loop(self, job: ActiveJob, live: _LiveMessage) -> None:
        while live.dirty and not live.finished:
            wait = live.last_edit + MIN_EDIT_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if live.finished:
                return
            live.dirty = False
            webhook = self._token_webhook(job)
            if webhook is None:
                return  # the token just aged out: the result goes out with the bot token later
            async with live.lock:
                if live.finished:
                    return
                live.last_edit = time.monotonic()
                try:
                    await webhook.edit_message(
                        _own_id(job),
                        content=status_text(job, self._paused()),
                        view=cancel_view(job.job_id),
                        embeds=[],
                        attachments=[],
                    )
                except discord.HTTPException as error:
                    log.debug("status edit of job %d failed: %s", job.job_id, error)
                    if _token_dead(error):
                        return

    async def _finish_live(self, job: ActiveJob) -> None:
        """No status edit may land after the final message, so wait for the one in flight."""
        self._final[job.job_id] = None
        if len(self._final) > REMEMBERED_FINAL:
            self._final.popitem(last=False)
        live = self._live.pop(job.job_id, None)
        if live is None:
            return
        live.finished = True
        async with live.lock:
            pass

    # ----- final messages ----------------------------------------------------------------------

    async def conclude(self, job: ActiveJob, text: Text | str) -> None:
        text = localise(text, job.record.locale)  # the requester's language, long after the interaction
        await self._finish_live(job)
        await self._after_notice(job)
        if await self._edit_own(job, content=text, view=None, embeds=[], attachments=[]):
            return
        if job.resumed or job.record.state in (JobState.FAILED, JobState.CANCELLED):
            await self._channel(job).send(f"<@{job.user_id}> {text}", allowed_mentions=_only(job.user_id))

    async def deliver(self, job: ActiveJob, files: list[OutputFile]) -> int | None:
        await self._finish_live(job)
        await self._after_notice(job)
        shown, note = await self.apply_channel_policy(job, files)
        uploads, as_jpeg = await asyncio.to_thread(
            files_for_upload, [file.path for file, _ in shown], job.attachment_size_limit
        )
        spoilers = [spoiler for _, spoiler in shown]
        uploads = [
            ("SPOILER_" + name if spoiler else name, data)
            for (name, data), spoiler in zip(uploads, spoilers, strict=True)
        ]
        locale = job.record.locale
        kept_png = tr(locale, "The full-size PNG is kept on the server.") if as_jpeg else None
        notes = "\n".join(filter(None, [note, kept_png]))
        kept = f"\n{notes}" if notes else ""
        record = job.record
        embed = result_embed(
            job.request,
            [f.seed for f in files],
            record.seconds,
            job.job_id,
            self.model_id,
            # An embed's image shows unblurred, so a spoilered first image stays an attachment.
            uploads[0][0] if uploads and not spoilers[0] else None,
            enhanced_prompt=record.enhanced_prompt,
            enhancement_note=record.enhancement_note,
            notes=job.notes,
            locale=requester_locale(job),
        )
        if job.resumed and record.delivery_attempts > 1 and await self._already_shown(job):
            log.info("job %d: its result is already in its message; not posting it again", job.job_id)
            return None
        # After a restart the result goes out with the bot token, mentioning the requester (CONTRACT.md).
        webhook = self._token_webhook(job) if not job.resumed else None
        if webhook is not None:
            try:
                await webhook.edit_message(
                    _own_id(job),
                    content=notes or None,
                    embed=embed,
                    attachments=_files(uploads),
                    view=result_view(job.job_id, job.request.count, requester_locale(job)),
                )
                return None
            except discord.HTTPException as error:
                if not _token_dead(error):
                    raise
                log.info("job %d: interaction token no longer valid (%s); using the bot token", job.job_id, error.code)
        reason = (
            Text("the bot restarted")
            if job.resumed
            else Text("the request took longer than Discord allows for replies")
        )
        if record.status_message_id is not None:
            try:
                await (
                    self._channel(job)
                    .get_partial_message(record.status_message_id)
                    .edit(
                        content=tr(locale, "<@{user}> here is your image ({reason}).", user=job.user_id, reason=reason)
                        + kept,
                        embed=embed,
                        attachments=_files(uploads),
                        view=result_view(job.job_id, job.request.count, requester_locale(job)),
                        allowed_mentions=_only(job.user_id),
                    )
                )
                return None
            except discord.HTTPException as error:
                if not _permanent(error):
                    raise
                log.info("job %d: its message cannot be edited (%s); posting to the channel", job.job_id, error)
        try:
            message = await self._channel(job).send(
                tr(
                    locale,
                    "<@{user}> here is your image (posted here because {reason}).",
                    user=job.user_id,
                    reason=reason,
                )
                + kept,
                embed=embed,
                files=_files(uploads),
                view=result_view(job.job_id, job.request.count, requester_locale(job)),
                allowed_mentions=_only(job.user_id),
                nonce=f"zimage-job-{job.job_id}"[:25],  # Discord refuses a second message with this nonce
            )
            return message.id
        except discord.HTTPException as error:
            if not _permanent(error):
                raise
            refused = error
        log.warning("job %d: the channel refuses the result (%s); sending it to the requester", job.job_id, refused)
        return await self._send_directly(job, uploads, embed, refused)

    async def _send_directly(
        self, job: ActiveJob, uploads: list[tuple[str, bytes]], embed: discord.Embed, refused: discord.HTTPException
    ) -> int:
        """The channel refused the result for good: a direct message to the requester is the last way."""
        why = _describe(refused)
        try:
            channel = await self.bot.create_dm(discord.Object(job.user_id))
            message = await channel.send(
                tr(
                    job.record.locale,
                    "Job {job}: your image could not be posted in <#{channel}> ({why}), so here it is.",
                    job=job.job_id,
                    channel=job.record.channel_id,
                    why=why,
                ),
                embed=embed,
                files=_files(uploads),
                view=result_view(job.job_id, job.request.count, requester_locale(job)),
            )
        except discord.HTTPException as error:
            if not _permanent(error):
                raise
            raise Undeliverable(
                f"the channel refused it ({why}) and so did a direct message to the requester ({_describe(error)})"
            ) from error
        return message.id

    async def apply_channel_policy(
        self, job: ActiveJob, files: list[OutputFile]
    ) -> tuple[list[tuple[OutputFile, bool]], str | None]:
        """The files to post, each with whether it goes as a spoiler, and the note that says what was
        withheld or spoilered. The flags come from the stored job, so a job delivered after a restart
        is treated the same; withheld files stay saved under OUTPUT_DIR."""
        flags = list(job.record.flagged)[: len(files)]
        flags += [False] * (len(files) - len(flags))  # jobs made before the safety check existed
        if not any(flags):
            return [(file, False) for file in files], None
        guild_id = job.record.guild_id
        policy = (await asyncio.to_thread(self._guild_settings, guild_id)).nsfw_policy if guild_id else NsfwPolicy.BLOCK
        actions = image_actions(
            flags,
            age_restricted=await self._age_restricted(job),
            policy=policy,
            prompt_mentions_minors=mentions_minors(job.request.prompt),
        )
        shown = [
            (file, action is ImageAction.SPOILER)
            for file, action in zip(files, actions, strict=True)
            if action in (ImageAction.POST, ImageAction.SPOILER)
        ]
        log.info("job %d: policy %s, images %s", job.job_id, policy.value, [action.value for action in actions])
        return shown, withheld_note(actions, job.record.locale)

    async def _age_restricted(self, job: ActiveJob) -> bool:
        """Whether the job's channel is marked NSFW (a thread: its parent). DMs are not; a channel the bot
        cannot look up counts as not age-restricted, so flagged images are withheld rather than shown."""
        if job.record.guild_id is None:
            return False
        channel = self.bot.get_channel(job.record.channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(job.record.channel_id)
            except discord.HTTPException as error:
                log.warning("job %d: cannot look up channel %d: %s", job.job_id, job.record.channel_id, error)
                return False
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw()) if is_nsfw is not None else False

    def resumed(self, job: ActiveJob) -> None:
        """Tell the requester, in the job's own message, that the job survived the restart (in the
        background: a start does not wait for these edits, but the job's final message waits for its notice)."""
        if job.record.status_message_id is None and self._token_webhook(job) is None:
            return
        self._notices[job.job_id] = self.health.spawn(
            self._edit_quietly(
                job,
                content=tr(
                    job.record.locale,
                    "🔄 Job {job}: the bot restarted; your job is saved and queued again. "
                    "The result will be posted here.",
                    job=job.job_id,
                )
                + f"\n{quote(job.request.prompt)}",
                view=cancel_view(job.job_id),
            ),
            name=f"restart-notice-{job.job_id}",
        )

    async def _after_notice(self, job: ActiveJob) -> None:
        notice = self._notices.pop(job.job_id, None)
        if notice is not None:
            await asyncio.wait([notice])  # its own failure is logged; the final message goes out regardless

    async def _edit_quietly(self, job: ActiveJob, **changes) -> None:
        try:
            await self._edit_own(job, **changes)
        except Exception as error:  # best effort: the result itself is delivered regardless
            log.warning("could not update the message of job %d: %s", job.job_id, error)

    async def _edit_own(self, job: ActiveJob, **changes) -> bool:
        """Edit the job's own message: through the interaction token while it lives, else with the bot
        token by its stored id. False when neither can reach it; raises on a passing failure."""
        webhook = self._token_webhook(job)
        if webhook is not None:
            try:
                await webhook.edit_message(_own_id(job), **changes)
                return True
            except discord.HTTPException as error:
                if not _token_dead(error):
                    raise
        if job.record.status_message_id is None:
            return False
        try:
            await self._channel(job).get_partial_message(job.record.status_message_id).edit(**changes)
            return True
        except discord.HTTPException as error:
            if _permanent(error):
                log.info("job %d: its message cannot be edited with the bot token: %s", job.job_id, error)
                return False
            raise

    async def _already_shown(self, job: ActiveJob) -> bool:
        """Whether an attempt before the restart put the result into the job's own message."""
        message: discord.Message
        try:
            webhook = self._token_webhook(job)
            if webhook is not None:
                message = await webhook.fetch_message(_own_id(job))
            elif job.record.status_message_id is not None:
                message = await self._channel(job).fetch_message(job.record.status_message_id)
            else:
                return False
        except discord.HTTPException:
            return False
        return bool(message.attachments) and any(
            (embed.footer.text or "").startswith(f"Job {job.job_id} ") for embed in message.embeds
        )

    # ----- plumbing ----------------------------------------------------------------------------

    def _token_usable(self, job: ActiveJob) -> bool:
        """Whether live status edits may go through the interaction token (jobs of this process only)."""
        return (
            not job.resumed
            and job.record.interaction_token is not None
            and job.application_id is not None
            and job.token_age < TOKEN_LIFETIME
        )

    def _token_webhook(self, job: ActiveJob) -> discord.Webhook | None:
        """The interaction webhook while its token is still young (also for a job from before a restart)."""
        application_id = job.application_id or self.bot.application_id
        if job.record.interaction_token is None or application_id is None or job.token_age >= TOKEN_LIFETIME:
            return None
        return discord.Webhook.partial(application_id, job.record.interaction_token, client=self.bot)

    def _channel(self, job: ActiveJob) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(job.record.channel_id, guild_id=job.record.guild_id)


def _own_id(job: ActiveJob) -> int:
    """The job's own message id; "@original" (which the webhook API also takes) only for a job whose
    acknowledgement never told the bot the id, e.g. when it crashed right then."""
    return job.record.status_message_id or cast(int, ORIGINAL)


def _token_dead(error: discord.HTTPException) -> bool:
    return error.status == 401 or error.code in DEAD_TOKEN_CODES


def _permanent(error: discord.HTTPException) -> bool:
    """Missing access or permissions (403: 50001, 50013, 50007), an unknown channel or message (404:
    10003, 10008): trying again cannot help. 5xx, 429 and network failures pass and are retried."""
    return error.status in (403, 404)


def _describe(error: discord.HTTPException) -> str:
    return f"{error.status} {error.text or error.response.reason}".strip()


def _only(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)])


def _files(uploads: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in uploads]


def withheld_note(actions: list[ImageAction], locale: object | None = None) -> str | None:
    """What the job's message says about flagged images, in `locale`, or None when every image is posted
    as it is. Whole sentences for one image and for several, so that each language words them its own way."""
    total = len(actions)
    notes = []
    withheld = actions.count(ImageAction.WITHHOLD)
    if withheld:
        notes.append(
            tr(locale, "🔞 The image was withheld: the safety check flagged it. An age-restricted channel shows it.")
            if total == 1
            else tr(
                locale,
                "🔞 {count} of {total} images were withheld: the safety check flagged them. "
                "An age-restricted channel shows them.",
                count=withheld,
                total=total,
            )
        )
    never = actions.count(ImageAction.NEVER)
    if never:
        notes.append(
            tr(
                locale,
                "🚫 The image was withheld and will not be posted anywhere: the safety check flagged it "
                "and the prompt mentions minors.",
            )
            if total == 1
            else tr(
                locale,
                "🚫 {count} of {total} images were withheld and will not be posted anywhere: the safety check "
                "flagged them and the prompt mentions minors.",
                count=never,
                total=total,
            )
        )
    spoilered = actions.count(ImageAction.SPOILER)
    if spoilered:
        notes.append(
            tr(
                locale,
                "⚠️ Content note: the safety check flagged this image as possibly NSFW; it is shown as a spoiler.",
            )
            if total == 1
            else tr(
                locale,
                "⚠️ Content note: the safety check flagged {count} of {total} images as possibly NSFW; "
                "they are shown as spoilers.",
                count=spoilered,
                total=total,
            )
        )
    return "\n".join(notes) or None
