"""Where flagged images may be posted, end to end: finished jobs with their saved PNGs and safety flags
are put in a real job store, the real bot starts against the double, and restart recovery delivers them
into an age-restricted channel, a thread of one, plain channels under each server policy, a plain
thread and a DM. The flags come from the stored job, as after any restart."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bot.guild_settings import GuildSettings, NsfwPolicy
from bot.jobs.store import JobRecord, JobState, JobStore

RESTARTED = "here is your image (posted here because the bot restarted)."


def saved_pngs(output_dir: Path, name: str, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = output_dir / f"{name}-{index}.png"
        Image.new("RGB", (8, 8), (index * 60, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def all_saved(paths: list[str]) -> bool:
    return all(Path(path).is_file() for path in paths)


async def test_each_channel_and_policy_after_a_restart(start_bot, discord_api, tmp_path):
    api = discord_api
    output_dir, data_dir = tmp_path / "outputs", tmp_path / "data"
    output_dir.mkdir()
    alice = api.make_user("alice")
    spoiler_guild, allow_guild = api.add_guild("Spoiler Guild"), api.add_guild("Allow Guild")
    adults = api.add_channel("adults", nsfw=True)
    channels = {
        "adults": (api.guild_id, adults),
        "adults thread": (api.guild_id, api.add_thread(adults)),
        "block": (api.guild_id, api.channel_id),
        "block thread": (api.guild_id, api.add_thread(api.channel_id)),
        "spoiler": (spoiler_guild, api.add_channel("general", guild_id=spoiler_guild)),
        "allow": (allow_guild, api.add_channel("general", guild_id=allow_guild)),
        "dm": (None, api.dm_channel(alice)),
        "minors in adults": (api.guild_id, adults),
        "all withheld": (api.guild_id, api.channel_id),
        "made before the check": (api.guild_id, api.channel_id),
    }
    with JobStore(data_dir) as store:
        store.save_guild_settings(GuildSettings(int(spoiler_guild), nsfw_policy=NsfwPolicy.SPOILER))
        store.save_guild_settings(GuildSettings(int(allow_guild), nsfw_policy=NsfwPolicy.ALLOW))
        jobs = {}
        for case, (guild_id, channel_id) in channels.items():
            flags = {"all withheld": [True], "made before the check": []}.get(case, [False, True])
            count = max(1, len(flags))
            prompt = "two children playing" if case == "minors in adults" else f"a picture for {case}"
            record = store.add(
                JobRecord(
                    id=None,
                    user_id=int(alice.id),
                    guild_id=int(guild_id) if guild_id else None,
                    channel_id=int(channel_id),
                    prompt=prompt,
                    negative_prompt="",
                    width=8,
                    height=8,
                    steps=2,
                    seed=1,
                    guidance=0.0,
                    count=count,
                )
            )
            files = saved_pngs(output_dir, f"job{record.id}", count)
            store.update(record.id, state=JobState.DONE, output_files=files, seeds=list(range(count)), flagged=flags)
            jobs[case] = (record.id, channel_id, files)

    running = await start_bot(OUTPUT_DIR=str(output_dir), DATA_DIR=str(data_dir), DEV_GUILD_ID="")
    await api.wait_for(
        lambda: all(running.bot.store.get(job_id).state is JobState.DELIVERED for job_id, _, _ in jobs.values()),
        60,
    )

    def posted(case: str):
        job_id, channel_id, _ = jobs[case]
        [message] = [
            m
            for m in api.channel_messages(channel_id)
            if m.embeds and m.embeds[0]["footer"]["text"].startswith(f"Job {job_id} ")
        ]
        assert message.content.startswith(f"<@{alice.id}> {RESTARTED}")
        note = message.content[len(f"<@{alice.id}> {RESTARTED}") :].strip()
        return [a.filename for a in message.attachments], note

    def names(case: str, *indices: int, spoiler: tuple[int, ...] = ()) -> list[str]:
        files = jobs[case][2]
        return [("SPOILER_" if index in spoiler else "") + Path(files[index]).name for index in indices]

    # Age-restricted channels, and threads of them, show images as they are.
    assert posted("adults") == (names("adults", 0, 1), "")
    assert posted("adults thread") == (names("adults thread", 0, 1), "")
    # Elsewhere the server's policy decides; block is the default, and DMs have no server.
    withheld = "🔞 1 of 2 images were withheld: the safety check flagged them. An age-restricted channel shows them."
    assert posted("block") == (names("block", 0), withheld)
    assert posted("block thread") == (names("block thread", 0), withheld)
    assert posted("dm") == (names("dm", 0), withheld)
    assert posted("spoiler") == (
        names("spoiler", 0, 1, spoiler=(1,)),
        "⚠️ Content note: the safety check flagged 1 of 2 images as possibly NSFW; they are shown as spoilers.",
    )
    assert posted("allow") == (names("allow", 0, 1), "")
    # A flagged image from a prompt that mentions minors is posted nowhere, not even here.
    assert posted("minors in adults") == (
        names("minors in adults", 0),
        "🚫 1 of 2 images were withheld and will not be posted anywhere: the safety check flagged them and the "
        "prompt mentions minors.",
    )
    assert posted("all withheld") == (
        [],
        "🔞 The image was withheld: the safety check flagged it. An age-restricted channel shows it.",
    )
    assert posted("made before the check") == (names("made before the check", 0), "")

    # Withheld images are still saved, and every job counts as delivered.
    assert all_saved([path for _, _, files in jobs.values() for path in files])
    assert running.bot.store.stats().jobs_done == len(jobs)
