"""A local Discord API double: REST under /api/v10 and a gateway websocket, both on 127.0.0.1.

The real, unpatched discord.py client logs in against it once `discord.http.Route.BASE` is set to
`api_base` and `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` to `yarl.URL(gateway_url)`.
It enforces the rules that mocks miss (the 3-second acknowledgement, one acknowledgement per
interaction, 15-minute tokens, per-message edit rate limits, `enforce_nonce`), records every message the
bot produces, and validates every request body against Discord's OpenAPI description in
../shared/discord-api-spec. `stall_next` holds a response back after carrying out its request: the
window in which a crash leaves the bot not knowing what Discord has already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
from aiohttp import WSMsgType, web
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "discord-api-spec" / "openapi.json"
API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
EPHEMERAL, LOADING = 1 << 6, 1 << 7
ADMINISTRATOR, MANAGE_GUILD, SEND_MESSAGES, ATTACH_FILES = 1 << 3, 1 << 5, 1 << 11, 1 << 15
# View channel, send messages, embed links, attach files, read history, use application commands.
MEMBER_PERMISSIONS = (1 << 10) | SEND_MESSAGES | (1 << 14) | ATTACH_FILES | (1 << 16) | (1 << 31)
ALL_PERMISSIONS = (1 << 50) - 1
T = TypeVar("T")


# --- request validation against the OpenAPI description ------------------------------------------

_DRAFT = jsonschema.Draft202012Validator


def _lenient_type(validator: Any, types: Any, instance: Any, schema: dict) -> Any:
    # The spec's README: Discord accepts int-parseable strings where it declares integers, and
    # discord.py sends some snowflakes (allowed_mentions.users, attachment ids) as JSON numbers.
    if schema.get("format") == "snowflake" and type(instance) is int:
        return
    wanted = types if isinstance(types, list) else [types]
    if "integer" in wanted and isinstance(instance, str) and re.fullmatch(r"-?\d+", instance):
        if not schema.get("minimum", -math.inf) <= int(instance) <= schema.get("maximum", math.inf):
            yield jsonschema.ValidationError(f"{instance} is out of range")
        return
    yield from _DRAFT.VALIDATORS["type"](validator, types, instance, schema)


# The spec's README: its oneOf unions mean "one of these shapes" loosely, and some shapes overlap
# (a nonce is a string or an int64), so a value matching two of them is no violation.
_Validator = jsonschema.validators.extend(_DRAFT, {"type": _lenient_type, "oneOf": _DRAFT.VALIDATORS["anyOf"]})
_BODY, _FILES = web.RequestKey("body", object), web.RequestKey("files", list)


class _SpecIndex:
    """Request-body validators for the spec's routes, each compiled the first time it is needed."""

    URI = "urn:discord-openapi"

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        resource = Resource.from_contents(spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(self.URI, resource)
        # Fewer placeholders first, so "/messages/@original" wins over "/messages/{message_id}".
        templates = sorted(spec["paths"], key=lambda t: t.count("{"))
        self.routes = [
            (
                re.compile(
                    "^" + "/".join("[^/]+" if seg.startswith("{") else re.escape(seg) for seg in t.split("/")) + "$"
                ),
                t,
            )
            for t in templates
        ]
        self.validators: dict[tuple[str, str, str], Any] = {}

    def errors(self, method: str, path: str, content_type: str, body: Any) -> list[str]:
        template = next((t for pattern, t in self.routes if pattern.match(path)), None)
        operation = self.spec["paths"].get(template or "", {}).get(method.lower())
        if operation is None:
            return [f"{method} {path}: no such route in Discord's API"]
        content = operation.get("requestBody", {}).get("content", {})
        if not content:
            return [f"{method} {path}: this route takes no body"]
        media = content_type if content_type in content else "application/json"
        key = (template, method.lower(), media)
        if key not in self.validators:
            pointer = "/".join(
                s.replace("~", "~0").replace("/", "~1")
                for s in ("", "paths", template, method.lower(), "requestBody", "content", media, "schema")
            )
            self.validators[key] = _Validator({"$ref": f"{self.URI}#{pointer}"}, registry=self.registry)
        error = best_match(self.validators[key].iter_errors(body))
        if error is None:
            return []
        # jsonschema's message quotes the whole value: a 5000-character prompt would drown the reason.
        reason = error.message if len(error.message) < 200 else f"fails {error.validator}={error.validator_value!r}"
        return [f"{method} {path}: {error.json_path}: {reason}"]


@functools.cache
def _spec_index() -> _SpecIndex | None:
    # Loaded once per process: the spec is 1.2 MB.
    return _SpecIndex(json.loads(SPEC_PATH.read_text())) if SPEC_PATH.exists() else None


# --- records -------------------------------------------------------------------------------------


@dataclass
class DiscordUser:
    id: str
    name: str
    admin: bool = False
    locale: str = "en-US"  # the language of the user's Discord client, sent with each interaction

    def payload(self) -> dict:
        return {"id": self.id, "username": self.name, "global_name": None, "discriminator": "0", "avatar": None}


@dataclass
class Attachment:
    id: str
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    announced_size: int | None = None  # the size Discord announces, when a test makes it differ from the bytes


@dataclass
class MessageRecord:
    id: str
    channel_id: str
    content: str = ""
    embeds: list = field(default_factory=list)
    components: list = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict | None = None
    interaction: InteractionRecord | None = None  # the interaction whose token created it
    via: str = "channel"  # "response" (callback), "followup" (webhook) or "channel" (bot token)
    history: list[tuple[float, dict]] = field(default_factory=list)  # (monotonic time, payload)
    deleted: bool = False
    nonce: str | None = None  # as the bot sent it when creating the message
    author: DiscordUser | None = None  # None: the bot; else a user's message (post_user_message)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk(self.components) if "custom_id" in c]


@dataclass
class InteractionRecord:
    id: str
    token: str
    type: int  # 2 application command, 3 component
    user: DiscordUser
    channel_id: str
    payload: dict
    name: str | None = None  # command name (type 2)
    custom_id: str | None = None  # component (type 3)
    message: MessageRecord | None = None  # the message whose component was clicked
    dispatched_at: float = 0.0
    acked_at: float | None = None
    ack_type: int | None = None
    ack_late: bool = False
    callbacks: list[tuple[float, int | None, int]] = field(default_factory=list)  # (time, type, status)
    original: MessageRecord | None = None  # what "@original" refers to
    token_expired: bool = False
    modal: dict | None = None

    @property
    def ack_delay(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.dispatched_at


@dataclass
class RequestRecord:
    method: str
    path: str  # without the /api/v10 prefix
    body: Any
    at: float
    status: int = 0
    files: list[str] = field(default_factory=list)  # the uploaded file names, for multipart bodies


@dataclass
class Stall:
    """The next matching request is carried out, but its response is held back until `release()`:
    Discord has done what was asked while the bot still waits, the window a crash can fall into."""

    method: str
    pattern: re.Pattern
    when: Callable[[RequestRecord], bool] | None
    caught: RequestRecord | None = None  # the request being held
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern
    status: int
    retry_after: float
    count: int
    code: int
    message: str
    is_global: bool


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.body, self.headers = status, {"message": message, "code": code, **extra}, headers

    def response(self) -> web.Response:
        return _json(self.body, self.status, self.headers)


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # Exactly "application/json": discord.py treats "application/json; charset=utf-8" as text.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )


def _rate_limited(retry_after: float, is_global: bool = False) -> ApiError:
    headers = {
        "Via": "1.1 google",  # without it discord.py takes a 429 for a Cloudflare ban and gives up
        "Retry-After": str(math.ceil(retry_after)),
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Scope": "global" if is_global else "user",
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    return ApiError(429, 0, "You are being rate limited.", headers, retry_after=retry_after, **{"global": is_global})


def _docs_limits(method: str, path: str, body: Any) -> list[str]:
    # The spec allows 4000 characters in channel messages; Discord's docs (which win) say 2000.
    message = body.get("data") if isinstance(body, dict) and path.startswith("/interactions/") else body
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str) and len(content) > 2000:
        return [f"{method} {path}: content is {len(content)} characters; Discord allows 2000"]
    return []


def _walk(components: list) -> list[dict]:
    found = []
    for component in components or []:
        found.append(component)
        found.extend(_walk(component.get("components", [])))
        if "component" in component:  # a label (type 18) holds one component
            found.extend(_walk([component["component"]]))
        if "accessory" in component:
            found.append(component["accessory"])
    return found


def _role(role: dict) -> dict:
    return {"color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0, **role}


def _member(user: dict, roles: list[str], **extra: Any) -> dict:
    return {"user": user, "roles": roles, "joined_at": _iso(time.time()), "flags": 0, "nick": None, **extra}


def _iso(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, tz=timezone.utc).isoformat()


# --- the double ----------------------------------------------------------------------------------


class DiscordDouble:
    """Discord's REST API and gateway for one bot, one guild and one text channel; tests may add guilds,
    channels (age-restricted ones too), threads, roles and an application team."""

    def __init__(
        self,
        *,
        valid_token: str = "double-bot-token",
        ack_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        attachment_size_limit: int = 10 * 1024 * 1024,
        bot_permissions: int = MEMBER_PERMISSIONS,
        edit_limit: tuple[int, float] | None = (5, 5.0),
        validate: bool = True,
        heartbeat_interval_ms: int = 41_250,
    ) -> None:
        self.valid_token = valid_token
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.bot_permissions = bot_permissions
        self.edit_limit = edit_limit  # (edits, seconds) per message, as Discord roughly allows
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._spec = _spec_index() if validate else None
        self._counter = itertools.count()
        self._last_id = 0

        self.application_id = self.next_id()
        self.bot_user = DiscordUser(self.application_id, "ZImageDouble")
        self.owner = self.make_user("owner", admin=True)
        self.default_user = self.make_user("tester")
        self.team: list[tuple[DiscordUser, str]] | None = None  # (member, role): the application is team-owned
        self.guilds: dict[str, dict] = {}  # guild id -> {"name", "bot_role_id", "roles"}
        self.channels: dict[str, dict] = {}
        self.guild_id = self.add_guild("Double Guild")
        self.channel_id = next(c["id"] for c in self.channels.values() if c.get("guild_id") == self.guild_id)
        self.bot_role_id = self.guilds[self.guild_id]["bot_role_id"]

        self.synced_commands: dict[str | None, list[dict]] = {}  # guild id (None: global) -> commands
        self.sync_count = 0  # PUTs of a command list
        self.messages: dict[str, MessageRecord] = {}
        self.interactions: list[InteractionRecord] = []
        self.requests: list[RequestRecord] = []
        self.violations: list[str] = []
        self.unhandled: list[str] = []  # requests for routes the double does not serve
        self.uploads: dict[str, Attachment] = {}  # attachments users sent, served by the CDN route
        self.cdn_requests: list[str] = []  # attachment ids fetched from the CDN
        self.cdn_delay = 0.0  # seconds the CDN waits before answering
        self.cdn_fail_status: int | None = None  # the CDN answers every request with this status
        self.rate_limit_hits: list[str] = []  # edit-rate 429s the bot earned on its own
        self.identify_count = self.resume_count = 0
        self.identify_times: list[float] = []  # time.monotonic() of each IDENTIFY
        self.nonce_window = 5 * 60.0  # seconds in which enforce_nonce returns the earlier message
        self.session_id: str | None = None
        self.intents: int | None = None

        self._interactions: dict[str, InteractionRecord] = {}
        self._by_token: dict[str, InteractionRecord] = {}
        self._command_ids: dict[tuple, str] = {}
        self._failures: list[_Failure] = []
        self._stalls: list[Stall] = []
        self._slow: list[tuple[str, re.Pattern, float]] = []
        self._edits: dict[str, list[float]] = {}
        self._ws: web.WebSocketResponse | None = None  # the identified (or resumed) connection
        self._transports: dict[web.WebSocketResponse, Any] = {}
        self._seq = 0
        self._changed_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.api_base = self.gateway_url = self.http_base = ""

    # lifecycle

    async def __aenter__(self) -> DiscordDouble:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r, a = app.router, API_PREFIX
        r.add_get("/gateway", self._gateway)
        r.add_get(a + "/users/@me", self._users_me)
        r.add_get(a + "/oauth2/applications/@me", self._application)
        r.add_get(a + "/gateway", self._gateway_info)
        r.add_get(a + "/gateway/bot", self._gateway_info)
        for commands in (a + "/applications/{app}/commands", a + "/applications/{app}/guilds/{guild}/commands"):
            r.add_get(commands, self._get_commands)
            r.add_put(commands, self._put_commands)
        r.add_post(a + "/interactions/{iid}/{token}/callback", self._callback)
        r.add_post(a + "/webhooks/{app}/{token}", self._followup)
        r.add_route("*", a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        r.add_post(a + "/users/@me/channels", self._open_dm)
        r.add_get(a + "/channels/{cid}", self._get_channel)
        r.add_post(a + "/channels/{cid}/messages", self._channel_post)
        r.add_route("*", a + "/channels/{cid}/messages/{mid}", self._channel_message)
        r.add_get("/attachments/{aid}/{filename}", self._cdn)  # Discord's CDN, outside the API
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.http_base = f"http://127.0.0.1:{port}"
        self.api_base, self.gateway_url = self.http_base + API_PREFIX, f"ws://127.0.0.1:{port}/gateway"
        return self

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        for stall in self._stalls:
            stall.release()
        for ws in list(self._transports):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.violations and exc_type is None:
            raise AssertionError("requests that break Discord's API spec:\n" + "\n".join(self.violations))

    # helpers for tests

    def next_id(self) -> str:
        """A snowflake: milliseconds since Discord's epoch in the high bits, always increasing."""
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22 | (next(self._counter) & 0xFFF)
        self._last_id = max(candidate, self._last_id + 1)
        return str(self._last_id)

    def make_user(
        self, name: str, *, admin: bool = False, id: str | int | None = None, locale: str = "en-US"
    ) -> DiscordUser:
        return DiscordUser(str(id) if id is not None else self.next_id(), name, admin, locale)

    def add_guild(self, name: str) -> str:
        """Another guild the bot is in (announced at the next IDENTIFY), with its own #general; returns its id."""
        guild_id, bot_role_id = self.next_id(), self.next_id()
        everyone = {"id": guild_id, "name": "@everyone", "permissions": "0", "position": 0}
        bot_role = {"id": bot_role_id, "name": "bot", "permissions": str(self.bot_permissions), "position": 1}
        self.guilds[guild_id] = {"name": name, "bot_role_id": bot_role_id, "roles": [everyone, bot_role]}
        self.add_channel("general", guild_id=guild_id)
        return guild_id

    def add_channel(self, name: str, *, guild_id: str | None = None, nsfw: bool = False, type: int = 0) -> str:
        """A guild channel; `nsfw` marks it age-restricted. Returns its id."""
        channel_id = self.next_id()
        guild_id = guild_id or self.guild_id
        position = sum(1 for c in self.channels.values() if c.get("guild_id") == guild_id)
        self.channels[channel_id] = {
            "id": channel_id,
            "type": type,
            "guild_id": guild_id,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "flags": 0,
            "nsfw": nsfw,
        }
        return channel_id

    def add_thread(self, parent_id: str, name: str = "thread") -> str:
        """A public thread in `parent_id` (threads have no age restriction of their own)."""
        parent = self.channels[parent_id]
        thread_id = self.next_id()
        self.channels[thread_id] = {
            "id": thread_id,
            "type": 11,
            "guild_id": parent["guild_id"],
            "parent_id": parent_id,
            "owner_id": self.owner.id,
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(time.time()),
                "locked": False,
            },
        }
        return thread_id

    def add_role(self, name: str, *, guild_id: str | None = None) -> str:
        guild = self.guilds[guild_id or self.guild_id]
        role_id = self.next_id()
        guild["roles"].append({"id": role_id, "name": name, "permissions": "0", "position": len(guild["roles"])})
        return role_id

    def guild_of(self, channel_id: str) -> str | None:
        return self.channels.get(str(channel_id), {}).get("guild_id")

    def command(self, name: str, kind: int = 1) -> tuple[str | None, dict]:
        """The synced definition of /name (or of a context menu: `kind` 2 user, 3 message) and its scope
        (guild id, or None for global)."""
        for scope in (self.guild_id, None):
            for definition in self.synced_commands.get(scope, []):
                if definition["name"] == name and definition.get("type", 1) == kind:
                    return scope, definition
        raise LookupError(f"/{name} was never synced; synced: {self.synced_commands}")

    def messages_for(self, interaction: InteractionRecord) -> list[MessageRecord]:
        return [m for m in self.messages.values() if m.interaction is interaction and not m.deleted]

    def channel_messages(self, channel_id: str | None = None) -> list[MessageRecord]:
        """Messages posted with the bot token (not through an interaction webhook)."""
        return [
            m
            for m in self.messages.values()
            if m.via == "channel" and not m.deleted and (channel_id is None or m.channel_id == str(channel_id))
        ]

    def expire_token(self, interaction: InteractionRecord) -> None:
        interaction.token_expired = True

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after: float = 0.1,
        count: int = 1,
        code: int = 0,
        message: str | None = None,
        is_global: bool = False,
    ) -> None:
        """Answer the next `count` requests whose path (after /api/v10) matches with an error."""
        text = message or {429: "You are being rate limited.", 500: "500: Internal Server Error"}.get(status, "Error")
        self._failures.append(
            _Failure(method.upper(), re.compile(path_regex), status, retry_after, count, code, text, is_global)
        )

    def slow_down(self, method: str, path_regex: str, seconds: float) -> None:
        """Answer every request whose path (after /api/v10) matches only after `seconds`: a slow Discord."""
        self._slow.append((method.upper(), re.compile(path_regex), seconds))

    def stall_next(self, method: str, path_regex: str, *, when: Callable[[RequestRecord], bool] | None = None) -> Stall:
        """Carry out the next request whose path (after /api/v10) matches, and `when` accepts, but hold
        its response back until the returned Stall is released (or the double closes)."""
        stall = Stall(method.upper(), re.compile(path_regex), when)
        self._stalls.append(stall)
        return stall

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until predicate() is truthy; re-checked after every request and gateway event."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition still false after {timeout} s")
            with contextlib.suppress(asyncio.TimeoutError):  # also poll, for state outside the double
                await asyncio.wait_for(self._changed_event.wait(), min(remaining, 0.05))
        return result

    async def drop_gateway(self, *, resumable: bool = True) -> None:
        """Cut the gateway's TCP connection, as a network failure would; the client must reconnect."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("no gateway connection to drop")
        self._ws = None
        if not resumable:
            self.session_id = None  # the RESUME gets INVALID_SESSION and the client IDENTIFYs afresh
        self._transports[ws].abort()
        self._changed()

    async def invoke(
        self,
        name: str,
        options: dict | None = None,
        *,
        user: DiscordUser | None = None,
        permissions: int | None = None,
        guild: bool = True,
        unchecked: bool = False,
        channel: str | None = None,
        roles: list[str] | None = None,
    ) -> InteractionRecord:
        """A user runs /name with these option values; their Discord types come from the synced command.

        `unchecked` skips the checks Discord's own client makes (choices, ranges, lengths), as a
        modified client or a raw API call would: the bot must check everything again itself.
        `channel` is where it is run (a guild's channel or thread; default #general of the first guild),
        `roles` the member's role ids."""
        top, *subcommands = name.split()  # "settings channels": a subcommand of /settings
        scope, command = self.command(top)
        if channel is not None and scope is not None and self.guild_of(channel) != scope:
            raise ValueError(f"/{name} is synced to guild {scope} only; it cannot be run in channel {channel}")
        if scope is not None and not guild:
            raise ValueError(f"/{name} is synced to the guild only; it cannot be run in a DM")
        target, path = command, []
        for sub in subcommands:
            target = next((o for o in target.get("options") or [] if o["name"] == sub and o["type"] in (1, 2)), {})
            if not target:
                raise ValueError(f"/{top} has no subcommand {sub!r}")
            path.append(target)
        resolved: dict[str, dict] = {}
        typed = self._typed_options(target, options or {}, resolved, checked=not unchecked)
        for sub in reversed(path):
            typed = [{"name": sub["name"], "type": sub["type"], "options": typed}]
        data: dict[str, Any] = {"id": command["id"], "name": top, "type": 1, "options": typed}
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = scope
        return await self._dispatch_interaction(2, data, user, permissions, guild, channel, name=name, roles=roles)

    async def click(
        self,
        message: MessageRecord | str,
        custom_id: str,
        *,
        user: DiscordUser | None = None,
        values: list[str] | None = None,
        permissions: int | None = None,
        roles: list[str] | None = None,
        forged: bool = False,
    ) -> InteractionRecord:
        """A user clicks a button (or picks select `values`) on a message the bot sent. `forged` sends a
        custom_id the message does not carry, as a modified client could."""
        msg = message if isinstance(message, MessageRecord) else self.messages[str(message)]
        component = next((c for c in _walk(msg.components) if c.get("custom_id") == custom_id), None)
        if forged:
            component = {"type": 2, "custom_id": custom_id}
        if component is None or msg.deleted:
            raise ValueError(f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids()}")
        if component.get("disabled"):
            raise ValueError(f"{custom_id!r} is disabled; Discord's client cannot click it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            data["values"] = values
        in_guild = self.channels.get(msg.channel_id, {}).get("type") != 1
        return await self._dispatch_interaction(
            3, data, user, permissions, in_guild, msg.channel_id, custom_id=custom_id, message=msg, roles=roles
        )

    def upload(
        self, filename: str, data: bytes, content_type: str | None = None, *, size: int | None = None
    ) -> Attachment:
        """An attachment a user sends (to a command option or in a message), served by the CDN route.
        `size` is what Discord announces, when a test wants it to differ from the bytes served."""
        attachment = Attachment(self.next_id(), filename, data, content_type, announced_size=size)
        self.uploads[attachment.id] = attachment
        return attachment

    def post_user_message(
        self,
        content: str,
        *,
        user: DiscordUser | None = None,
        attachments: list[Attachment] = (),
        channel: str | None = None,
    ) -> MessageRecord:
        """A message a user posted in a channel (for message context menus)."""
        channel_id = channel or self.channel_id
        message = MessageRecord(self.next_id(), channel_id, content=content, attachments=list(attachments))
        message.author = user or self.default_user
        message.history.append((time.monotonic(), {"content": content}))
        for attachment in attachments:
            self.uploads[attachment.id] = attachment
        self.messages[message.id] = message
        return message

    async def invoke_message_command(
        self, name: str, message: MessageRecord, *, user: DiscordUser | None = None
    ) -> InteractionRecord:
        """A user picks the message context menu `name` on `message` (an application command of type 3)."""
        scope, command = self.command(name, kind=3)
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": message.id,
            "resolved": {"messages": {message.id: self._message_payload(message)}},
        }
        if scope is not None:
            data["guild_id"] = scope
        return await self._dispatch_interaction(2, data, user, None, True, message.channel_id, name=name)

    async def submit_modal(
        self, opened_by: InteractionRecord, values: dict[str, str], *, user: DiscordUser | None = None
    ) -> InteractionRecord:
        """The user fills in the modal the bot answered `opened_by` with (text inputs by custom_id) and submits it."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError("the bot answered that interaction without a modal")
        inputs = [c for c in _walk(modal.get("components") or []) if c.get("type") == 4]
        unknown = set(values) - {c["custom_id"] for c in inputs}
        if unknown:
            raise ValueError(
                f"the modal has no text input {sorted(unknown)}; it has {[c['custom_id'] for c in inputs]}"
            )
        missing = [c["custom_id"] for c in inputs if c.get("required", True) and not values.get(c["custom_id"])]
        if missing:
            raise ValueError(f"Discord's client would not submit the modal without {missing}")
        rows = [
            {
                "type": 1,
                "components": [{"type": 4, "custom_id": c["custom_id"], "value": values.get(c["custom_id"], "")}],
            }
            for c in inputs
        ]
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self._dispatch_interaction(
            5, data, user or opened_by.user, None, True, opened_by.channel_id, custom_id=modal["custom_id"]
        )

    def _attachment_payload(self, a: Attachment) -> dict:
        payload = {
            "id": a.id,
            "filename": a.filename,
            "size": len(a.data) if a.announced_size is None else a.announced_size,
            "url": f"{self.http_base}/attachments/{a.id}/{a.filename}",
            "proxy_url": f"{self.http_base}/attachments/{a.id}/{a.filename}",
        }
        if a.content_type is not None:
            payload["content_type"] = a.content_type
        if a.description is not None:
            payload["description"] = a.description
        return payload

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        attachment_id = request.match_info["aid"]
        self.cdn_requests.append(attachment_id)
        self._changed()
        if self.cdn_delay:
            await asyncio.sleep(self.cdn_delay)
        if self.cdn_fail_status is not None:
            return web.Response(status=self.cdn_fail_status, text="CDN error")
        attachment = self.uploads.get(attachment_id) or next(
            (a for m in self.messages.values() for a in m.attachments if a.id == attachment_id), None
        )
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    # interactions

    def _typed_options(self, command: dict, values: dict, resolved_out: dict, *, checked: bool = True) -> list[dict]:
        definitions = {o["name"]: o for o in command.get("options") or []}
        missing = [n for n, o in definitions.items() if o.get("required") and n not in values]
        if missing:
            raise ValueError(f"/{command['name']} needs {missing}; Discord's client would not send it")
        typed = []
        for name, value in values.items():
            option = definitions.get(name)
            if option is None:
                raise ValueError(f"/{command['name']} has no option {name!r}; it has {sorted(definitions)}")
            kind = option["type"]
            choices = [c["value"] for c in option.get("choices") or []]
            if checked and choices and value not in choices:
                raise ValueError(f"{name}={value!r} is not one of the declared choices {choices}")
            if checked and (
                ("min_value" in option and value < option["min_value"])
                or ("max_value" in option and value > option["max_value"])
                or ("max_length" in option and len(value) > option["max_length"])
            ):
                raise ValueError(f"{name}={value!r} is outside what /{command['name']} declares")
            if kind == 6:  # user: Discord sends the id and the user in "resolved"
                target = value if isinstance(value, DiscordUser) else self.make_user(str(value), id=value)
                resolved_out.setdefault("users", {})[target.id] = target.payload()
                value = target.id
            elif kind == 7:  # channel: the id, and a partial channel in "resolved"
                value = str(value)
                known = self.channels.get(value) or {"id": value, "type": 0, "name": "unknown"}
                partial = {key: v for key, v in known.items() if key != "guild_id"} | {"permissions": "0"}
                resolved_out.setdefault("channels", {})[value] = partial
            elif kind == 8:  # role: the id, and the role in "resolved"
                value = str(value)
                role = next(
                    (r for guild in self.guilds.values() for r in guild["roles"] if r["id"] == value),
                    {"id": value, "name": "unknown", "permissions": "0", "position": 0},
                )
                resolved_out.setdefault("roles", {})[value] = _role(role)
            elif kind == 11:  # attachment: the id, and the attachment in "resolved"
                attachment = value if isinstance(value, Attachment) else self.uploads[str(value)]
                self.uploads[attachment.id] = attachment
                resolved_out.setdefault("attachments", {})[attachment.id] = self._attachment_payload(attachment)
                value = attachment.id
            elif kind not in (3, 4, 5, 10):
                raise NotImplementedError(f"option type {kind} is not simulated")
            typed.append({"name": name, "type": kind, "value": value})
        return typed

    async def _dispatch_interaction(
        self,
        kind: int,
        data: dict,
        user: DiscordUser | None,
        permissions: int | None,
        in_guild: bool,
        channel_id: str | None,
        **record_fields: Any,
    ) -> InteractionRecord:
        await self.wait_for(lambda: self._ws is not None, timeout=15)  # events only reach a connected client
        user = user or self.default_user
        if permissions is None:
            permissions = ALL_PERMISSIONS if user.admin else MEMBER_PERMISSIONS
        payload: dict[str, Any] = {
            "id": self.next_id(),
            "application_id": self.application_id,
            "type": kind,
            "token": "itoken." + secrets.token_urlsafe(32),
            "version": 1,
            "data": data,
            "attachment_size_limit": self.attachment_size_limit,
            "app_permissions": str(self.bot_permissions),
            "locale": user.locale,
            "entitlements": [],
        }
        roles = record_fields.pop("roles", None) or []
        if in_guild:
            channel = self.channels[channel_id or self.channel_id]
            guild_id = channel["guild_id"]
            payload |= {
                "guild_id": guild_id,
                "guild": {"id": guild_id, "locale": "en-US", "features": []},
                "guild_locale": "en-US",
                "context": 0,
                "member": _member(user.payload(), roles, permissions=str(permissions)),
                "authorizing_integration_owners": {"0": guild_id},
            }
        else:
            channel = self._dm_channel(user)
            payload |= {"user": user.payload(), "context": 1, "authorizing_integration_owners": {"1": user.id}}
        payload |= {"channel_id": channel["id"], "channel": channel}
        if record_fields.get("message") is not None:  # a click carries the message it was on
            payload["message"] = self._message_payload(record_fields["message"])
        record = InteractionRecord(payload["id"], payload["token"], kind, user, channel["id"], payload, **record_fields)
        self.interactions.append(record)
        self._interactions[record.id] = self._by_token[record.token] = record
        record.dispatched_at = time.monotonic()
        await self._dispatch("INTERACTION_CREATE", payload)
        return record

    def dm_channel(self, user: DiscordUser) -> str:
        """The id of the DM channel between the bot and `user` (made on first use)."""
        return self._dm_channel(user)["id"]

    def _dm_channel(self, user: DiscordUser) -> dict:
        for channel in self.channels.values():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == user.id:
                return channel
        channel = {"id": self.next_id(), "type": 1, "recipients": [user.payload()], "last_message_id": None, "flags": 0}
        self.channels[channel["id"]] = channel
        return channel

    async def _callback(self, request: web.Request) -> web.Response:
        record = self._interactions.get(request.match_info["iid"])
        if record is None or record.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        body, now = request[_BODY] or {}, time.monotonic()
        kind, data = body.get("type"), body.get("data") or {}
        try:
            if record.acked_at is not None:
                raise ApiError(400, 40060, "Interaction has already been acknowledged.")
            if now - record.dispatched_at > self.ack_deadline:
                record.ack_late = True  # the user already saw "The application did not respond"
                raise ApiError(404, 10062, "Unknown interaction")
            if kind in (6, 7) and record.message is None:
                raise ApiError(400, 40043, "This interaction response type needs a component interaction")
            result = self._acknowledge(record, kind, data, request[_FILES])
        except ApiError as error:
            record.callbacks.append((now, kind, error.status))
            raise
        record.acked_at, record.ack_type = now, kind
        record.callbacks.append((now, kind, 200))
        return _json(result)

    def _acknowledge(self, record: InteractionRecord, kind: int, data: dict, files: list) -> dict:
        resource: dict[str, Any] = {"type": kind}
        if kind in (4, 5):
            # A deferral shows a "thinking" message (flag 128) that the first followup or edit replaces.
            content = data if kind == 4 else {"flags": (data.get("flags") or 0) & EPHEMERAL | LOADING}
            record.original = self._create_message(record.channel_id, content, files, record, "response")
        elif kind in (6, 7):
            record.original = record.message  # "@original" is now the message holding the component
            if kind == 7:
                self._update_message(record.message, data, files)
        elif kind == 9:
            record.modal = data
        elif kind != 8:
            raise ApiError(400, 50035, f"Invalid Form Body: unsupported callback type {kind}")
        message = record.original if kind in (4, 5, 7) else None
        if message is not None:
            resource["message"] = self._message_payload(message)
        # discord.py 2.5+ asks ?with_response=1 and reads this shape (InteractionCallbackResponse).
        return {
            "interaction": {
                "id": record.id,
                "type": record.type,
                "activity_instance_id": None,
                "response_message_id": message.id if message else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": resource,
        }

    def _token_interaction(self, request: web.Request) -> InteractionRecord:
        record = self._by_token.get(request.match_info["token"])
        if record is None or request.match_info["app"] != self.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if record.token_expired or time.monotonic() - record.dispatched_at > self.token_lifetime:
            record.token_expired = True
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if record.acked_at is None:  # no webhook exists until the interaction is acknowledged
            raise ApiError(404, 10015, "Unknown Webhook")
        return record

    async def _followup(self, request: web.Request) -> web.Response:
        record = self._token_interaction(request)
        data, files = request[_BODY] or {}, request[_FILES]
        original = record.original
        if record.ack_type == 5 and original is not None and original.loading and not original.deleted:
            # The first followup after a deferral replaces the "thinking" message; the deferral's
            # ephemeral choice stands.
            self._update_message(original, {k: v for k, v in data.items() if k != "flags"}, files)
            message = original
        else:
            message = self._create_message(record.channel_id, data, files, record, "followup")
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json(self._message_payload(message))
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        record = self._token_interaction(request)
        mid = request.match_info["mid"]
        message = record.original if mid == "@original" else self.messages.get(mid)
        if message is None or message.deleted or (mid != "@original" and message.interaction is None):
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_route(request, message)

    # channel messages (bot token)

    def _channel(self, request: web.Request) -> dict:
        channel = self.channels.get(request.match_info["cid"])
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    async def _open_dm(self, request: web.Request) -> web.Response:
        recipient = str((request[_BODY] or {}).get("recipient_id"))
        return _json(self._dm_channel(DiscordUser(recipient, f"user-{recipient}")))

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json(self._channel(request))

    async def _channel_post(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        needed = SEND_MESSAGES | (ATTACH_FILES if request[_FILES] else 0)
        granted = ALL_PERMISSIONS if self.bot_permissions & ADMINISTRATOR else self.bot_permissions
        if channel["type"] != 1 and granted & needed != needed:
            raise ApiError(403, 50013, "Missing Permissions")
        data = request[_BODY] or {}
        nonce = str(data["nonce"]) if data.get("nonce") is not None else None
        if nonce is not None and data.get("enforce_nonce"):
            # Discord: with enforce_nonce, a nonce the same author used in the last few minutes gets
            # that earlier message back and nothing new is created.
            for earlier in self.messages.values():
                if earlier.nonce == nonce and time.monotonic() - earlier.history[0][0] < self.nonce_window:
                    return _json(self._message_payload(earlier))
        message = self._create_message(channel["id"], data, request[_FILES], None, "channel")
        message.nonce = nonce
        return _json(self._message_payload(message))

    async def _channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self.messages.get(request.match_info["mid"])
        if message is None or message.deleted or message.channel_id != channel["id"] or message.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_route(request, message)

    def _message_route(self, request: web.Request, message: MessageRecord) -> web.Response:
        if request.method == "GET":
            return _json(self._message_payload(message))
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if request.method != "PATCH":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "PATCH", "DELETE"])
        self._check_edit_rate(message)
        self._update_message(message, request[_BODY] or {}, request[_FILES])
        return _json(self._message_payload(message))

    def _check_edit_rate(self, message: MessageRecord) -> None:
        if self.edit_limit is None:
            return
        limit, window = self.edit_limit
        now = time.monotonic()
        recent = self._edits[message.id] = [t for t in self._edits.get(message.id, []) if now - t < window]
        if len(recent) >= limit:
            self.rate_limit_hits.append(f"PATCH message {message.id}: {len(recent)} edits in {window} s")
            raise _rate_limited(round(recent[0] + window - now, 3))
        recent.append(now)

    # message storage

    def _new_attachments(self, data: dict, files: list) -> list[Attachment]:
        described = {str(a.get("id")): a for a in data.get("attachments") or []}
        added = []
        for name, filename, blob, content_type in files:
            if len(blob) > self.attachment_size_limit:
                raise ApiError(413, 40005, "Request entity too large")
            about = described.get(name[len("files[") : -1], {})
            added.append(
                Attachment(
                    self.next_id(), about.get("filename") or filename, blob, content_type, about.get("description")
                )
            )
        return added

    def _create_message(
        self, channel_id: str, data: dict, files: list, interaction: InteractionRecord | None, via: str
    ) -> MessageRecord:
        attachments = self._new_attachments(data, files)
        if len(attachments) > 10:
            raise ApiError(400, 50035, "Invalid Form Body: at most 10 attachments")
        message = MessageRecord(
            self.next_id(),
            channel_id,
            data.get("content") or "",
            data.get("embeds") or [],
            data.get("components") or [],
            attachments,
            (data.get("flags") or 0),
            data.get("allowed_mentions"),
            interaction,
            via,
        )
        message.history.append((time.monotonic(), data))
        self.messages[message.id] = message
        return message

    def _update_message(self, message: MessageRecord, data: dict, files: list) -> None:
        if "attachments" in data and data["attachments"] is not None:  # the list names what stays
            keep = {str(a.get("id")) for a in data["attachments"]}
            message.attachments = [a for a in message.attachments if a.id in keep]
        message.attachments += self._new_attachments(data, files)
        for key in ("content", "embeds", "components", "allowed_mentions"):
            if key in data:
                setattr(message, key, data[key] if data[key] is not None else ("" if key == "content" else []))
        message.flags &= ~LOADING
        message.history.append((time.monotonic(), data))

    def _message_payload(self, message: MessageRecord) -> dict:
        created = (int(message.id) >> 22) / 1000 + DISCORD_EPOCH_MS / 1000
        payload = {
            "id": message.id,
            "channel_id": message.channel_id,
            "type": 0,
            "content": message.content,
            "author": {**self.bot_user.payload(), "bot": True},
            "timestamp": _iso(created),
            "edited_timestamp": _iso(created + message.history[-1][0] - message.history[0][0])
            if len(message.history) > 1
            else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "embeds": message.embeds,
            "components": message.components,
            "flags": message.flags,
            "attachments": [self._attachment_payload(a) for a in message.attachments],
        }
        if message.author is not None:
            payload["author"] = message.author.payload()
        if message.interaction is not None:
            payload |= {
                "webhook_id": self.application_id,
                "application_id": self.application_id,
                "type": 20 if message.interaction.type == 2 else 0,
            }
        if self.channels.get(message.channel_id, {}).get("guild_id"):
            payload["guild_id"] = self.channels[message.channel_id]["guild_id"]
        return payload

    # login and command sync

    def _bot_payload(self) -> dict:
        return {**self.bot_user.payload(), "bot": True, "flags": 0}

    async def _users_me(self, _: web.Request) -> web.Response:
        return _json(self._bot_payload())

    async def _gateway_info(self, _: web.Request) -> web.Response:
        # GET /gateway/bot must name the double's gateway: AutoShardedClient connects wherever it says.
        return _json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            }
        )

    async def _application(self, _: web.Request) -> web.Response:
        app = {"id": self.application_id, "name": self.bot_user.name, "description": "", "icon": None}
        owner = {"owner": self.owner.payload(), "verify_key": "0" * 64, "flags": 0}
        if self.team is not None:
            # A team-owned application: Discord names a pseudo-user as its owner and lists the team.
            team_id = str(int(self.application_id) + 1)
            owner["owner"] = {**DiscordUser(team_id, f"team{team_id}").payload(), "flags": 1024}
            owner["team"] = {
                "id": team_id,
                "name": "Double Team",
                "icon": None,
                "owner_user_id": self.team[0][0].id,
                "members": [
                    {"membership_state": 2, "team_id": team_id, "user": member.payload(), "role": role}
                    for member, role in self.team
                ],
            }
        return _json({**app, **owner, "bot_public": False, "bot_require_code_grant": False})

    def _check_app(self, request: web.Request) -> str | None:
        if request.match_info["app"] != self.application_id:
            raise ApiError(404, 10002, "Unknown Application")
        guild = request.match_info.get("guild")
        if guild is not None and guild not in self.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return guild

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _json(self.synced_commands.get(self._check_app(request), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._check_app(request)
        stored = []
        for definition in request[_BODY] or []:
            # Discord keeps a command's id across syncs as long as its name and type stay.
            key = (scope, definition.get("type", 1), definition["name"])
            command_id = self._command_ids.setdefault(key, self.next_id())
            stored.append(
                {
                    "type": 1,
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "dm_permission": True,
                    "nsfw": False,
                    "integration_types": [0],
                    "contexts": None,
                    **definition,
                    "id": command_id,
                    "application_id": self.application_id,
                    "version": self.next_id(),
                    **({"guild_id": scope} if scope else {}),
                }
            )
        self.synced_commands[scope] = stored
        self.sync_count += 1
        return _json(stored)

    # every REST request passes through here

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        path = request.path[len(API_PREFIX) :]
        record = RequestRecord(request.method, path, None, time.monotonic())
        self.requests.append(record)
        try:
            record.body, files = await self._read_body(request)
            record.files = [filename for _, filename, _, _ in files]
            request[_BODY], request[_FILES] = record.body, files
            problems = (
                self._spec.errors(request.method, path, request.content_type, record.body)
                if self._spec is not None and record.body is not None
                else []
            )
            problems += _docs_limits(request.method, path, record.body)
            self.violations.extend(p for p in problems if p not in self.violations)  # retries repeat them
            if problems:  # Discord refuses a body that breaks its schema
                raise ApiError(400, 50035, "Invalid Form Body", errors={"_errors": problems})
            for method, pattern, seconds in self._slow:
                if method == request.method and pattern.search(path):
                    await asyncio.sleep(seconds)
            response = self._injected_failure(request.method, path)
            if (
                response is None
                and not path.startswith(("/webhooks/", "/interactions/"))
                and request.headers.get("Authorization") != f"Bot {self.valid_token}"
            ):
                raise ApiError(401, 0, "401: Unauthorized")
            response = response or await handler(request)
        except ApiError as error:
            response = error.response()
        except web.HTTPException as error:
            if error.status in (404, 405):
                self.unhandled.append(f"{request.method} {path}")
            response = _json({"message": f"{error.status}: {error.reason}", "code": 0}, error.status)
        record.status = response.status
        self._changed()
        stall = next(
            (
                s
                for s in self._stalls
                if s.caught is None
                and s.method == request.method
                and s.pattern.search(path)
                and (s.when is None or s.when(record))
            ),
            None,
        )
        if stall is not None and response.status < 300:
            stall.caught = record
            self._changed()
            await stall.released.wait()  # a client that died meanwhile never reads the answer
        return response

    async def _read_body(self, request: web.Request) -> tuple[Any, list]:
        if request.content_type == "multipart/form-data":
            body, files = None, []
            async for part in await request.multipart():
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append(
                        (
                            part.name,
                            part.filename,
                            bytes(await part.read(decode=True)),
                            part.headers.get("Content-Type"),
                        )
                    )
            return body, files
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            self.violations.append(f"{request.method} {request.path}: the body is not JSON")
            raise ApiError(400, 50109, "The request body contains invalid JSON.") from None

    def _injected_failure(self, method: str, path: str) -> web.Response | None:
        for failure in self._failures:
            if failure.count > 0 and failure.method == method and failure.pattern.search(path):
                failure.count -= 1
                if failure.status == 429:
                    return _rate_limited(failure.retry_after, failure.is_global).response()
                return ApiError(failure.status, failure.code, failure.message).response()
        return None

    def _changed(self) -> None:
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    # gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._transports[ws] = request.transport
        try:
            # Plain text frames: discord.py asks for zlib-stream but reads text frames uncompressed.
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}))
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                op, data = message.get("op"), message.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws, data)
                elif op == 6:
                    await self._resume(ws, data)
                elif op == 8:  # member chunk request: everyone the double knows is in READY's guild
                    await self._dispatch(
                        "GUILD_MEMBERS_CHUNK",
                        {
                            "guild_id": self.guild_id,
                            "members": self._members(),
                            "chunk_index": 0,
                            "chunk_count": 1,
                            "not_found": [],
                            "nonce": data.get("nonce"),
                        },
                        ws,
                    )
        finally:
            self._transports.pop(ws, None)
            if self._ws is ws:
                self._ws = None
            self._changed()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict) -> None:
        if data.get("token") != self.valid_token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identify_count += 1
        self.identify_times.append(time.monotonic())
        self.session_id, self._seq, self.intents = secrets.token_hex(16), 0, data.get("intents")
        self._ws = ws
        await self._dispatch(
            "READY",
            {
                "v": 10,
                "user": self._bot_payload(),
                "guilds": [{"id": guild_id, "unavailable": True} for guild_id in self.guilds],
                "session_id": self.session_id,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": self.application_id, "flags": 0},
            },
        )
        for guild_id in self.guilds:
            await self._dispatch("GUILD_CREATE", self._guild(guild_id))

    async def _resume(self, ws: web.WebSocketResponse, data: dict) -> None:
        if data.get("token") != self.valid_token or data.get("session_id") != self.session_id:
            await ws.send_str(json.dumps({"op": 9, "d": False}))  # not resumable: the client IDENTIFYs
            return
        self.resume_count += 1
        self._ws = ws
        await self._dispatch("RESUMED", {})

    async def _dispatch(self, event: str, data: dict, ws: web.WebSocketResponse | None = None) -> None:
        target = ws or self._ws
        if target is None:
            raise RuntimeError(f"no gateway connection to send {event} on")
        self._seq += 1
        await target.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))
        self._changed()

    def _members(self, guild_id: str | None = None) -> list[dict]:
        bot_role_id = self.guilds[guild_id or self.guild_id]["bot_role_id"]
        return [_member(self._bot_payload(), [bot_role_id]), _member(self.owner.payload(), [])]

    def _guild(self, guild_id: str) -> dict:
        guild = self.guilds[guild_id]
        guild["roles"][1]["permissions"] = str(self.bot_permissions)  # tests may change the bot's permissions
        members = self._members(guild_id)
        mine = [c for c in self.channels.values() if c.get("guild_id") == guild_id]
        return {
            "id": guild_id,
            "name": guild["name"],
            "owner_id": self.owner.id,
            "roles": [_role(role) for role in guild["roles"]],
            "members": members,
            "member_count": len(members),  # all members present: no chunking wanted
            "channels": [c for c in mine if c["type"] not in (10, 11, 12)],
            "threads": [c for c in mine if c["type"] in (10, 11, 12)],
            "features": [],
            "emojis": [],
            "stickers": [],
            "preferred_locale": "en-US",
            "joined_at": _iso(time.time()),
            "large": False,
            "unavailable": False,
        }
