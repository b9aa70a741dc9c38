"""FP8 schemes side by side: the bot's own FP8 layer (QUANTIZE=fp8) against torchao's float8
dynamic-activation, row-wise scheme, each against bf16, in one run.

    python -m bench.fp8_compare                  # bf16, ours, torchao, torchao_all; 1024x1024 and 1344x576
    python -m bench.fp8_compare --tiny           # the tiny model on the CPU: bf16 only (FP8 needs a GPU)

Each scheme runs in a fresh process on the random-weight model that bench/run_benchmark.py builds (the
same --work-dir shares it): the pipeline loaded in bf16, the scheme applied to the transformer, its
repeated blocks compiled as the bot compiles them, two warm-up images a size, then the median of
--repeats steady images a size, and the images of fixed seeds. The parent compares every scheme's
images with bf16's (PSNR, mean absolute difference in 8-bit levels). Schemes:

- `bf16`: nothing quantised (the bot's default);
- `ours`: bot.model.fp8.quantize_to_fp8, the Linear layers of the repeated blocks (refiners included);
- `torchao`: torchao's Float8DynamicActivationFloat8WeightConfig(PerRow) on exactly those layers;
- `torchao_all`: the same on every Linear layer except the embedders diffusers marks as
  precision-sensitive (`_skip_layerwise_casting_patterns`): the final layer and the other embedders too.

torchao must be importable (pip install torchao); a scheme that cannot run says why and the others go on.
Writes --results (JSON) and prints a table; copy the figures into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.build_random_model import BENCH_REPO_ID
from bench.run_benchmark import BOT_VARIABLES, PROJECT_ROOT, machine_info
from bench.scaling import build_model

SCHEMES = ("bf16", "ours", "torchao", "torchao_all")
SEEDS = (11, 12)
PROMPT = "a lighthouse on a cliff at sunset, waves breaking on the rocks, long exposure photograph"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, from {', '.join(SCHEMES)}")
    parser.add_argument("--sizes", default=None, help="default 1024x1024,1344x576 (64x64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU, uncompiled")
    parser.add_argument("--work-dir", type=Path, default=PROJECT_ROOT / "bench-work")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "bench" / "results" / "fp8.json")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="for each scheme")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one scheme in this process
    args = parser.parse_args(argv)
    sizes = (args.sizes or ("64x64" if args.tiny else "1024x1024,1344x576")).split(",")
    steps = args.steps or (2 if args.tiny else 8)
    work = args.work_dir.resolve()
    if args.one is not None:
        figures = measure(args.one, sizes, steps, args.repeats, work / "fp8-images", tiny=args.tiny)
        print("RESULT " + json.dumps(figures), flush=True)
        return 0

    hub = work / "hf" / "hub"
    build_model(work, hub, args.tiny)
    results: dict = {"machine": machine_info(), "sizes": sizes, "steps": steps, "schemes": {}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in BOT_VARIABLES}
    env.update(
        HF_HOME=str(hub.parent),
        HF_HUB_CACHE=str(hub),
        HF_HUB_OFFLINE="1",
        TORCHINDUCTOR_CACHE_DIR=str(work / "fp8-compile-cache"),  # shared: later schemes reuse what matches
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    )
    for scheme in args.schemes.split(","):
        command = [sys.executable, "-m", "bench.fp8_compare", "--one", scheme, "--sizes", ",".join(sizes)]
        command += ["--steps", str(steps), "--repeats", str(args.repeats), "--work-dir", str(work)]
        command += ["--tiny"] if args.tiny else []
        print(f"fp8_compare: {scheme}", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(
                command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=args.timeout_s
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            run = json.loads(lines[-1][7:]) if lines else {"status": "failed", "log": done.stderr[-4000:]}
        except subprocess.TimeoutExpired:
            run = {"status": "failed", "log": f"timed out after {args.timeout_s} s"}
        results["schemes"][scheme] = run
        compare_images(results, work / "fp8-images")
        args.results.write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0 if all(run.get("status") in ("ok", "skipped") for run in results["schemes"].values()) else 1


# ----- one scheme, in its own process ----------------------------------------------------------------


def measure(scheme: str, sizes: list[str], steps: int, repeats: int, images_dir: Path, *, tiny: bool) -> dict:
    import numpy as np
    import torch
    from diffusers import ZImagePipeline

    from bot.model.pipeline_service import COMPILE_OPTIONS

    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    why_not = fp8_unavailable(scheme, device)
    if why_not:
        return {"status": "skipped", "reason": why_not}
    started = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(BENCH_REPO_ID, torch_dtype=torch.bfloat16).to(device)
    pipe.set_progress_bar_config(disable=True)
    figures: dict = {"status": "ok", "load_s": time.perf_counter() - started}
    figures["quantized_layers"] = quantize(scheme, pipe.transformer)
    if cuda:
        pipe.transformer.compile_repeated_blocks(**COMPILE_OPTIONS)

    def draw(size: str, seed: int, output_type: str = "pil"):
        width, height = (int(part) for part in size.split("x"))
        generator = torch.Generator("cpu").manual_seed(seed)
        if cuda:
            torch.cuda.synchronize()
        begun = time.perf_counter()
        image = pipe(
            PROMPT,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=generator,
            output_type=output_type,
        ).images[0]
        if cuda:
            torch.cuda.synchronize()
        return image, time.perf_counter() - begun

    begun = time.perf_counter()
    for size in sizes:
        for seed in (1, 2):  # the first compiles (or sets up) this shape, the second shows it is done
            draw(size, seed)
    figures["warmup_s"] = time.perf_counter() - begun
    figures["steady_s"] = {size: statistics.median(draw(size, 100 + n)[1] for n in range(repeats)) for size in sizes}
    images_dir.mkdir(parents=True, exist_ok=True)
    for seed in SEEDS:
        pixels = np.asarray(draw(sizes[0], seed)[0])
        np.save(images_dir / f"{scheme}-{seed}.npy", pixels)
    if cuda:
        figures["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        figures["gpu"] = torch.cuda.get_device_name()
    figures["torch"] = torch.__version__
    if scheme.startswith("torchao"):
        import torchao

        figures["torchao"] = torchao.__version__
    return figures


def fp8_unavailable(scheme: str, device) -> str | None:
    """Why `scheme` cannot run here, or None."""
    import torch

    if scheme == "bf16":
        return None
    if scheme not in SCHEMES:
        return f"unknown scheme {scheme!r}"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return "FP8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9 or newer)"
    if scheme.startswith("torchao"):
        try:
            import torchao  # noqa: F401
        except ImportError:
            return "torchao is not installed (pip install torchao)"
    return None


def quantize(scheme: str, transformer) -> int:
    """Apply `scheme` to the transformer; returns how many Linear layers now run in FP8."""
    import torch

    from bot.model.fp8 import quantize_to_fp8

    if scheme == "bf16":
        return 0
    if scheme == "ours":
        return quantize_to_fp8(transformer)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    blocks = set(getattr(transformer, "_repeated_blocks", ()))
    in_blocks = {
        id(module)
        for block in transformer.modules()
        if type(block).__name__ in blocks
        for module in block.modules()
        if isinstance(module, torch.nn.Linear)
    }
    sensitive = tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ())
    chosen: list[str] = []

    def wanted(module, name: str) -> bool:
        # FP8 matrix products need both dimensions to be multiples of 16, as in bot.model.fp8.
        if not isinstance(module, torch.nn.Linear) or module.in_features % 16 or module.out_features % 16:
            return False
        take = id(module) in in_blocks if scheme == "torchao" else not any(part in name for part in sensitive)
        if take:
            chosen.append(name)
        return take

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=wanted)
    return len(chosen)


# ----- the comparison and the table ----------------------------------------------------------------------


def compare_images(results: dict, images_dir: Path) -> None:
    """Each scheme's fixed-seed images against bf16's: PSNR (dB) and mean absolute difference (0-255)."""
    import numpy as np

    for scheme, run in results["schemes"].items():
        if scheme == "bf16" or run.get("status") != "ok":
            continue
        psnrs, differences = [], []
        for seed in SEEDS:
            ours, reference = images_dir / f"{scheme}-{seed}.npy", images_dir / f"bf16-{seed}.npy"
            if not (ours.is_file() and reference.is_file()):
                return
            a, b = np.load(ours).astype(np.float64), np.load(reference).astype(np.float64)
            mse = float(np.mean((a - b) ** 2))
            psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
            differences.append(float(np.mean(np.abs(a - b))))
        run["psnr_vs_bf16_db"] = statistics.mean(psnrs)
        run["mean_abs_diff_vs_bf16"] = statistics.mean(differences)


def render(results: dict) -> str:
    sizes = results["sizes"]
    reference = results["schemes"].get("bf16", {}).get("steady_s", {})
    header = "| scheme | FP8 layers | " + " | ".join(f"steady {size} (s)" for size in sizes)
    header += " | speed-up over bf16 | PSNR vs bf16 (dB) | mean abs diff (0-255) | peak GiB |"
    lines = [header, "|" + "---|" * (6 + len(sizes))]
    for scheme, run in results["schemes"].items():
        if run.get("status") != "ok":
            lines.append(f"| {scheme} | {run.get('status')}: {run.get('reason') or run.get('log', '')[-200:]} |")
            continue
        steady = run["steady_s"]
        speedup = ", ".join(
            f"{reference[size] / steady[size]:.2f}x" for size in sizes if size in reference and steady.get(size)
        )
        psnr, diff = run.get("psnr_vs_bf16_db"), run.get("mean_abs_diff_vs_bf16")
        cells = [
            scheme,
            str(run["quantized_layers"]),
            *(f"{steady[size]:.3f}" for size in sizes),
            speedup or "–",
            f"{psnr:.1f}" if psnr is not None else "–",
            f"{diff:.2f}" if diff is not None else "–",
            f"{run['peak_allocated_gib']:.1f}" if "peak_allocated_gib" in run else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
