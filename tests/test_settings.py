"""Every configuration variable is validated at start-up with an error that says what to change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.image_size import ImageSize
from bot.settings import ConfigError, Settings, turbo_default_steps
from conftest import tiny_env


def test_defaults_follow_the_contract():
    settings = Settings.from_env({})
    assert settings.model_id == "Tongyi-MAI/Z-Image-Turbo"
    assert settings.model_revision == "main"
    assert settings.default_size == ImageSize(1024, 1024)
    assert ImageSize(1344, 576) in settings.image_sizes and len(settings.image_sizes) == 11
    assert settings.default_steps == turbo_default_steps() == 8  # diffusers >= 0.39 is installed
    assert settings.offload == "none" and settings.device == "auto" and settings.compile is None
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert settings.discord_gateway_url is None
    assert settings.admin_user_ids == frozenset() and settings.dev_guild_id is None
    assert settings.log_level == "INFO"


def test_values_are_parsed():
    settings = Settings.from_env(
        {
            "IMAGE_SIZES": "512x512, 768x512,512x512",
            "ADMIN_USER_IDS": "1, 22,333",
            "DEV_GUILD_ID": "42",
            "MAX_QUEUE": "7",
            "MAX_JOBS_PER_USER": "2",
            "COMPILE": "yes",
            "OFFLOAD": "Sequential",
            "LOG_LEVEL": "debug",
            "DISCORD_API_BASE": "http://127.0.0.1:5000/api/v10/",
            "DISCORD_GATEWAY_URL": "ws://127.0.0.1:5000/gateway",
            "DTYPE": "float32",
            "DEVICE": "cuda:1",
        }
    )
    assert settings.image_sizes == (ImageSize(512, 512), ImageSize(768, 512))
    assert settings.admin_user_ids == {1, 22, 333}
    assert settings.dev_guild_id == 42
    assert (settings.max_queue, settings.max_jobs_per_user) == (7, 2)
    assert settings.compile is True and settings.offload == "sequential" and settings.log_level == "DEBUG"
    assert settings.discord_api_base == "http://127.0.0.1:5000/api/v10"
    assert settings.dtype == "float32" and settings.device == "cuda:1"


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("IMAGE_SIZES", "1000x1000", "multiples of 16"),
        ("IMAGE_SIZES", "big", "WIDTHxHEIGHT"),
        ("IMAGE_SIZES", "16x16", "from 64 to 2048"),
        ("DEFAULT_STEPS", "0", "from 1 to 50"),
        ("DEFAULT_STEPS", "eight", "whole number"),
        ("MAX_QUEUE", "-1", "whole number"),
        ("MAX_JOBS_PER_USER", "0", "whole number"),
        ("ADMIN_USER_IDS", "123,abc", "numeric Discord user ids"),
        ("DEV_GUILD_ID", "my-guild", "numeric Discord id"),
        ("DEVICE", "gpu", "auto, cpu, mps, cuda"),
        ("DTYPE", "float16", "black images"),
        ("OFFLOAD", "all", "none, model, sequential"),
        ("QUANTIZE", "int4", "one of none, fp8"),
        ("COMPILE", "maybe", "auto, 1/true"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("DISCORD_API_BASE", "discord.com/api", "http://"),
        ("DISCORD_GATEWAY_URL", "http://x", "ws://"),
        ("MODEL_ID", "no-slash", "org/name"),
        ("RETENTION_DAYS", "-5", "whole number"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(variable, value, hint):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}={value!r} is not valid")
    assert hint in message
    assert caught.value.variable == variable


def test_more_than_25_sizes_are_refused():
    sizes = ",".join(f"{64 + 16 * i}x64" for i in range(26))
    with pytest.raises(ConfigError, match="at most 25"):
        Settings.from_env({"IMAGE_SIZES": sizes})


def test_missing_token_is_only_required_for_run():
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        settings.require_token()
    assert Settings.from_env({"DISCORD_TOKEN": "abc"}).require_token() == "abc"


def _cli(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_run_without_token_exits_2_before_loading_the_model(tmp_path):
    result = _cli(["run"], tiny_env(tmp_path, DISCORD_TOKEN=""), tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN" in result.stderr
    assert "model ready" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line


def test_config_error_exits_2_with_one_line(tmp_path):
    result = _cli(["cache-check"], tiny_env(tmp_path, OFFLOAD="everything"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "zimage-bot: configuration error: OFFLOAD='everything' is not valid: one of none, model, sequential"
    )


def test_dotenv_is_read_and_real_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("OFFLOAD=bogus-from-dotenv\nLOG_LEVEL=nonsense\n")
    env = tiny_env(tmp_path)
    env["LOG_LEVEL"] = "INFO"  # the real environment overrides the file's bad value...
    result = _cli(["cache-check"], env, tmp_path)
    # ...but OFFLOAD only comes from .env, so the file was read.
    assert result.returncode == 2
    assert "OFFLOAD='bogus-from-dotenv'" in result.stderr


def test_the_token_is_in_no_repr_or_str():
    settings = Settings.from_env({"DISCORD_TOKEN": "MTIz.secret-token-value"})
    assert settings.discord_token == "MTIz.secret-token-value"
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert "secret-token-value" not in text


@pytest.mark.parametrize("command", [["run"], ["generate", "a cat"]])
def test_unwritable_output_dir_exits_2_naming_it_before_loading(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = tiny_env(tmp_path, DISCORD_TOKEN="abc", OUTPUT_DIR=str(blocker / "outputs"))
    result = _cli(command, env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"zimage-bot: configuration error: OUTPUT_DIR='{blocker / 'outputs'}' is not valid")
    assert "a folder the bot can create and write" in lines[0]
    assert not (tmp_path / "data").exists()  # not even the job store was opened


def test_output_dir_is_created_when_missing(tmp_path):
    from bot.settings import check_writable_folder

    folder = tmp_path / "new" / "outputs"
    check_writable_folder("OUTPUT_DIR", folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_discord_unreachable_at_start_is_one_line_and_exit_1(tmp_path, hub_cache):
    env = tiny_env(tmp_path, hub_cache, DISCORD_TOKEN="abc", DISCORD_API_BASE="http://127.0.0.1:9/api/v10")
    result = _cli(["run"], env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "could not connect to Discord" in line]
    assert line.startswith("zimage-bot: could not connect to Discord at http://127.0.0.1:9/api/v10 (")
    assert "DISCORD_API_BASE" in line
    assert result.stderr.index("model ready") < result.stderr.index(line)
