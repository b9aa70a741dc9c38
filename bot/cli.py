"""The `zimage-bot` command line: run, cache-check, download, generate.

Heavy imports (huggingface_hub, torch, diffusers, discord.py) happen inside the commands, after `.env`
is applied, because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is first imported and a
configuration error should be reported in a fraction of a second, not after loading torch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from dotenv import load_dotenv

from bot.generation import GenerationError, GenerationRequest, random_seed
from bot.image_size import ImageSize
from bot.settings import ConfigError, Settings, check_writable_folder, configure_logging

log = logging.getLogger("zimage-bot")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a command stopped by Ctrl+C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zimage-bot",
        description="A Discord bot that turns /imagine into pictures from Z-Image-Turbo on your own GPU.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="load the model, then connect to Discord (the default)")
    commands.add_parser("cache-check", help="report on the model in the Hugging Face cache (exit 1 if incomplete)")
    commands.add_parser("download", help="fetch the model into the cache (resumable)")
    generate = commands.add_parser("generate", help="make one image locally, without Discord")
    generate.add_argument("prompt", help="what to draw")
    generate.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 16 (default: first IMAGE_SIZES)")
    generate.add_argument("--seed", type=int, help="0..4294967295 (default: random)")
    generate.add_argument("--steps", type=int, help="inference steps (default: DEFAULT_STEPS)")
    generate.add_argument("--negative-prompt", default="", help="what to avoid (needs --guidance above 0)")
    generate.add_argument("--guidance", type=float, default=0.0, help="CFG scale (Turbo is made for 0)")
    generate.add_argument("--out", type=Path, help="where to write the PNG (default: a new file in OUTPUT_DIR)")
    generate.add_argument(
        "--enhance", action="store_true", help="rewrite the prompt with the prompt enhancer first (ENHANCER=on)"
    )
    return parser


def _size(text: str) -> ImageSize:
    try:
        return ImageSize.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_dotenv(Path.cwd() / ".env", override=False)  # real environment variables win
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    command = args.command or "run"
    # Until the bot's event loop takes over SIGTERM and SIGINT, both stop the command the way Ctrl+C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if command == "cache-check":
            return cache_check(settings)
        if command == "download":
            return download(settings)
        if command == "generate":
            return generate(settings, args)
        return run(settings)
    except KeyboardInterrupt:
        # A stop asked for before the bot connected (while loading, say) is a clean stop, not a crash.
        what = "before connecting to Discord" if command == "run" else command
        print(f"zimage-bot: stopped ({what})", file=sys.stderr)
        return EXIT_OK if command == "run" else EXIT_INTERRUPTED


def cache_check(settings: Settings) -> int:
    """The pipeline's cache report, then the safety model's (when the check is on) and the styles';
    0 when all are complete."""
    reports = _cache_reports(settings)
    print("\n\n".join(report.to_text() for report in reports))
    styles_ok = _print_styles(settings)
    return EXIT_OK if all(report.complete for report in reports) and styles_ok else EXIT_FAILURE


def _print_styles(settings: Settings) -> bool:
    """One line for each LORAS style: where its weights are, or what is missing. True if all are there."""
    if not settings.loras:
        return True
    from bot.model.styles import lora_report

    rows = lora_report(settings.loras)
    for name, text, usable in rows:
        print(f"Style {name}: {text}" if usable else f"Style {name}: MISSING: {text}")
    return all(usable for _, _, usable in rows)


def download(settings: Settings) -> int:
    """Fetch the pipeline, the safety model (when the check is on) and the styles, then print the cache reports."""
    from bot.model.cache_report import CLASSIFIER, CLASSIFIER_PATTERNS, PIPELINE, inspect_cache
    from bot.model.download import DownloadError, download_model, offline
    from bot.model.styles import StyleError, download_lora

    wanted: list[tuple[str, str, str, list[str] | None, str]] = [
        (settings.model_id, settings.model_revision, PIPELINE, None, "")
    ]
    if settings.safety_model:
        wanted.append(
            (settings.safety_model, "main", CLASSIFIER, CLASSIFIER_PATTERNS, "the safety model (SAFETY_MODEL) ")
        )
    for model_id, revision, kind, patterns, role in wanted:
        if offline() and inspect_cache(model_id, revision, kind=kind).complete:
            continue  # nothing to fetch, and no way to ask the Hub for a newer revision
        try:
            download_model(model_id, revision, allow_patterns=patterns)
        except DownloadError as error:
            print(f"zimage-bot: {role}{error}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        for lora in settings.loras:
            download_lora(lora)
    except StyleError as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return cache_check(settings)


def _cache_reports(settings: Settings) -> list:
    from bot.model.cache_report import CLASSIFIER, inspect_cache

    reports = [inspect_cache(settings.model_id, settings.model_revision)]
    if settings.safety_model:
        reports.append(inspect_cache(settings.safety_model, "main", kind=CLASSIFIER))
    return reports


def generate(settings: Settings, args: argparse.Namespace) -> int:
    from bot.generation import parameters_text, validate_request
    from bot.image_files import encode_png, save_png
    from bot.settings import MAX_STEPS

    request = GenerationRequest(
        prompt=args.prompt,
        size=args.size or settings.default_size,
        steps=args.steps if args.steps is not None else settings.default_steps,
        seed=args.seed if args.seed is not None else random_seed(),
        negative_prompt=args.negative_prompt,
        guidance=args.guidance,
        enhance=args.enhance,
    )
    try:
        request = validate_request(request, max_steps=MAX_STEPS)
    except GenerationError as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.out is None:
        try:
            check_writable_folder("OUTPUT_DIR", settings.output_dir)
        except ConfigError as error:
            print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        services = _load_services(settings, warm_up=False, first_only=True)
    except ConfigError as error:
        print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if not services:
        return EXIT_FAILURE
    service = services[0]
    try:
        result = service.generate(request)
    except GenerationError as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        service.close()
    image, seed = result.images[0], result.seeds[0]
    if request.enhance:
        if result.enhanced:
            log.info("enhanced prompt: %s", result.prompt_used)
        else:
            log.warning("prompt not enhanced: %s", result.enhancement_note)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(encode_png(image, parameters_text(request, seed, settings.model_id, result.prompt_used)))
        path = args.out
    else:
        path, _ = save_png(image, request, seed, settings.model_id, settings.output_dir, result.prompt_used)
    log.info("%s in %.1f s (seed %d)", request.size, result.seconds, seed)
    if result.flagged[0]:
        score = result.nsfw_scores[0]
        log.warning(
            "the safety check flagged this image (%s)", "check failed" if score is None else f"nsfw {score:.2f}"
        )
    print(path)
    return EXIT_OK


def run(settings: Settings) -> int:
    try:
        token = settings.require_token()
    except ConfigError as error:
        print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        check_writable_folder("OUTPUT_DIR", settings.output_dir)
    except ConfigError as error:
        print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    from bot.jobs.store import JobStore, StoreError

    # The job store is opened first: an unusable DATA_DIR is reported before minutes of loading.
    try:
        store = JobStore(settings.data_dir)
    except StoreError as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.workers == "ray":
        return _run_on_ray(settings, store, token)
    try:
        services = _load_services(settings, warm_up=True)
    except ConfigError as error:
        store.close()
        print(f"zimage-bot: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        store.close()
        raise
    if not services:
        store.close()
        return EXIT_FAILURE
    import aiohttp
    import discord

    from bot.discord_bot.client import LoginRejected, run_bot

    try:
        run_bot(settings, services, store, token)
    except LoginRejected as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, aiohttp.ClientError, discord.DiscordException) as error:
        # Discord unreachable or failing (a wrong DISCORD_API_BASE, no network, a Discord outage).
        log.debug("connecting to Discord failed", exc_info=True)
        print(
            f"zimage-bot: could not connect to Discord at {settings.discord_api_base} ({type(error).__name__}: "
            f"{error}); check the network and DISCORD_API_BASE / DISCORD_GATEWAY_URL",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        for service in services:
            service.close()
        store.close()
    return EXIT_OK


def _run_on_ray(settings: Settings, store, token: str) -> int:
    """WORKERS=ray: the model lives in Ray actors; this process keeps Discord, the store and the queue."""
    import time

    try:
        from bot.jobs.ray_workers import RayWorkers
    except ImportError:
        store.close()
        print('zimage-bot: configuration error: WORKERS=ray needs Ray: pip install "zimage-bot[ray]"', file=sys.stderr)
        return EXIT_CONFIG
    from bot.discord_bot.client import LoginRejected, run_bot
    from bot.jobs.workers import WorkerPool

    print(f"zimage-bot: model {settings.model_id} (revision {settings.model_revision}) on Ray workers", file=sys.stderr)
    print(f"zimage-bot: outputs saved to {settings.output_dir.resolve()}", file=sys.stderr)
    pool = WorkerPool()
    cluster = RayWorkers(settings, pool)
    started = time.perf_counter()
    try:
        cluster.connect()
        cluster.start(wait_for=1)
    except Exception as error:  # Ray's own errors: no head at RAY_ADDRESS, no worker could load
        print(f"zimage-bot: Ray workers could not start: {error}", file=sys.stderr)
        cluster.stop()
        store.close()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        cluster.stop()
        store.close()
        raise
    log.info(
        "model ready in %.1f s (%d Ray worker(s); more join as they load)",
        time.perf_counter() - started,
        len(pool.workers),
    )
    cluster.watch_in_background()
    try:
        run_bot(settings, [], store, token, workers=pool)
    except LoginRejected as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        cluster.stop()
        store.close()
    return EXIT_OK


def _load_services(settings: Settings, *, warm_up: bool, first_only: bool = False) -> list:
    """Print the banner, load the model on every device (in parallel), log `model ready`.

    Raises ConfigError for a DEVICE naming a GPU that is not there; returns [] (after saying why) when
    the model cannot be loaded."""
    from bot.model.cache_report import hub_cache_root
    from bot.model.download import DownloadError

    print(f"zimage-bot: model {settings.model_id} (revision {settings.model_revision})", file=sys.stderr)
    print(f"zimage-bot: safety check {settings.safety_check_text}", file=sys.stderr)
    print(f"zimage-bot: Hugging Face cache {hub_cache_root()}", file=sys.stderr)
    print(f"zimage-bot: outputs saved to {settings.output_dir.resolve()}", file=sys.stderr)
    from bot.model.devices import combined_report, create_services, load_all, resolve_devices
    from bot.model.pipeline_service import ModelLoadError

    devices = resolve_devices(settings)
    try:
        services = create_services(settings, devices[:1] if first_only else devices)
    except ModelLoadError as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        return []
    first = services[0]
    shown = ", ".join(str(service.device) for service in services)
    print(
        f"zimage-bot: device {shown}, dtype {str(first.dtype).removeprefix('torch.')}, "
        f"offload {settings.offload}, compile {'on' if first.compile else 'off'}",
        file=sys.stderr,
    )
    try:
        services = load_all(services, warm_up=warm_up, allow_degraded=settings.allow_degraded)
    except (ModelLoadError, DownloadError) as error:
        print(f"zimage-bot: {error}", file=sys.stderr)
        for service in services:
            service.close()
        return []
    report = combined_report(services)
    source = "local cache" if report.from_cache else "downloaded"
    log.info(
        "model ready in %.1f s (%s; load %.1f s, warm-up %.1f s; prompt enhancer %s)%s",
        report.load_seconds + report.warmup_seconds,
        source,
        report.load_seconds,
        report.warmup_seconds,
        report.enhancer,
        f" on {len(services)} devices, loaded in parallel" if len(services) > 1 else "",
    )
    return services


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
