"""Showing jobs in Discord: throttled status edits, and delivery that survives an expired token.

A job's status and result live in the message its interaction created, edited through the
interaction's webhook token. That token dies after 15 minutes (and is not used across a restart), so
a result that comes later is posted to the channel with the bot token instead, mentioning only the
requester, with a nonce so a retry after a crash cannot post it twice.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.discord_bot.job_messages import cancel_view, quote, result_embed, result_view, status_text
from bot.guild_settings import GuildSettings, NsfwPolicy
from bot.image_files import files_for_upload
from bot.jobs.runner import ActiveJob, OutputFile
from bot.moderation import ImageAction, image_actions, mentions_minors

log = logging.getLogger(__name__)

# Discord rate-limits edits of one message at about 5 per 5 s; stay well under it.
MIN_EDIT_INTERVAL = 1.5
# Stop using the interaction token a little before its 15 minutes are up.
TOKEN_LIFETIME = 14 * 60
# The interaction's own message in webhook routes; discord.py types message ids as int, so Any.
ORIGINAL: Any = "@original"
# Error codes that mean "this interaction token can no longer be used".
DEAD_TOKEN_CODES = {50027, 10015, 10062, 10008}


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
        guild_settings: Callable[[int], GuildSettings] = GuildSettings,
    ) -> None:
        self.bot = bot
        self.model_id = model_id
        self._paused = paused
        self._guild_settings = guild_settings  # blocking (the job store): called in a thread
        self._live: dict[int, _LiveMessage] = {}
        self._notices: dict[int, asyncio.Task] = {}  # "the bot restarted" edits still in flight

    # ----- live status -----------------------------------------------------------------------

    def show(self, job: ActiveJob) -> None:
        if not self._token_usable(job):
            return
        live = self._live.setdefault(job.job_id, _LiveMessage())
        if live.finished:
            return
        live.dirty = True
        if live.task is None or live.task.done():
            live.task = asyncio.create_task(self._edit_loop(job, live), name=f"status-{job.job_id}")

    async def _edit_loop(self, job: ActiveJob, live: _LiveMessage) -> None:
        while live.dirty and not live.finished:
            wait = live.last_edit + MIN_EDIT_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if live.finished:
                return
            live.dirty = False
            async with live.lock:
                if live.finished:
                    return
                live.last_edit = time.monotonic()
                try:
                    await self._webhook(job).edit_message(
                        ORIGINAL,
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
        live = self._live.pop(job.job_id, None)
        if live is None:
            return
        live.finished = True
        async with live.lock:
            pass

    # ----- final messages ----------------------------------------------------------------------

    async def conclude(self, job: ActiveJob, text: str) -> None:
        await self._finish_live(job)
        await self._after_notice(job)
        if self._token_usable(job):
            try:
                await self._webhook(job).edit_message(ORIGINAL, content=text, view=None, embeds=[], attachments=[])
                return
            except discord.HTTPException as error:
                if not _token_dead(error):
                    raise
        if job.resumed or job.record.state.value in ("failed", "cancelled"):
            await self._channel(job).send(f"<@{job.user_id}> {text}", allowed_mentions=_only(job.user_id))

    async def deliver(self, job: ActiveJob, files: list[OutputFile]) -> None:
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
        notes = "\n".join(filter(None, [note, "The full-size PNG is kept on the server." if as_jpeg else None]))
        record = job.record
        embed = result_embed(
            job.request,
            [f.seed for f in files],
            record.seconds,
            job.job_id,
            self.model_id,
            # An embed's image shows unblurred, so a spoilered first image stays an attachment.
            uploads[0][0] if uploads and not spoilers[0] else None,
        )
        if job.resumed and record.delivery_attempts > 1 and await self._already_shown(job):
            log.info("job %d: its result is already in its message; not posting it again", job.job_id)
            return
        if self._token_usable(job):
            try:
                await self._webhook(job).edit_message(
                    ORIGINAL,
                    content=notes or None,
                    embed=embed,
                    attachments=_files(uploads),
                    view=result_view(job.job_id),
                )
                return
            except discord.HTTPException as error:
                if not _token_dead(error):
                    raise
                log.info(
                    "job %d: interaction token no longer valid (%s); posting to the channel", job.job_id, error.code
                )
        reason = "the bot restarted" if job.resumed else "the request took longer than Discord allows for replies"
        await self._channel(job).send(
            f"<@{job.user_id}> here is your image (posted here because {reason})." + (f"\n{notes}" if notes else ""),
            embed=embed,
            files=_files(uploads),
            view=result_view(job.job_id),
            allowed_mentions=_only(job.user_id),
            nonce=f"zimage-job-{job.job_id}"[:25],  # Discord refuses a second message with this nonce
        )
        webhook = self._restarted_webhook(job)
        if webhook is not None:
            await self._edit_quietly(job, webhook, content="✅ Done: the result is posted in this channel.", view=None)

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
        return shown, withheld_note(actions)

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
        """Tell the requester, in the job's own message while its token still works, that the job
        survived the restart and where its result will appear (in the background: a start does not
        wait for these edits, but the job's final message waits for its notice)."""
        webhook = self._restarted_webhook(job)
        if webhook is not None:
            self._notices[job.job_id] = asyncio.create_task(
                self._edit_quietly(
                    job,
                    webhook,
                    content=f"🔄 The bot restarted; your job is saved and queued again. "
                    f"The result will be posted in this channel.\n{quote(job.request.prompt)}",
                    view=cancel_view(job.job_id),
                )
            )

    async def _after_notice(self, job: ActiveJob) -> None:
        notice = self._notices.pop(job.job_id, None)
        if notice is not None:
            await notice

    async def _edit_quietly(self, job: ActiveJob, webhook: discord.Webhook, **changes) -> None:
        try:
            await webhook.edit_message(ORIGINAL, **changes)
        except Exception as error:  # best effort: the result itself goes to the channel regardless
            log.warning("could not update the message of job %d: %s", job.job_id, error)

    def _restarted_webhook(self, job: ActiveJob) -> discord.Webhook | None:
        """The interaction webhook of a job from before the restart, while its token is still valid."""
        token = job.record.interaction_token
        if token is None or job.token_age >= TOKEN_LIFETIME or self.bot.application_id is None:
            return None
        return discord.Webhook.partial(self.bot.application_id, token, client=self.bot)

    async def _already_shown(self, job: ActiveJob) -> bool:
        """Whether an attempt before the restart put the result into the job's own message."""
        webhook = self._restarted_webhook(job)
        if webhook is None:
            return False  # (a stored status_message_id would allow this check with the bot token)
        try:
            message = await webhook.fetch_message(ORIGINAL)
        except discord.HTTPException:
            return False
        return bool(message.attachments) and any(
            (embed.footer.text or "").startswith(f"Job {job.job_id} ") for embed in message.embeds
        )

    # ----- plumbing ----------------------------------------------------------------------------

    def _token_usable(self, job: ActiveJob) -> bool:
        return (
            not job.resumed
            and job.record.interaction_token is not None
            and job.application_id is not None
            and job.token_age < TOKEN_LIFETIME
        )

    def _webhook(self, job: ActiveJob) -> discord.Webhook:
        assert job.application_id is not None and job.record.interaction_token is not None, "see _token_usable"
        return discord.Webhook.partial(job.application_id, job.record.interaction_token, client=self.bot)

    def _channel(self, job: ActiveJob) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(job.record.channel_id, guild_id=job.record.guild_id)


def withheld_note(actions: list[ImageAction]) -> str | None:
    """What the job's message says about flagged images, or None when every image is posted as it is."""
    total = len(actions)

    def some(count: int) -> str:
        return "The image was" if total == 1 else f"{count} of {total} images were"

    notes = []
    withheld = actions.count(ImageAction.WITHHOLD)
    if withheld:
        them = "it" if total == 1 else "them"
        notes.append(
            f"🔞 {some(withheld)} withheld: the safety check flagged {them}. An age-restricted channel shows {them}."
        )
    never = actions.count(ImageAction.NEVER)
    if never:
        notes.append(
            f"🚫 {some(never)} withheld and will not be posted anywhere: the safety check flagged "
            f"{'it' if total == 1 else 'them'} and the prompt mentions minors."
        )
    spoilered = actions.count(ImageAction.SPOILER)
    if spoilered:
        notes.append(
            "⚠️ Content note: the safety check flagged this image as possibly NSFW; it is shown as a spoiler."
            if total == 1
            else f"⚠️ Content note: the safety check flagged {spoilered} of {total} images as possibly NSFW; "
            "they are shown as spoilers."
        )
    return "\n".join(notes) or None


def _token_dead(error: discord.HTTPException) -> bool:
    return error.status == 401 or error.code in DEAD_TOKEN_CODES


def _only(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)])


def _files(uploads: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in uploads]
