"""The durable job store: every accepted job, its state and its results, in DATA_DIR/jobs.sqlite3.

It is what makes delivery exactly-once across restarts (a job is acknowledged only after `add`, and
`transition` is an atomic compare-and-set), what lets buttons work after a restart (they carry a job
id that is looked up here), and what keeps `/history` and `/status` figures.

Every method blocks; the event loop calls them through `asyncio.to_thread`, so several calls may run
at once in different threads: one connection is shared under a lock.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.guild_settings import EnhanceDefault, GuildSettings, NsfwPolicy
from bot.translations import Text

log = logging.getLogger(__name__)

DB_FILE_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_MS = 5000


class StoreError(RuntimeError):
    """The job store cannot be used; the message says what the operator should do."""


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # images made and saved, not yet posted to Discord
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Made and saved, but Discord refused it for good (no access to the channel, channel gone, no DM).
    UNDELIVERABLE = "undeliverable"


UNFINISHED_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DONE)
FINISHED_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED, JobState.UNDELIVERABLE)
# Rows a retention pass deletes in one transaction: short, so a write that answers a user never waits long.
PRUNE_BATCH = 100


@dataclass
class JobRecord:
    id: int | None
    user_id: int
    guild_id: int | None
    channel_id: int
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    seed: int
    guidance: float
    count: int
    kind: str = "imagine"  # imagine | reroll | variations
    parent_id: int | None = None  # the job a Reroll/Variations button came from
    state: JobState = JobState.QUEUED
    # Valid for 15 minutes; kept so a job can still edit its own message after a quick restart.
    interaction_token: str | None = field(default=None, repr=False)  # a credential: never in a repr or log
    token_created_at: float | None = None
    # The job's own message (the deferred answer), stored as soon as it exists: after a restart or once
    # the token expired the bot edits it with the bot token rather than posting blind.
    status_message_id: int | None = None
    result_message_id: int | None = None  # where the result went, when that is not the job's own message
    output_files: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the seed of each output image
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None  # generation time of all images together
    delivery_attempts: int = 0
    # Per output image: the safety check flagged it (or failed on it). Delivery reads it from here,
    # so a job delivered after a restart obeys the same channel policy.
    flagged: list[bool] = field(default_factory=list)
    # Image-to-image and styles (see GenerationRequest): the saved input PNG, its SHA-256, strength,
    # the LoRA style and its weight.
    source_image: str | None = None
    source_sha256: str | None = None
    strength: float | None = None
    style: str | None = None
    style_weight: float | None = None
    enhance: bool = False  # the requester asked for the prompt enhancer
    enhanced_prompt: str | None = None  # the prompt the images were made from, when the enhancer's was used
    # Why an asked-for enhancement was not used, rendered in the reader's language when shown; kept as
    # `Text.to_json` (the English template and its values), so it is readable in the file too.
    enhancement_note: Text | None = None
    # The requester's Discord locale ("zh-CN"), from the interaction that asked: messages that outlive
    # the interaction (status, result, restart notices, DMs) are written in it. None: English.
    locale: str | None = None


@dataclass(frozen=True)
class JobStats:
    jobs_done: int  # DONE and DELIVERED
    images_done: int
    mean_seconds_per_image: float | None
    failed: int
    cancelled: int


@dataclass(frozen=True)
class PruneReport:
    jobs_removed: int
    files_removed: int
    files_outside_output_dir: int  # listed by a pruned job but left alone


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobRecord))
_UPDATABLE = frozenset(_FIELD_NAMES) - {"id"}
_JSON_FIELDS = ("output_files", "seeds", "flagged")

# One entry per schema version: entry N-1 takes the database from version N-1 to N. Entries are
# statement tuples rather than scripts because `executescript` commits first, and each step must
# be one transaction together with its `user_version` bump.
Migration = tuple[str, ...] | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = [
    (
        # AUTOINCREMENT so a pruned job's id is never handed out again: an old button must not
        # end up acting on somebody else's new job.
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL,
            user_name TEXT NOT NULL,
            guild_id INTEGER,
            channel_id INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            negative_prompt TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            steps INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            guidance REAL NOT NULL,
            count INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'imagine',
            parent_id INTEGER,
            state TEXT NOT NULL DEFAULT 'queued',
            interaction_id INTEGER,
            interaction_token TEXT,
            token_created_at REAL,
            status_message_id INTEGER,
            result_message_id INTEGER,
            result_channel_id INTEGER,
            output_files TEXT NOT NULL DEFAULT '[]',
            seeds TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            seconds REAL
        )""",
        "CREATE INDEX jobs_state ON jobs (state)",
    ),
    (
        # Counting failed Discord posts lets the bot give up on a message it can never deliver.
        "ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0",
        # /history reads a user's newest jobs; without this it scans the whole table.
        "CREATE INDEX jobs_user_created ON jobs (user_id, created_at)",
    ),
    (
        # Written but never read, and never written: gone.
        "ALTER TABLE jobs DROP COLUMN interaction_id",
        "ALTER TABLE jobs DROP COLUMN result_channel_id",
    ),
    (
        "ALTER TABLE jobs ADD COLUMN flagged TEXT NOT NULL DEFAULT '[]'",
        # One row per server that changed its /settings; a server without a row has the defaults.
        """CREATE TABLE guild_settings (
            guild_id INTEGER PRIMARY KEY,
            allowed_channels TEXT NOT NULL DEFAULT '[]',
            nsfw_policy TEXT NOT NULL DEFAULT 'block',
            blocked_words TEXT NOT NULL DEFAULT '[]',
            daily_limit INTEGER NOT NULL DEFAULT 0,
            max_count INTEGER NOT NULL DEFAULT 4,
            required_role INTEGER,
            enhance_default TEXT NOT NULL DEFAULT 'off',
            updated_at REAL NOT NULL
        )""",
        # The daily limit counts a member's images in one server since midnight.
        "CREATE INDEX jobs_guild_user_created ON jobs (guild_id, user_id, created_at)",
    ),
    (
        # Pictures from pictures and styles: what GenerationRequest needs to run the job again.
        "ALTER TABLE jobs ADD COLUMN source_image TEXT",
        "ALTER TABLE jobs ADD COLUMN source_sha256 TEXT",
        "ALTER TABLE jobs ADD COLUMN strength REAL",
        "ALTER TABLE jobs ADD COLUMN style TEXT",
        "ALTER TABLE jobs ADD COLUMN style_weight REAL",
    ),
    (
        # The prompt enhancer: whether a job asked for it, the prompt it wrote, or why it was not used.
        "ALTER TABLE jobs ADD COLUMN enhance INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN enhanced_prompt TEXT",
        "ALTER TABLE jobs ADD COLUMN enhancement_note TEXT",
    ),
    ("ALTER TABLE jobs ADD COLUMN locale TEXT",),  # the requester's language
    # Written but never read: the requester is user_id, and a display name is personal data not worth keeping.
    ("ALTER TABLE jobs DROP COLUMN user_name",),
]
SCHEMA_VERSION = len(MIGRATIONS)


def _to_column(name: str, value: Any) -> Any:
    if name == "state":
        return JobState(value).value  # rejects a misspelt state before it reaches the disk
    if name == "output_files":
        return json.dumps([str(path) for path in value])
    if name == "seeds":
        return json.dumps([int(seed) for seed in value])
    if name == "flagged":
        return json.dumps([bool(flag) for flag in value])
    if name == "enhancement_note" and isinstance(value, Text):
        return value.to_json()  # a plain sentence is kept as it is, and reads back like an old row
    return value


def _from_row(row: sqlite3.Row) -> JobRecord:
    values = {name: row[name] for name in _FIELD_NAMES}
    values["state"] = JobState(values["state"])
    values["enhance"] = bool(values["enhance"])
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    if values["enhancement_note"] is not None:
        values["enhancement_note"] = Text.from_json(values["enhancement_note"])
    return JobRecord(**values)


class JobStore:
    def __init__(self, data_dir: Path, *, busy_timeout: float = BUSY_TIMEOUT_MS / 1000) -> None:
        self.path = Path(data_dir) / DB_FILE_NAME
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._lock = threading.Lock()
        _check_writable(Path(data_dir))
        try:
            # isolation_level=None: the module's implicit transactions are off; every write below
            # opens its own BEGIN IMMEDIATE so the write lock is taken before anything is read.
            conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            self._open(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _open(self, conn: sqlite3.Connection) -> None:
        def damaged(reason: object) -> StoreError:
            return StoreError(
                f"the job store {self.path} is not a readable SQLite database ({reason}). Stop the bot, "
                f"move it away together with any {DB_FILE_NAME}-wal and {DB_FILE_NAME}-shm beside it "
                f"(e.g. rename it to {DB_FILE_NAME}.broken) and start again: an empty job store is created"
            )

        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            result = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                # quick_check can list thousands of problems; the first few say enough.
                lines = [line for line in "\n".join(result).splitlines() if line and line[0] != "*"]
                more = f"; {len(lines) - 2} more problems" if len(lines) > 2 else ""
                raise damaged("; ".join(lines[:2]) + more)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                # Some network file systems refuse WAL; the store still works, but readers then block.
                log.warning("Job store %s runs in %s journal mode, not WAL", self.path, mode)
            # In WAL mode NORMAL fsyncs only at checkpoints. A commit is in the WAL file (the OS page
            # cache) before it returns, so it survives the process dying in any way, kill -9 included;
            # only a power cut or kernel crash can lose the last commits, and never corrupts the file.
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise damaged(exc) from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job store {self.path} has schema version {version}, written by a newer zimage-bot; "
                f"this one knows versions up to {SCHEMA_VERSION}. Upgrade the bot, or move the file away "
                "to start with an empty job store"
            )
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        for target in range(1, SCHEMA_VERSION + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Read again under the write lock: another process may have migrated meanwhile.
                if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                    conn.execute("ROLLBACK")
                    continue
                step = MIGRATIONS[target - 1]
                if callable(step):
                    step(conn)
                else:
                    for statement in step:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(exc, sqlite3.Error):
                    raise
                raise StoreError(
                    f"upgrading the job store {self.path} to schema version {target} failed: {exc}. "
                    "That step was rolled back; move the file away to start with an empty job store"
                ) from exc
            log.info("Job store %s migrated to schema version %d", self.path, target)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"the job store {self.path} is closed")
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at BEGIN, so a second process waits (busy_timeout) there
        # instead of failing half-way through with "database is locked".
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def add(self, job: JobRecord) -> JobRecord:
        """Store a new job; returns a copy with `id` (always larger than any before) and `created_at` set."""
        if job.id is not None:
            raise ValueError(f"job {job.id} is already stored; adding it again would run it twice")
        stored = dataclasses.replace(job, state=JobState(job.state), created_at=job.created_at or time.time())
        names = [name for name in _FIELD_NAMES if name != "id"]
        values = [_to_column(name, getattr(stored, name)) for name in names]
        with self._transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
            )
        return dataclasses.replace(stored, id=cursor.lastrowid)

    def get(self, job_id: int) -> JobRecord | None:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def update(self, job_id: int, **fields: Any) -> JobRecord:
        """Set the given fields; raises KeyError for an unknown job, TypeError for an unknown field."""
        assignments, values = self._assignments(fields)
        with self._transaction() as conn:
            if assignments:
                conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values, job_id])
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _from_row(row)

    def transition(self, job_id: int, from_states: Iterable[JobState], to_state: JobState, **fields: Any) -> bool:
        """Move the job to `to_state` (setting `fields` too) only if its state is one of `from_states`.

        One UPDATE with the state in its WHERE clause, so of two callers racing for DONE -> DELIVERED
        exactly one gets True: that is what makes delivery exactly-once. An unknown job gives False.
        """
        sources = [JobState(state).value for state in from_states]
        if not sources:
            return False
        assignments, values = self._assignments({**fields, "state": to_state})
        with self._transaction() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND state IN ({', '.join('?' * len(sources))})",
                [*values, job_id, *sources],
            )
        return cursor.rowcount == 1

    @staticmethod
    def _assignments(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        unknown = sorted(set(fields) - _UPDATABLE)
        if unknown:
            raise TypeError(f"not updatable job fields: {', '.join(unknown)}")
        # Names are checked against the dataclass above, so formatting them into SQL is safe.
        return ", ".join(f"{name} = ?" for name in fields), [_to_column(n, v) for n, v in fields.items()]

    def _select(self, sql: str, parameters: Iterable[Any] = ()) -> list[JobRecord]:
        # A single SELECT outside BEGIN is its own consistent read transaction.
        with self._connection() as conn:
            rows = conn.execute(sql, list(parameters)).fetchall()
        return [_from_row(row) for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Queued, running and done-but-undelivered jobs, in the order they were accepted."""
        return self._select(
            "SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY created_at, id",
            [state.value for state in UNFINISHED_STATES],
        )

    def recent_for_user(self, user_id: int, limit: int = 10) -> list[JobRecord]:
        return self._select(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", [user_id, limit]
        )

    def images_since(self, guild_id: int, user_id: int, since: float) -> int:
        """Images a member asked for in one server since `since`, for its daily limit. Jobs that
        failed or were cancelled made nothing and do not count."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM jobs WHERE guild_id = ? AND user_id = ? AND created_at >= ? "
                "AND state NOT IN ('failed', 'cancelled')",
                (guild_id, user_id, since),
            ).fetchone()
        return int(row[0])

    def guild_settings(self, guild_id: int) -> GuildSettings:
        """A server's settings; the defaults for a server that never changed them."""
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,)).fetchone()
        if row is None:
            return GuildSettings(guild_id)
        return GuildSettings(
            guild_id=row["guild_id"],
            allowed_channels=tuple(json.loads(row["allowed_channels"])),
            nsfw_policy=NsfwPolicy(row["nsfw_policy"]),
            blocked_words=tuple(json.loads(row["blocked_words"])),
            daily_limit=row["daily_limit"],
            max_count=row["max_count"],
            required_role=row["required_role"],
            enhance_default=EnhanceDefault(row["enhance_default"]),
            updated_at=row["updated_at"],
        )

    def save_guild_settings(self, settings: GuildSettings) -> GuildSettings:
        """Check and store a server's settings whole (ValueError, saying what to change, if a value is out
        of its limits); returns them as stored."""
        settings = dataclasses.replace(settings.checked(), updated_at=time.time())
        with self._transaction() as conn:
            conn.execute(
                """INSERT OR REPLACE INTO guild_settings (guild_id, allowed_channels, nsfw_policy, blocked_words,
                daily_limit, max_count, required_role, enhance_default, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    settings.guild_id,
                    json.dumps(list(settings.allowed_channels)),
                    settings.nsfw_policy.value,
                    json.dumps(list(settings.blocked_words), ensure_ascii=False),
                    settings.daily_limit,
                    settings.max_count,
                    settings.required_role,
                    settings.enhance_default.value,
                    settings.updated_at,
                ),
            )
        return settings

    def stats(self) -> JobStats:
        done = "state IN ('done', 'delivered')"
        with self._connection() as conn:
            row = conn.execute(
                f"""SELECT
                    COALESCE(SUM({done}), 0),
                    COALESCE(SUM(CASE WHEN {done} THEN count END), 0),
                    SUM(CASE WHEN {done} AND seconds IS NOT NULL THEN seconds END),
                    SUM(CASE WHEN {done} AND seconds IS NOT NULL THEN count END),
                    COALESCE(SUM(state = 'failed'), 0),
                    COALESCE(SUM(state = 'cancelled'), 0)
                FROM jobs"""
            ).fetchone()
        jobs_done, images_done, timed_seconds, timed_images, failed, cancelled = tuple(row)
        # Only jobs that recorded a time count towards the mean, so a job that lost its timing
        # (e.g. restored from an old backup) does not drag it towards zero.
        mean = timed_seconds / timed_images if timed_images else None
        return JobStats(jobs_done, images_done, mean, failed, cancelled)

    def prune(
        self, *, older_than_days: int, output_dir: Path, now: float | None = None, batch_size: int = PRUNE_BATCH
    ) -> PruneReport:
        """Delete finished jobs older than the cutoff, and their files that lie inside `output_dir`.

        older_than_days=0 keeps everything. It works in batches of `batch_size` jobs, each deleted in its
        own short transaction, so other writers wait for one batch at most, never for the whole pass.
        Files go first and rows second, so a crash in between leaves rows whose files are gone, which
        the next prune removes, rather than untracked files.
        """
        if older_than_days <= 0:
            return PruneReport(0, 0, 0)
        cutoff = (time.time() if now is None else now) - older_than_days * 86400
        finished = [state.value for state in FINISHED_STATES]
        in_finished = f"state IN ({', '.join('?' * len(finished))})"
        root = Path(output_dir).resolve()
        jobs_removed = files_removed = outside = 0
        after_id = 0
        while True:
            old = self._select(
                f"SELECT * FROM jobs WHERE id > ? AND {in_finished} AND COALESCE(finished_at, created_at) < ? "
                "ORDER BY id LIMIT ?",
                [after_id, *finished, cutoff, batch_size],
            )
            if not old:
                break
            after_id = max(job.id for job in old if job.id is not None)
            for job in old:
                removed, skipped = _remove_files(job, root)
                files_removed += removed
                outside += skipped
            ids = [job.id for job in old]
            with self._transaction() as conn:
                cursor = conn.execute(
                    f"DELETE FROM jobs WHERE id IN ({', '.join('?' * len(ids))}) AND {in_finished}", [*ids, *finished]
                )
                jobs_removed += cursor.rowcount
        if jobs_removed:
            log.info("Pruned %d jobs and %d files older than %d days", jobs_removed, files_removed, older_than_days)
        return PruneReport(jobs_removed, files_removed, outside)


def _remove_files(job: JobRecord, root: Path) -> tuple[int, int]:
    """Delete the job's files inside `root`; returns (removed, left alone because outside root)."""
    removed = outside = 0
    for name in job.output_files:
        # resolve() follows "..", and symlinks, so neither can lead a deletion out of output_dir.
        path = Path(name).resolve()
        if path == root or not path.is_relative_to(root):
            outside += 1
            log.warning("Not deleting %s of job %s: it is outside %s", name, job.id, root)
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Could not delete %s of job %s: %s", path, job.id, exc)
    return removed, outside


def _check_writable(data_dir: Path) -> None:
    # Checked by writing, not os.access: root passes os.access everywhere, and read-only mounts,
    # full disks and odd ACLs only show themselves on a real write.
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise StoreError(
            f"DATA_DIR {data_dir} is not a writable folder ({exc}). Point DATA_DIR at a folder the bot "
            "can create and write, or fix its permissions"
        ) from exc
