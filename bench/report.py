"""The benchmark's results (JSON) as markdown tables, and the issue's targets checked against them.

Pure functions of the results dictionary that bench/run_benchmark.py writes, so they are tested on
CPU with made-up figures and can re-render a saved results.json: `python -m bench.report results.json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SIZES = ("1024x1024", "1344x576")  # what the targets speak of; a results file may name its own

# Columns of the main table: (phase in the results, heading).
MAIN_COLUMNS = (
    ("baseline", "plain diffusers"),
    ("ours", "ours, first start"),
    ("ours_restart", "ours, restart"),
    ("ours_eager", "ours, COMPILE=0"),
)
OFFLOAD_ROWS = (("ours", "none"), ("offload_model", "model"), ("offload_sequential", "sequential"))
# Phases of the same service with one option changed, shown with the phase they differ from.
VARIANT_PHASES = (
    ("ours_restart", "restart (default)"),
    ("ours", "first start (default)"),
    ("ours_dynamic", "first start, compile dynamic=True"),
    ("ours_cudnn", "first start, ATTENTION_BACKEND=_native_cudnn"),
)


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured


def get(results: dict, phase: str, *keys: str):
    """results["phases"][phase][key][key]..., or None where any part is missing or the phase failed."""
    value = results.get("phases", {}).get(phase)
    if not isinstance(value, dict) or value.get("status") != "ok":
        return None
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def sizes_of(results: dict) -> tuple[str, str]:
    """The square (targets) and wide preset of this run: the tiny smoke test uses small ones."""
    square, wide = (results.get("settings", {}).get("sizes") or SIZES)[:2]
    return square, wide


def seconds(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def gib(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _sum(*values):
    return None if any(value is None for value in values) else sum(values)


def _phase_state(results: dict, phase: str) -> str | None:
    """'failed', 'skipped' or 'timeout' when the phase did not give figures; None when it did."""
    entry = results.get("phases", {}).get(phase)
    if entry is None:
        return "not run"
    status = entry.get("status")
    return None if status == "ok" else status


def _row(results: dict, label: str, columns, value: Callable[[str], str], *, column_state: bool = True) -> str:
    """One table row; a column whose phase gave no figures says why (failed, timeout, skipped)."""
    cells = []
    for phase, _ in columns:
        state = _phase_state(results, phase) if column_state else None
        if state is None:
            cells.append(value(phase))
        else:
            cells.append("–" if state == "not run" else state)
    return f"| {label} | " + " | ".join(cells) + " |"


def main_table(results: dict) -> list[str]:
    steps = results.get("settings", {}).get("steps", 8)
    repeats = results.get("settings", {}).get("repeats", 5)
    jobs = results.get("settings", {}).get("queue_jobs", 20)
    square, wide = sizes_of(results)
    columns = MAIN_COLUMNS
    lines = [
        "| what | " + " | ".join(heading for _, heading in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]

    def row(label: str, value: Callable[[str], str], column_state: bool = True) -> None:
        lines.append(_row(results, label, columns, value, column_state=column_state))

    cold = {"baseline": "baseline_cold", "ours_restart": "ours_cold"}
    row("process start to ready, warm page cache (s)", lambda p: seconds(get(results, p, "ready_s")))
    row(
        "process start to ready, page cache dropped (s)",
        lambda p: (_phase_state(results, cold[p]) or seconds(get(results, cold[p], "ready_s"))) if p in cold else "–",
        column_state=False,
    )
    row("imports, from process start (s)", lambda p: seconds(get(results, p, "imports_s")))
    row("load alone (s)", lambda p: seconds(get(results, p, "load_s")))
    row("warm-up (s)", lambda p: seconds(get(results, p, "warmup_s")) if p != "baseline" else "none")
    row(
        "load + warm-up (s)",
        lambda p: seconds(_sum(get(results, p, "load_s"), get(results, p, "warmup_s") if p != "baseline" else 0.0)),
    )
    for size in (square, wide):
        row(f"first image after ready, {size} (s)", lambda p, s=size: seconds(get(results, p, "first_image_s", s)))
        row(
            f"steady {size}, median of {repeats} (s)",
            lambda p, s=size: seconds(get(results, p, "steady_s", s)),
        )
    row(f"of which without the VAE decode, {square} (s)", lambda p: seconds(get(results, p, "latent_only_s")))
    row(f"queue of {jobs} jobs, PNGs encoded and saved (images/s)", lambda p: _queue_cell(results, p))
    row("peak GPU memory allocated / reserved (GiB)", lambda p: _memory_cell(results, p))
    row("host memory of its own after ready (GiB)", lambda p: gib(get(results, p, "host_anonymous_after_ready_gib")))
    row("peak host RSS, incl. mapped weight files (GiB)", lambda p: gib(get(results, p, "max_rss_gib")))
    lines.append("")
    lines.append(
        f"{steps} steps, guidance 0, batch 1, bf16; prompts of different lengths, a new one for every image. "
        '"first start": empty compile cache; "restart": the same DATA_DIR again (warm compile cache). '
        "The page-cache-dropped row is the baseline and ours with a warm compile cache."
    )
    return lines


def _queue_cell(results: dict, phase: str) -> str:
    rate = get(results, phase, "queue", "images_per_s")
    if rate is None:
        return "–"
    steady = get(results, phase, "steady_s", sizes_of(results)[0])
    share = f" ({rate * steady:.0%} of 1/steady)" if steady else ""
    return f"{rate:.2f}{share}"


def _memory_cell(results: dict, phase: str) -> str:
    allocated = get(results, phase, "peak_allocated_gib")
    reserved = get(results, phase, "peak_reserved_gib")
    return "–" if allocated is None else f"{gib(allocated)} / {gib(reserved)}"


# Starts compared by where their compiled code and transformer weights came from.
RESTART_ROWS = (
    ("ours", "first start (empty DATA_DIR)"),
    ("ours_restart", "restart"),
    ("ours_bf16_copy", "BF16_COPY=1, first start (makes the copy)"),
    ("ours_bf16_copy_restart", "BF16_COPY=1, restart"),
    ("ours_cold", "restart, page cache dropped"),
    ("ours_bf16_copy_cold", "BF16_COPY=1, restart, page cache dropped"),
)


def restart_table(results: dict) -> list[str]:
    """Start-up of each start: imports, load, warm-up, and what it reused from DATA_DIR."""
    lines = [
        "| start | start to ready (s) | imports (s) | load (s) | warm-up (s) | compiled code | transformer |",
        "|---|---|---|---|---|---|---|",
    ]
    shown = False
    for phase, label in RESTART_ROWS:
        if phase not in results.get("phases", {}):
            continue
        shown = True
        state = _phase_state(results, phase)
        if state:
            lines.append(f"| {label} | {state} | | | | | |")
            continue
        copy = get(results, phase, "transformer_copy") or "off"
        source = {"made": "cache (fp32), copy made", "used": "bf16 copy"}.get(copy, "cache (fp32)")
        lines.append(
            f"| {label} | {seconds(get(results, phase, 'ready_s'))} | {seconds(get(results, phase, 'imports_s'))} "
            f"| {seconds(get(results, phase, 'load_s'))} | {seconds(get(results, phase, 'warmup_s'))} "
            f"| {get(results, phase, 'compiled_code') or '–'} | {source} |"
        )
    return lines if shown else []


def offload_table(results: dict) -> list[str]:
    square, _ = sizes_of(results)
    lines = [
        f"| OFFLOAD | start to ready (s) | load (s) | warm-up (s) | first image (s) | steady {square} (s) "
        "| peak GPU allocated / reserved (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, mode in OFFLOAD_ROWS:
        state = _phase_state(results, phase)
        if state:
            lines.append(f"| {mode} | {state} | | | | | |")
            continue
        lines.append(
            f"| {mode} | {seconds(get(results, phase, 'ready_s'))} | {seconds(get(results, phase, 'load_s'))} "
            f"| {seconds(get(results, phase, 'warmup_s'))} | {seconds(get(results, phase, 'first_image_s', square))} "
            f"| {seconds(get(results, phase, 'steady_s', square))} | {_memory_cell(results, phase)} |"
        )
    return lines


def variant_table(results: dict) -> list[str]:
    phases = results.get("phases", {})
    variants = [phase for phase, _ in VARIANT_PHASES[1:] if phase in phases and phase not in ("ours", "ours_restart")]
    if not variants:
        return []
    square, wide = sizes_of(results)
    lines = [
        f"| variant | load (s) | warm-up (s) | first image {square} (s) | steady {square} (s) | steady {wide} (s) |",
        "|---|---|---|---|---|---|",
    ]
    for phase, label in VARIANT_PHASES:
        if phase not in phases:
            continue
        state = _phase_state(results, phase)
        if state:
            lines.append(f"| {label} | {state} | | | | |")
            continue
        lines.append(
            f"| {label} | {seconds(get(results, phase, 'load_s'))} | {seconds(get(results, phase, 'warmup_s'))} "
            f"| {seconds(get(results, phase, 'first_image_s', square))} "
            f"| {seconds(get(results, phase, 'steady_s', square))} "
            f"| {seconds(get(results, phase, 'steady_s', wide))} |"
        )
    return lines


IMAGE_TO_IMAGE_PHASES = (
    ("baseline_img2img", "plain diffusers (from_pipe)"),
    ("ours", "ours"),
    ("img2img", "ours (again)"),
    ("img2img_offload", "OFFLOAD=model"),
)


def image_to_image_table(results: dict) -> list[str]:
    """Image-to-image at the first size and its Upscale, beside text-to-image of the same phase."""
    rows = [(phase, label) for phase, label in IMAGE_TO_IMAGE_PHASES if get(results, phase, "image_to_image")]
    if not rows:
        return []
    square, _ = sizes_of(results)
    lines = [
        f"| phase | text-to-image {square} steady (s) | image-to-image (size, strength, steps) | first / steady (s) "
        "| peak GPU (GiB) | Upscale (size, strength, steps) | first / steady (s) | peak GPU (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, label in rows:
        cells = [label, seconds(get(results, phase, "steady_s", square))]
        for kind in ("img2img", "upscale"):
            entry = get(results, phase, "image_to_image", kind) or {}
            cells += [
                f"{entry.get('size', '?')}, {entry.get('strength', '?')}, {entry.get('steps_run', '?')}",
                f"{seconds(entry.get('first_s'))} / {seconds(entry.get('steady_s'))}",
                gib(entry.get("peak_allocated_gib")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def profile_table(results: dict) -> list[str]:
    """CUDA kernel time of one steady image of ours, by kind of kernel."""
    profile = get(results, "ours", "experiments")
    if not profile or not profile.get("kernel_s_by_kind"):
        return []
    total = sum(profile["kernel_s_by_kind"].values())
    lines = [
        f"One {sizes_of(results)[0]} image under the profiler: {seconds(profile.get('profiled_image_s'))} s wall, "
        f"{seconds(total)} s of CUDA kernels.",
        "",
        "| kernels | s | share |",
        "|---|---|---|",
    ]
    for kind, kind_seconds in profile["kernel_s_by_kind"].items():
        lines.append(f"| {kind} | {kind_seconds:.3f} | {kind_seconds / total:.0%} |")
    return lines


def safety_table(results: dict) -> list[str]:
    """The image safety check's cost (ours_safety): with and without it in one process, and its memory."""
    if "ours_safety" not in results.get("phases", {}):
        return []
    state = _phase_state(results, "ours_safety")
    figures = get(results, "ours_safety", "safety")
    if state or not isinstance(figures, dict) or "on_s" not in figures:
        reason = state or (figures or {}).get("error", "no figures")
        return [f"Not measured: {reason}."]
    square, _ = sizes_of(results)
    rounds = len(figures.get("on_all_s") or [])

    def ms(value) -> str:
        return "–" if value is None else f"{value * 1000:.1f}"

    lines = [
        f"| {figures.get('model')} | with the check | without | cost |",
        "|---|---|---|---|",
        f"| steady {square}, median of {rounds} each, alternating (s) | {seconds(figures['on_s'])} "
        f"| {seconds(figures['off_s'])} | {figures['cost']:+.1%} |",
        f"| the check inside those jobs (ms) | {ms(figures.get('check_in_job_s'))} | | |",
        f"| the check alone, as jobs run it, 1 image / 4 images (ms) | {ms(figures.get('check_alone_1_s'))} / "
        f"{ms(figures.get('check_alone_4_s'))} | | |",
    ]
    if figures.get("check_alone_pil_1_s") is not None:
        lines += [
            f"| the check alone with the processor on the PIL picture, 1 image / 4 images (ms) "
            f"| {ms(figures.get('check_alone_pil_1_s'))} / {ms(figures.get('check_alone_pil_4_s'))} | | |",
            f"| preprocessing one picture: on the device / the processor on PIL (ms) "
            f"| {ms(figures.get('preprocess_device_s'))} / {ms(figures.get('preprocess_pil_s'))} | | |",
        ]
    if figures.get("job_peak_on_gib") is not None:
        lines.append(
            f"| peak GPU memory of a job (GiB) | {figures['job_peak_on_gib']:.2f} | {figures['job_peak_off_gib']:.2f} "
            f"| {figures['job_peak_on_gib'] - figures['job_peak_off_gib']:+.2f} |"
        )
    lines.append(
        f"| resident weights / the model's file (GiB) | {figures['weights_gib']:.3f} / {figures['file_gib']:.3f} | | |"
    )
    return lines


def enhancer_table(results: dict) -> list[str]:
    """The prompt enhancer: a 20-word prompt to 200 new tokens, plain and with the compiled decode step."""
    entry = results.get("phases", {}).get("enhancer")
    if entry is None:
        return []
    if entry.get("status") != "ok":
        return [f"Not measured: {entry.get('status')} ({entry.get('error') or entry.get('reason') or ''})."]
    lines = [
        f"A {entry.get('prompt_words')}-word prompt ({entry.get('input_tokens')} tokens with the chat) rewritten to "
        "200 new tokens on the text encoder with its tied head: "
        f"{entry.get('new_parameter_bytes')} bytes of new parameters, "
        f"storage shared with the encoder: {'yes' if entry.get('shares_encoder_storage') else '**no**'}.",
        "",
        "| decoding | 200 tokens, median (s) | ms a token | first call (s) |",
        "|---|---|---|---|",
    ]
    plain = entry.get("plain") or {}
    lines.append(f"| plain `generate` | {seconds(plain.get('median_s'))} | {_ms(plain.get('ms_per_token'))} | – |")
    compiled = entry.get("compiled") or {}
    error = entry.get("compiled_error")
    if compiled and not error:
        lines.append(
            f"| static cache, compiled decode step | {seconds(compiled.get('median_s'))} | "
            f"{_ms(compiled.get('ms_per_token'))} | {seconds(entry.get('compiled_first_call_s'))} |"
        )
    else:
        lines.append(f"| static cache, compiled decode step | – | – | {error or 'not run'} |")
    if entry.get("extra_peak_gib") is not None:
        lines += [
            "",
            f"Extra GPU memory over the weights ({gib(entry.get('weights_gib'))} GiB): "
            f"{entry['extra_peak_gib']:.2f} GiB at the peak, {entry.get('extra_resident_gib') or 0:.2f} GiB "
            "kept between rewrites (the static cache).",
        ]
    return lines


def _ms(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def evaluate_targets(results: dict) -> list[Target]:
    """The issue's targets (1024x1024, 8 steps unless said), each met, missed or not measured."""
    targets = []

    def check(name: str, goal: str, measured, text: str, ok: Callable[[], bool]) -> None:
        if measured is None:
            targets.append(Target(name, goal, "–", None))
        else:
            targets.append(Target(name, goal, text, ok()))

    square, _ = sizes_of(results)
    steady = get(results, "ours", "steady_s", square)
    check("steady latency, bf16", "<= 0.80 s", steady, seconds(steady) + " s", lambda: steady <= 0.80)
    first = get(results, "ours", "first_image_s", square)
    ratio = first / steady if first is not None and steady else None
    check(
        "first image after ready",
        "within 10% of steady",
        ratio,
        f"{seconds(first)} s ({ratio or 0:.0%} of steady)",
        lambda: ratio <= 1.10,
    )
    rate = get(results, "ours", "queue", "images_per_s")
    share = rate * steady if rate is not None and steady else None
    check(
        "queue throughput",
        ">= 95% of 1 / steady",
        share,
        f"{rate or 0:.2f} images/s ({share or 0:.0%})",
        lambda: share >= 0.95,
    )
    cost = get(results, "ours_safety", "safety", "cost")
    check("safety check, steady latency", "<= +2%", cost, f"{cost or 0:+.1%}", lambda: cost <= 0.02)
    memory = get(results, "ours_safety", "safety", "memory_cost_gib")
    model_file = get(results, "ours_safety", "safety", "file_gib")
    check(
        "safety check, GPU memory",
        "<= the model's own size",
        memory if model_file is not None else None,
        f"{memory or 0:.3f} GiB (model {model_file or 0:.3f} GiB)",
        lambda: memory <= model_file,
    )
    restart = _sum(get(results, "ours_restart", "load_s"), get(results, "ours_restart", "warmup_s"))
    check("warm restart ready (load + warm-up)", "<= 8 s", restart, seconds(restart) + " s", lambda: restart <= 8.0)
    for phase, mode, memory_goal, time_goal in (
        ("offload_model", "model", 10.5, 2.6),
        ("offload_sequential", "sequential", 3.0, 3.5),
    ):
        peak = get(results, phase, "peak_allocated_gib")
        check(
            f"OFFLOAD={mode} peak GPU memory",
            f"<= {memory_goal} GiB",
            peak,
            gib(peak) + " GiB",
            lambda peak=peak, goal=memory_goal: peak <= goal,
        )
        latency = get(results, phase, "steady_s", square)
        check(
            f"OFFLOAD={mode} time an image",
            f"<= {time_goal} s",
            latency,
            seconds(latency) + " s",
            lambda latency=latency, goal=time_goal: latency <= goal,
        )
    enhance = get(results, "enhancer", "enhance_200_tokens_s")
    check("enhancer: 200 new tokens", "<= 2 s", enhance, seconds(enhance) + " s", lambda: enhance <= 2.0)
    extra = get(results, "enhancer", "extra_peak_gib")
    check("enhancer: extra peak GPU memory", "<= 0.5 GiB", extra, f"{extra or 0:.2f} GiB", lambda: extra <= 0.5)
    added = get(results, "enhancer", "new_parameter_bytes")
    check("enhancer: new parameter bytes", "0", added, str(added), lambda: added == 0)
    return targets


def targets_table(results: dict) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for target in evaluate_targets(results):
        met = "not measured" if target.met is None else "yes" if target.met else "**no**"
        lines.append(f"| {target.name} | {target.goal} | {target.measured} | {met} |")
    return lines


def failures(results: dict) -> list[str]:
    lines = []
    for phase, entry in results.get("phases", {}).items():
        if isinstance(entry, dict) and entry.get("status") not in ("ok", None):
            reason = entry.get("error") or entry.get("reason") or ""
            lines.append(f"- {phase}: {entry['status']}" + (f" ({reason})" if reason else ""))
    return lines


def render_markdown(results: dict) -> str:
    machine = results.get("machine", {})
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    lines = [
        f"## Benchmark: {machine.get('gpu', 'unknown GPU')}",
        "",
        f"{results.get('created', '')}; {versions}; {machine.get('cpus', '?')} CPU cores. "
        f"Model: the full-size Z-Image-Turbo architecture with random weights, in the published file "
        f"layout (built in {seconds(get(results, 'build', 'seconds'))} s).",
        "",
        *main_table(results),
        "",
        "### OFFLOAD modes",
        "",
        *offload_table(results),
    ]
    restarts = restart_table(results)
    if restarts:
        lines += ["", "### Starts: compiled code and weights reused from DATA_DIR", "", *restarts]
    variants = variant_table(results)
    if variants:
        lines += ["", "### Variants: one option changed", "", *variants]
    safety = safety_table(results)
    if safety:
        lines += ["", "### The image safety check (ours_safety)", "", *safety]
    pictures = image_to_image_table(results)
    if pictures:
        lines += ["", "### Image-to-image and Upscale", "", *pictures]
    profile = profile_table(results)
    if profile:
        lines += ["", "### Where the time of a steady image goes (ours)", "", *profile]
    enhancer = enhancer_table(results)
    if enhancer:
        lines += ["", "### Prompt enhancer", "", *enhancer]
    lines += ["", "### Targets", "", *targets_table(results)]
    problems = failures(results)
    if problems:
        lines += ["", "### Phases without figures", "", *problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0]).read_text())
    sys.stdout.write(render_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
