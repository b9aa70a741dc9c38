"""Configuration from the environment and `.env`, validated once at start-up.

Every variable of the public contract is parsed here and nowhere else, so a bad value is reported
before anything slow (importing torch, loading the model, connecting to Discord) happens.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bot.image_size import ImageSize

DEFAULT_MODEL_ID = "Tongyi-MAI/Z-Image-Turbo"
DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"
DEFAULT_SAFETY_THRESHOLD = 0.5

# The model's official presets, the square one first so it is the default.
RECOMMENDED_SIZES = (
    "1024x1024,1152x896,896x1152,1152x864,864x1152,1248x832,832x1248,1280x720,720x1280,1344x576,576x1344"
)
MAX_STEPS = 50
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OFFLOAD_MODES = ("none", "model", "sequential")
QUANTIZE_MODES = ("none", "fp8")
ENHANCER_MODES = ("on", "off")
DTYPES = ("auto", "bfloat16", "float32")
WORKER_KINDS = ("local", "ray")
_ONE_DEVICE = r"auto|cpu|mps|cuda(:\d+)?"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


MAX_LORAS = 25  # Discord shows at most 25 choices for /imagine style
LORA_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
LORA_FORMAT = "name=org/repo[/file.safetensors][:weight] or name=/path/to/file.safetensors[:weight]"
MAX_LORA_WEIGHT = 2.0


@dataclass(frozen=True)
class LoraSource:
    """One LORAS entry: a style's name, where its weights are, and its default weight."""

    name: str
    weight: float = 1.0
    repo_id: str | None = None  # a Hugging Face repo ...
    filename: str | None = None  # ... optionally with the file inside it
    path: Path | None = None  # or a local file

    @property
    def source(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.repo_id}/{self.filename}" if self.filename else str(self.repo_id)


class ConfigError(ValueError):
    """A configuration variable has a value the bot cannot use."""

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        super().__init__(f"{variable}={value!r} is not valid: {allowed}")
        self.variable = variable


def turbo_default_steps() -> int:
    """The step count that gives Z-Image-Turbo its intended 8 transformer passes.

    diffusers 0.39 changed the schedule so that 8 steps means 8 passes; before that the
    recommendation was 9, of which the last did nothing.
    """
    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return 8
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return 8 if (major, minor) >= (0, 39) else 9


@dataclass(frozen=True)
class Settings:
    # Kept out of repr (and so out of str, logs and tracebacks that show the settings).
    discord_token: str | None = field(default=None, repr=False)
    model_id: str = DEFAULT_MODEL_ID
    model_revision: str = "main"
    output_dir: Path = Path("outputs")
    data_dir: Path = Path("data")
    image_sizes: tuple[ImageSize, ...] = field(
        default_factory=lambda: tuple(ImageSize.parse(s) for s in RECOMMENDED_SIZES.split(","))
    )
    default_steps: int = 8
    admin_user_ids: frozenset[int] = frozenset()
    dev_guild_id: int | None = None
    max_queue: int = 50
    max_jobs_per_user: int = 3
    device: str = "auto"
    # The parsed DEVICE list: one entry for the usual one-device shape; ("all",) until the model side
    # has counted the GPUs. Each entry gets its own PipelineService (see `for_device`).
    devices: tuple[str, ...] = ("auto",)
    allow_degraded: bool = False
    workers: str = "local"
    metrics_port: int | None = None
    dtype: str = "auto"
    offload: str = "none"
    attention_backend: str | None = None
    compile: bool | None = None  # None: decided by the device (on for CUDA, off elsewhere)
    quantize: str = "none"
    # BF16_COPY=1: load the transformer from a bf16 copy made once in DATA_DIR (bot/model/bf16_copy.py).
    bf16_copy: bool = False
    enhancer: bool = True  # the prompt enhancer on the resident text encoder
    discord_api_base: str = DEFAULT_API_BASE
    discord_gateway_url: str | None = None
    log_level: str = "INFO"
    retention_days: int = 30
    # Repo id of the image safety classifier; None: the check is off (SAFETY_MODEL set to empty).
    safety_model: str | None = DEFAULT_SAFETY_MODEL
    safety_threshold: float = DEFAULT_SAFETY_THRESHOLD
    loras: tuple[LoraSource, ...] = ()

    @property
    def default_size(self) -> ImageSize:
        return self.image_sizes[0]

    @property
    def safety_check_text(self) -> str:
        """The image safety check in a few words, for the banner and /status."""
        if not self.safety_model:
            return "off"
        return f"{self.safety_model}, threshold {self.safety_threshold:g}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse and validate every variable; raise ConfigError naming the first bad one."""
        env = _Reader(os.environ if environ is None else environ)
        default_steps = env.integer("DEFAULT_STEPS", turbo_default_steps(), 1, MAX_STEPS)
        devices = env.devices("DEVICE")
        return cls(
            discord_token=env.text("DISCORD_TOKEN"),
            model_id=env.pattern("MODEL_ID", DEFAULT_MODEL_ID, r"[\w.-]+/[\w.-]+", "a repo id like org/name"),
            model_revision=env.text("MODEL_REVISION") or "main",
            output_dir=Path(env.text("OUTPUT_DIR") or "outputs"),
            data_dir=Path(env.text("DATA_DIR") or "data"),
            image_sizes=env.sizes("IMAGE_SIZES", RECOMMENDED_SIZES),
            default_steps=default_steps,
            admin_user_ids=env.snowflakes("ADMIN_USER_IDS"),
            dev_guild_id=env.snowflake("DEV_GUILD_ID"),
            max_queue=env.integer("MAX_QUEUE", 50, 1, 10_000),
            max_jobs_per_user=env.integer("MAX_JOBS_PER_USER", 3, 1, 1_000),
            device=",".join(devices),
            devices=devices,
            allow_degraded=bool(env.flag("ALLOW_DEGRADED")),
            workers=env.choice("WORKERS", "local", WORKER_KINDS),
            metrics_port=env.port("METRICS_PORT"),
            dtype=env.choice("DTYPE", "auto", DTYPES, why_not={"float16": "float16 gives black images"}),
            offload=env.choice("OFFLOAD", "none", OFFLOAD_MODES),
            attention_backend=env.text("ATTENTION_BACKEND"),
            compile=env.flag("COMPILE"),
            quantize=env.choice("QUANTIZE", "none", QUANTIZE_MODES),
            bf16_copy=bool(env.flag("BF16_COPY")),
            enhancer=env.choice("ENHANCER", "on", ENHANCER_MODES) == "on",
            discord_api_base=env.url("DISCORD_API_BASE", DEFAULT_API_BASE, ("http://", "https://")) or DEFAULT_API_BASE,
            discord_gateway_url=env.url("DISCORD_GATEWAY_URL", None, ("ws://", "wss://")),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            retention_days=env.integer("RETENTION_DAYS", 30, 0, 36_500),
            safety_model=env.optional_pattern(
                "SAFETY_MODEL",
                DEFAULT_SAFETY_MODEL,
                r"[\w.-]+/[\w.-]+",
                "a repo id like org/name, or empty to turn the image safety check off",
            ),
            safety_threshold=env.fraction("SAFETY_THRESHOLD", DEFAULT_SAFETY_THRESHOLD),
            loras=env.loras("LORAS"),
        )

    def for_device(self, device: str) -> Settings:
        """The settings one worker runs with: everything the same, on `device` alone."""
        return replace(self, device=device, devices=(device,))

    def require_token(self) -> str:
        if not self.discord_token:
            raise ConfigError(
                "DISCORD_TOKEN", "", "set it to your bot's token (Developer Portal > your app > Bot > Reset Token)"
            )
        return self.discord_token


class _Reader:
    """Reads one variable at a time and says exactly what is wrong with it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, raw, f"a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ConfigError(name, raw, f"a whole number from {low} to {high}")
        return value

    def choice(
        self,
        name: str,
        default: str,
        allowed: tuple[str, ...],
        *,
        upper: bool = False,
        why_not: Mapping[str, str] | None = None,
    ) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            reason = (why_not or {}).get(value)
            hint = f"one of {', '.join(allowed)}" + (f" ({reason})" if reason else "")
            raise ConfigError(name, raw, hint)
        return value

    def pattern(self, name: str, default: str, regex: str, allowed: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if not re.fullmatch(regex, raw):
            raise ConfigError(name, raw, allowed)
        return raw

    def optional_pattern(self, name: str, default: str, regex: str, allowed: str) -> str | None:
        """Unset gives the default; set to empty (`NAME=`) gives None, which turns the feature off."""
        if name not in self._env:
            return default
        raw = self._env[name].strip()
        if not raw:
            return None
        if not re.fullmatch(regex, raw):
            raise ConfigError(name, raw, allowed)
        return raw

    def fraction(self, name: str, default: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, raw, "a number from 0 to 1, e.g. 0.5") from None
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise ConfigError(name, raw, "a number from 0 to 1, e.g. 0.5")
        return value

    def flag(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None or raw.lower() == "auto":
            return None
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(name, raw, "auto, 1/true/yes/on or 0/false/no/off")

    def port(self, name: str) -> int | None:
        if self.text(name) is None:
            return None
        return self.integer(name, 0, 1, 65_535)

    def devices(self, name: str) -> tuple[str, ...]:
        """One device, `all` (every visible GPU), or a list of GPUs (`cuda:0,cuda:1`).

        Whether the GPUs exist is checked where torch is imported (bot/model/devices.py). `cpu` may be
        repeated (`cpu,cpu`): it tries the several-worker shape on one machine, and CPU workers share
        nothing that conflicts (each has its own copy of the model and its own thread). A GPU named twice
        would hold two copies of the model and make them take turns: refused."""
        raw = self.text(name)
        if raw is None:
            return ("auto",)
        value = raw.lower().replace(" ", "")
        if value == "all":
            return ("all",)
        parts = value.split(",")
        if len(parts) == 1:
            if not re.fullmatch(_ONE_DEVICE, value):
                raise ConfigError(name, raw, "auto, cpu, mps, cuda or cuda:N; all; or a list such as cuda:0,cuda:1")
            return (value,)
        for part in parts:
            if not re.fullmatch(r"cpu|mps|cuda:\d+", part):
                raise ConfigError(name, raw, f"{part or 'an empty entry'} in a list: name each GPU as cuda:N")
        kinds = sorted({part.split(":")[0] for part in parts})
        if len(kinds) > 1:
            # A CPU worker takes minutes where a GPU takes a second: the jobs it drew would wait for it.
            raise ConfigError(name, raw, f"{' and '.join(kinds)} mixed: list devices of one kind")
        repeated = sorted({part for part in parts if part != "cpu" and parts.count(part) > 1})
        if repeated:
            raise ConfigError(name, raw, f"{', '.join(repeated)} named twice: list each GPU once")
        return tuple(parts)

    def url(self, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is None:
            return default
        if not raw.startswith(schemes) or len(raw) <= len(raw.split("//")[0]) + 2:
            raise ConfigError(name, raw, f"a URL starting with {' or '.join(schemes)}")
        return raw.rstrip("/")

    def snowflake(self, name: str) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise ConfigError(name, raw, "a numeric Discord id (Developer Mode > right click > Copy ID)")
        return int(raw)

    def snowflakes(self, name: str) -> frozenset[int]:
        raw = self.text(name)
        if raw is None:
            return frozenset()
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ConfigError(name, raw, "comma-separated numeric Discord user ids")
        return frozenset(int(part) for part in parts)

    def sizes(self, name: str, default: str) -> tuple[ImageSize, ...]:
        raw = self.text(name) or default
        sizes: list[ImageSize] = []
        for part in raw.split(","):
            try:
                size = ImageSize.parse(part.strip())
            except ValueError as error:
                raise ConfigError(name, raw, str(error)) from None
            if size not in sizes:
                sizes.append(size)
        if len(sizes) > 25:
            raise ConfigError(name, raw, "at most 25 sizes (Discord shows at most 25 choices)")
        return tuple(sizes)

    def loras(self, name: str) -> tuple[LoraSource, ...]:
        raw = self.text(name)
        if raw is None:
            return ()
        loras: list[LoraSource] = []
        for entry in (part.strip() for part in raw.split(",")):
            if not entry:
                continue
            lora = parse_lora(entry)
            if lora is None:
                raise ConfigError(name, raw, f"entry {entry!r} should look like {LORA_FORMAT}")
            if any(other.name == lora.name for other in loras):
                raise ConfigError(name, raw, f"the name {lora.name!r} is used twice")
            loras.append(lora)
        if len(loras) > MAX_LORAS:
            raise ConfigError(name, raw, f"at most {MAX_LORAS} styles (Discord shows at most {MAX_LORAS} choices)")
        return tuple(loras)


def parse_lora(entry: str) -> LoraSource | None:
    """`name=source[:weight]`; None when the entry is malformed. A source that starts like a path
    (/, ./, ../, ~, a drive letter) or names an existing file is a local file; otherwise it is a
    Hugging Face repo id, optionally followed by the file's path inside the repository."""
    name, equals, rest = entry.partition("=")
    name, rest = name.strip(), rest.strip()
    if not equals or not re.fullmatch(LORA_NAME, name) or not rest:
        return None
    weight = 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head and re.fullmatch(r"[0-9]*\.?[0-9]+", tail.strip()):
        weight = float(tail)
        rest = head.strip()
        if not 0 < weight <= MAX_LORA_WEIGHT:
            return None
    expanded = Path(rest).expanduser()
    if rest.startswith(("/", "./", "../", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", rest) or expanded.is_file():
        return LoraSource(name, weight, path=expanded)
    parts = rest.split("/")
    if len(parts) < 2 or not all(re.fullmatch(r"[\w.-]+", part) for part in parts):
        return None
    filename = "/".join(parts[2:]) or None
    if filename is not None and not filename.endswith(".safetensors"):
        return None
    return LoraSource(name, weight, repo_id="/".join(parts[:2]), filename=filename)


def check_writable_folder(variable: str, folder: Path) -> None:
    """Create `folder` and write a file in it; ConfigError naming `variable` if that fails.

    Checked by writing, not os.access: root passes os.access everywhere, and read-only mounts,
    full disks and odd ACLs only show themselves on a real write.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            variable,
            str(folder),
            f"a folder the bot can create and write ({reason}); fix its permissions or point it elsewhere",
        ) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
