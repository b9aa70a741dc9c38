"""The job store against a real SQLite file: round trips, compare-and-set, retention, migration,
damaged or foreign files, concurrent threads and a process killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.jobs.store import (
    DB_FILE_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    JobRecord,
    JobState,
    JobStats,
    JobStore,
    PruneReport,
    StoreError,
)
from bot.translations import Text

DAY = 86400.0
NOW = 1_750_000_000.0
SNOWFLAKE = 1_234_567_890_123_456_789  # Discord ids use most of SQLite's 64-bit integers


def make_job(user_id: int = 42, **overrides: object) -> JobRecord:
    job = JobRecord(
        id=None,
        user_id=user_id,
        guild_id=7,
        channel_id=8,
        prompt="a red fox",
        negative_prompt="",
        width=1024,
        height=1024,
        steps=8,
        seed=1,
        guidance=0.0,
        count=1,
    )
    return dataclasses.replace(job, **overrides)


@pytest.fixture
def store(tmp_path: Path):
    with JobStore(tmp_path / "data") as job_store:
        yield job_store


def test_every_field_round_trips_through_add_get_and_update(store: JobStore) -> None:
    job = make_job(
        user_id=SNOWFLAKE,
        guild_id=SNOWFLAKE + 1,
        channel_id=SNOWFLAKE + 2,
        prompt="a fox 'quoted' \"twice\"; DROP TABLE jobs; --",
        negative_prompt="blurry",
        width=1152,
        height=896,
        steps=9,
        seed=4_294_967_295,
        guidance=3.5,
        count=4,
        kind="variations",
        parent_id=99,
        state=JobState.RUNNING,
        interaction_token="tok-en",
        token_created_at=NOW - 5,
        status_message_id=SNOWFLAKE + 4,
        result_message_id=SNOWFLAKE + 5,
        output_files=["outputs/a.png", "outputs/b.png"],
        seeds=[4_294_967_295, 0],
        error="none yet",
        created_at=NOW,
        started_at=NOW + 1,
        finished_at=NOW + 2,
        seconds=1.25,
        delivery_attempts=2,
        flagged=[True, False],
        source_image="outputs/inputs/abc.png",
        source_sha256="ab" * 32,
        strength=0.35,
        style="ink",
        style_weight=0.8,
        enhance=True,
        enhanced_prompt='a fox in deep snow, 提示 "quoted"',
        enhancement_note=None,
        locale="zh-CN",
    )
    added = store.add(job)
    assert added.id is not None
    assert added == dataclasses.replace(job, id=added.id)
    assert job.id is None  # the caller's record is not changed behind its back
    fetched = store.get(added.id)
    assert fetched == added
    assert isinstance(fetched.state, JobState)

    changes = {
        "user_id": 1,
        "guild_id": None,
        "channel_id": 2,
        "prompt": "p",
        "negative_prompt": "n",
        "width": 576,
        "height": 1344,
        "steps": 4,
        "seed": 5,
        "guidance": 1.5,
        "count": 2,
        "kind": "reroll",
        "parent_id": None,
        "state": "done",  # a plain string is accepted and read back as the enum
        "interaction_token": None,
        "token_created_at": None,
        "status_message_id": None,
        "result_message_id": 11,
        "output_files": [Path("outputs/c.png")],
        "seeds": [5, 6],
        "error": None,
        "created_at": NOW + 10,
        "started_at": None,
        "finished_at": None,
        "seconds": None,
        "delivery_attempts": 3,
        "flagged": [False, True],
        "source_image": None,
        "source_sha256": None,
        "strength": None,
        "style": None,
        "style_weight": 1.5,
        "enhance": False,
        "enhanced_prompt": None,
        "enhancement_note": Text("the enhancer took longer than {seconds} s", seconds="20"),
        "locale": "en-US",
    }
    assert set(changes) == {f.name for f in dataclasses.fields(JobRecord)} - {"id"}
    expected = dataclasses.replace(added, **{**changes, "state": JobState.DONE, "output_files": ["outputs/c.png"]})
    assert store.update(added.id, **changes) == expected
    assert store.get(added.id) == expected


def test_add_numbers_jobs_in_order_and_stamps_created_at(store: JobStore) -> None:
    first = store.add(make_job())
    second = store.add(make_job(created_at=NOW))
    assert first.id is not None and second.id is not None and second.id > first.id
    assert first.created_at > NOW  # set by add() because it was 0
    assert second.created_at == NOW  # kept because the caller gave it
    with pytest.raises(ValueError, match="already stored"):
        store.add(first)
    assert store.get(second.id + 1) is None


def test_update_rejects_unknown_jobs_fields_and_states(store: JobStore) -> None:
    job = store.add(make_job())
    with pytest.raises(KeyError):
        store.update(job.id + 100, steps=3)
    with pytest.raises(TypeError, match="colour"):
        store.update(job.id, colour="red")
    with pytest.raises(TypeError, match="id"):
        store.update(job.id, id=5)
    with pytest.raises(ValueError):
        store.update(job.id, state="exploded")
    assert store.get(job.id) == job  # nothing of the rejected updates was written


def test_transition_is_a_compare_and_set(store: JobStore) -> None:
    job = store.add(make_job(state=JobState.DONE))
    assert store.transition(job.id, [JobState.DONE], JobState.DELIVERED, result_message_id=5)
    # The second delivery attempt loses, and its fields are not written either.
    assert not store.transition(job.id, [JobState.DONE], JobState.DELIVERED, result_message_id=6)
    stored = store.get(job.id)
    assert stored.state is JobState.DELIVERED and stored.result_message_id == 5
    assert not store.transition(job.id, [], JobState.FAILED)
    assert not store.transition(job.id + 1, [JobState.QUEUED], JobState.RUNNING)
    assert store.transition(job.id, {JobState.QUEUED, JobState.DELIVERED}, JobState.CANCELLED)
    assert store.get(job.id).state is JobState.CANCELLED


def test_transition_lets_exactly_one_of_many_racing_threads_deliver(store: JobStore) -> None:
    job = store.add(make_job(state=JobState.DONE))
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def deliver() -> None:
        barrier.wait()
        wins.append(store.transition(job.id, [JobState.DONE], JobState.DELIVERED))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_unfinished_lists_resumable_jobs_in_acceptance_order(store: JobStore) -> None:
    states = [
        (JobState.DONE, NOW + 3),
        (JobState.DELIVERED, NOW + 1),
        (JobState.QUEUED, NOW + 2),
        (JobState.FAILED, NOW),
        (JobState.RUNNING, NOW + 2),  # same time as the queued one: the lower id came first
        (JobState.CANCELLED, NOW),
        (JobState.QUEUED, NOW - 1),
    ]
    ids = [store.add(make_job(state=state, created_at=at)).id for state, at in states]
    assert [job.id for job in store.unfinished()] == [ids[6], ids[2], ids[4], ids[0]]


def test_recent_for_user_is_newest_first_and_limited(store: JobStore) -> None:
    mine = [store.add(make_job(user_id=1, created_at=NOW + i)).id for i in range(5)]
    store.add(make_job(user_id=2, created_at=NOW + 10))
    assert [job.id for job in store.recent_for_user(1)] == mine[::-1]
    assert [job.id for job in store.recent_for_user(1, limit=2)] == [mine[4], mine[3]]
    assert store.recent_for_user(3) == []


def test_stats_count_finished_work(store: JobStore) -> None:
    assert store.stats() == JobStats(0, 0, None, 0, 0)
    store.add(make_job(state=JobState.DELIVERED, count=4, seconds=8.0))
    store.add(make_job(state=JobState.DONE, count=1, seconds=4.0))
    store.add(make_job(state=JobState.DELIVERED, count=2, seconds=None))  # counted, but not timed
    store.add(make_job(state=JobState.FAILED, count=3, seconds=1.0))
    store.add(make_job(state=JobState.CANCELLED))
    store.add(make_job(state=JobState.CANCELLED))
    store.add(make_job(state=JobState.QUEUED, count=4))
    assert store.stats() == JobStats(jobs_done=3, images_done=7, mean_seconds_per_image=12.0 / 5, failed=1, cancelled=2)


def test_prune_removes_old_finished_jobs_and_only_their_files_inside_output_dir(
    store: JobStore, tmp_path: Path
) -> None:
    output_dir = tmp_path / "outputs"
    elsewhere = tmp_path / "elsewhere"
    output_dir.mkdir()
    elsewhere.mkdir()

    def png(folder: Path, name: str) -> Path:
        path = folder / name
        path.write_bytes(b"png")
        return path

    old = NOW - 40 * DAY
    inside = [png(output_dir, "old1.png"), png(output_dir, "old2.png")]
    outside = png(elsewhere, "precious.png")
    sneaky = png(elsewhere, "sneaky.png")
    (output_dir / "link.png").symlink_to(png(elsewhere, "linked.png"))
    recent_file = png(output_dir, "recent.png")
    pending_file = png(output_dir, "pending.png")

    old_delivered = store.add(make_job(state=JobState.DELIVERED, created_at=old, finished_at=old, output_files=inside))
    old_failed = store.add(make_job(state=JobState.FAILED, created_at=old))  # no finished_at: created_at
    old_cancelled = store.add(
        make_job(
            state=JobState.CANCELLED,
            created_at=old,
            finished_at=old,
            output_files=[
                str(outside),
                str(output_dir / ".." / "elsewhere" / "sneaky.png"),
                str(output_dir / "link.png"),
                str(output_dir / "already-gone.png"),
            ],
        )
    )
    # Created long ago but finished yesterday: finished_at decides.
    recent = store.add(
        make_job(
            state=JobState.DELIVERED,
            created_at=old,
            finished_at=NOW - DAY,
            output_files=[str(recent_file)],
        )
    )
    unfinished = [
        store.add(make_job(state=state, created_at=old, output_files=[str(pending_file)])).id
        for state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE)
    ]

    assert store.prune(older_than_days=0, output_dir=output_dir, now=NOW) == PruneReport(0, 0, 0)
    assert store.get(old_delivered.id) is not None and all(path.exists() for path in inside)

    report = store.prune(older_than_days=30, output_dir=output_dir, now=NOW)

    assert report == PruneReport(jobs_removed=3, files_removed=2, files_outside_output_dir=3)
    for job in (old_delivered, old_failed, old_cancelled):
        assert store.get(job.id) is None
    assert not any(path.exists() for path in inside)
    assert outside.exists() and sneaky.exists() and (elsewhere / "linked.png").exists()
    assert store.get(recent.id) is not None and recent_file.exists()
    assert [job.id for job in store.unfinished()] == unfinished and pending_file.exists()
    assert store.prune(older_than_days=30, output_dir=output_dir, now=NOW) == PruneReport(0, 0, 0)


def test_the_id_of_a_pruned_job_is_never_given_out_again(store: JobStore, tmp_path: Path) -> None:
    # Buttons carry job ids: reusing one would let an old message's Delete act on a new job.
    newest = store.add(make_job(state=JobState.DELIVERED, created_at=NOW - 40 * DAY))
    assert store.prune(older_than_days=30, output_dir=tmp_path, now=NOW).jobs_removed == 1
    assert store.add(make_job()).id > newest.id


def test_a_version_1_database_is_migrated_and_its_rows_read_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / DB_FILE_NAME)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO jobs (user_id, user_name, guild_id, channel_id, prompt, negative_prompt, width,"
        " height, steps, seed, guidance, count, state, output_files, seeds, created_at, seconds)"
        " VALUES (5, 'old', NULL, 6, 'a cat', '', 1024, 1024, 8, 77, 0.0, 2, 'delivered',"
        " '[\"outputs/cat.png\", \"outputs/cat2.png\"]', '[77, 78]', ?, 3.0)",
        (NOW,),
    )
    conn.commit()
    conn.close()

    with JobStore(data_dir) as store:
        [old] = store.recent_for_user(5)
        assert old == JobRecord(
            id=old.id,
            user_id=5,
            guild_id=None,
            channel_id=6,
            prompt="a cat",
            negative_prompt="",
            width=1024,
            height=1024,
            steps=8,
            seed=77,
            guidance=0.0,
            count=2,
            state=JobState.DELIVERED,
            output_files=["outputs/cat.png", "outputs/cat2.png"],
            seeds=[77, 78],
            created_at=NOW,
            seconds=3.0,
            delivery_attempts=0,
        )
        assert store.update(old.id, delivery_attempts=1).delivery_attempts == 1

    conn = sqlite3.connect(data_dir / DB_FILE_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(jobs)")}
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    assert "jobs_user_created" in indexes
    # Columns nothing read (interaction_id, user_name) or wrote (result_channel_id) are gone.
    assert not {"interaction_id", "result_channel_id", "user_name"} & columns
    assert {"status_message_id", "result_message_id", "delivery_attempts"} <= columns


def test_the_enhancement_note_is_kept_as_readable_text_to_render_later(store: JobStore) -> None:
    # A reason inside a reason: each keeps its English template and values, so both render in any language.
    note = Text(
        "the prompt enhancer was turned off at start-up ({reason})",
        reason=Text('the enhanced prompt did not keep the text to draw ("{text}")', text="大减价"),
    )
    job = store.add(make_job(enhance=True, enhancement_note=note))
    assert store.get(job.id).enhancement_note == note
    assert store.get(job.id).enhancement_note.render("zh-CN") == (
        "提示词增强在启动时已关闭（增强后的提示词没有保留要画出的文字（“大减价”））"
    )
    with sqlite3.connect(store.path) as conn:
        (stored,) = conn.execute("SELECT enhancement_note FROM jobs WHERE id = ?", (job.id,)).fetchone()
    # Readable in the file: the English template, the values, the Chinese as it is.
    assert json.loads(stored) == {
        "text": "the prompt enhancer was turned off at start-up ({reason})",
        "values": {
            "reason": {
                "text": 'the enhanced prompt did not keep the text to draw ("{text}")',
                "values": {"text": "大减价"},
            }
        },
    }
    assert "大减价" in stored
    # A row written before notes were Texts holds the English sentence: it reads back as that sentence,
    # and one that is a known text is even translated.
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE jobs SET enhancement_note = ? WHERE id = ?", ("the enhancer took longer than 20 s", job.id)
        )
    old = store.get(job.id).enhancement_note
    assert str(old) == old.render("zh-CN") == "the enhancer took longer than 20 s"
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE jobs SET enhancement_note = ? WHERE id = ?", ("the enhancer returned nothing", job.id))
    assert store.get(job.id).enhancement_note.render("zh-CN") == "增强器没有返回任何内容"


def test_reopening_keeps_jobs_and_does_not_migrate_again(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        job = store.add(make_job(output_files=["x.png"]))
    with JobStore(tmp_path) as store:
        assert store.get(job.id) == job
    with pytest.raises(StoreError, match="closed"):
        store.get(job.id)


@pytest.mark.parametrize(
    "make_data_dir",
    [
        pytest.param(lambda tmp: _file(tmp / "data"), id="data-dir-is-a-file"),
        pytest.param(lambda tmp: _file(tmp / "parent") / "data", id="parent-is-a-file"),
    ],
)
def test_an_unwritable_data_dir_is_a_store_error(tmp_path: Path, make_data_dir: Callable) -> None:
    data_dir = make_data_dir(tmp_path)
    with pytest.raises(StoreError, match="DATA_DIR") as raised:
        JobStore(data_dir)
    assert str(data_dir) in str(raised.value)


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def test_a_file_of_random_bytes_is_a_store_error_that_says_to_move_it(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE_NAME
    garbage = random.Random(1).randbytes(8192)
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as raised:
        JobStore(tmp_path)
    message = str(raised.value)
    assert str(path) in message and "move it away" in message
    assert path.read_bytes() == garbage  # the evidence is left for the operator


def test_a_database_with_damaged_pages_is_a_store_error(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        for i in range(300):
            store.add(make_job(prompt=f"prompt number {i} " * 20))
    path = tmp_path / DB_FILE_NAME
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * page_size
    # Keep page 1 (header and schema) so the file still looks like SQLite; scribble over the rest.
    data[page_size + 100 : len(data) - page_size] = b"\xa5" * (len(data) - 2 * page_size - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="move it away"):
        JobStore(tmp_path)


def test_a_database_from_a_newer_schema_is_a_store_error(tmp_path: Path) -> None:
    JobStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILE_NAME)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(StoreError, match="999") as raised:
        JobStore(tmp_path)
    assert "newer" in str(raised.value)


@pytest.mark.parametrize("separate_connections", [False, True], ids=["one-store", "two-stores"])
def test_concurrent_writers_lose_nothing(tmp_path: Path, separate_connections: bool) -> None:
    operations = 300
    main = JobStore(tmp_path)
    # Two stores on one file stand for two processes: WAL plus busy_timeout must serialise them.
    other = JobStore(tmp_path) if separate_connections else main
    existing = [main.add(make_job(user_id=1)).id for _ in range(operations)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    added: list[int] = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                work()
            except BaseException as exc:
                errors.append(exc)

        return run

    def progress() -> None:
        for number, job_id in enumerate(existing):
            assert other.transition(job_id, [JobState.QUEUED], JobState.RUNNING, started_at=NOW)
            other.update(job_id, seeds=[number], delivery_attempts=number)

    def accept() -> None:
        for number in range(operations):
            job = main.add(make_job(user_id=2, seed=number))
            added.append(job.id)
            assert main.get(job.id) == job
            assert main.recent_for_user(2, limit=1)[0].id == job.id

    threads = [threading.Thread(target=guarded(work)) for work in (progress, accept)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    assert len(main.recent_for_user(1, limit=1000)) == operations
    assert [job.seed for job in main.recent_for_user(2, limit=1000)] == list(range(operations))[::-1]
    for number, job_id in enumerate(existing):
        job = main.get(job_id)
        assert (job.state, job.seeds, job.delivery_attempts) == (JobState.RUNNING, [number], number)
    assert len(set(existing) | set(added)) == 2 * operations
    assert len(main.unfinished()) == 2 * operations
    other.close()
    main.close()
    conn = sqlite3.connect(tmp_path / DB_FILE_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (2 * operations,)
    conn.close()


def test_commits_survive_the_process_being_killed(tmp_path: Path) -> None:
    # SIGKILL gives the store no chance to close or checkpoint: what was committed must be there.
    script = f"""
import os, signal, sys
from pathlib import Path
from bot.jobs.store import JobRecord, JobState, JobStore
store = JobStore(Path({str(tmp_path)!r}))
job = store.add(JobRecord(None, 1, None, 2, "p", "", 16, 16, 1, 3, 0.0, 1, state=JobState.DONE))
assert store.transition(job.id, [JobState.DONE], JobState.DELIVERED, result_message_id=9)
print(job.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    job_id = int(result.stdout)
    assert (tmp_path / f"{DB_FILE_NAME}-wal").exists()  # the commit lives in the WAL, not yet checkpointed
    with JobStore(tmp_path) as store:
        job = store.get(job_id)
        assert (job.state, job.result_message_id) == (JobState.DELIVERED, 9)
        assert not store.transition(job_id, [JobState.DONE], JobState.DELIVERED)
    assert os.path.getsize(tmp_path / DB_FILE_NAME) > 0


def test_prune_works_in_small_batches_and_takes_undeliverable_jobs(store: JobStore, tmp_path: Path) -> None:
    # Results Discord refused for good are finished too: they must not pile up.
    old = NOW - 40 * DAY
    files = []
    for index in range(5):
        path = tmp_path / f"old{index}.png"
        path.write_bytes(b"png")
        files.append(path)
    states = [JobState.UNDELIVERABLE, JobState.DELIVERED, JobState.UNDELIVERABLE, JobState.FAILED, JobState.CANCELLED]
    for state, path in zip(states, files, strict=True):
        store.add(make_job(state=state, created_at=old, finished_at=old, output_files=[str(path)]))
    kept = store.add(make_job(state=JobState.DONE, created_at=old))  # still owed to its requester

    report = store.prune(older_than_days=30, output_dir=tmp_path, now=NOW, batch_size=2)

    assert report == PruneReport(jobs_removed=5, files_removed=5, files_outside_output_dir=0)
    assert not any(path.exists() for path in files)
    assert [job.id for job in store.unfinished()] == [kept.id]


def test_flags_round_trip_and_default_to_empty(store: JobStore) -> None:
    job = store.add(make_job(count=2))
    assert store.get(job.id).flagged == []
    assert store.update(job.id, flagged=[False, True]).flagged == [False, True]
    assert store.get(job.id).flagged == [False, True]


def test_guild_settings_are_saved_whole_and_survive_reopening(tmp_path: Path) -> None:
    from bot.guild_settings import EnhanceDefault, GuildSettings, NsfwPolicy

    with JobStore(tmp_path / "data") as store:
        assert store.guild_settings(7) == GuildSettings(7)  # the defaults for a server never set up
        wanted = GuildSettings(
            7,
            allowed_channels=(1, 2),
            nsfw_policy=NsfwPolicy.SPOILER,
            blocked_words=("gore", "血腥"),
            daily_limit=20,
            max_count=2,
            required_role=99,
            enhance_default=EnhanceDefault.FORBIDDEN,
        )
        assert store.save_guild_settings(wanted).updated_at is not None
        with pytest.raises(ValueError, match="daily limit"):
            store.save_guild_settings(GuildSettings(7, daily_limit=5000, blocked_words=("new",)))
    with JobStore(tmp_path / "data") as store:
        assert store.guild_settings(7) == wanted  # the refused change left nothing behind
        assert store.guild_settings(8) == GuildSettings(8)


def test_images_since_counts_a_members_images_in_one_server(store: JobStore) -> None:
    store.add(make_job(count=3, created_at=NOW))
    store.add(make_job(count=1, created_at=NOW, state=JobState.DELIVERED))
    store.add(make_job(count=4, created_at=NOW, state=JobState.CANCELLED))  # made nothing
    store.add(make_job(count=4, created_at=NOW, state=JobState.FAILED))
    store.add(make_job(count=2, created_at=NOW - DAY))  # yesterday
    store.add(make_job(count=2, created_at=NOW, guild_id=8))  # another server
    store.add(make_job(user_id=43, count=2, created_at=NOW))  # another member
    assert store.images_since(7, 42, NOW - 60) == 4
