"""PNG encoding with the generation parameters embedded, saving under OUTPUT_DIR, and smaller JPEG copies
(with the same parameters) for uploads over Discord's limit.

All of it blocks (image encoding is CPU work measured in bench/RESULTS.md), so callers run it off the
event loop and off the GPU thread.
"""

from __future__ import annotations

import io
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from PIL import ExifTags, Image, PngImagePlugin

from bot.generation import GenerationRequest, parameters_text

log = logging.getLogger(__name__)

# Tried in order until the files fit the upload limit: quality first, then fewer pixels.
JPEG_STEPS = ((92, 1.0), (85, 1.0), (80, 0.75), (75, 0.5))


def encode_png(image: Image.Image, parameters: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    # compress_level 4 is several times faster than Pillow's default 6 for a few percent more bytes.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def read_parameters(path_or_bytes: Path | bytes) -> str | None:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        return image.text.get("parameters")  # type: ignore[attr-defined]


def write_new_file(directory: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write `data` to a file that did not exist before: names sort by time and never collide."""
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        name = f"{stem}{suffix}" if attempt == 0 else f"{stem}-{attempt}{suffix}"
        path = directory / name
        try:
            # "x" fails if another job (or another bot process) took the name first.
            with open(path, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free file name for {stem}{suffix} in {directory}")


def time_stem(seed: int, now: datetime | None = None) -> str:
    moment = now or datetime.now(timezone.utc)
    return f"{moment:%Y%m%d-%H%M%S-%f}_{seed}"


def save_png(
    image: Image.Image,
    request: GenerationRequest,
    seed: int,
    model_id: str,
    output_dir: Path,
    prompt_used: str | None = None,
) -> tuple[Path, bytes]:
    """Encode and save one image; returns the file and its bytes (for uploading without re-encoding).
    `prompt_used`: the enhanced prompt the image was made from, if any."""
    data = encode_png(image, parameters_text(request, seed, model_id, prompt_used))
    return write_new_file(output_dir, time_stem(seed), ".png", data), data


def encode_jpeg(image: Image.Image, parameters: str, *, quality: int = 92) -> bytes:
    """A JPEG carrying `parameters` in its EXIF UserComment, the way image tools write it for JPEG:
    an 8-byte character-code prefix, then the text (UTF-16 in the EXIF block's big-endian order
    when it is not plain ASCII)."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _user_comment(parameters)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def _user_comment(text: str) -> bytes:
    if text.isascii():
        return b"ASCII\0\0\0" + text.encode("ascii")
    return b"UNICODE\0" + text.encode("utf-16-be")


def files_for_upload(paths: list[Path], limit: int) -> tuple[list[tuple[str, bytes]], bool]:
    """The saved PNGs as (name, bytes), or JPEG copies with the same parameters when together they
    are over `limit` bytes; the flag says whether JPEG copies were made (the PNGs stay as they are)."""
    uploads = [(path.name, path.read_bytes()) for path in paths]
    if sum(len(data) for _, data in uploads) <= limit:
        return uploads, False
    for quality, scale in JPEG_STEPS:
        converted = []
        for path in paths:
            with Image.open(path) as image:
                parameters = image.info.get("parameters", "")
                size = (int(image.width * scale), int(image.height * scale))
                smaller = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
                converted.append((path.with_suffix(".jpg").name, encode_jpeg(smaller, parameters, quality=quality)))
        if sum(len(data) for _, data in converted) <= limit:
            break
    log.info("results over the %d-byte upload limit: sent as JPEG (quality %d, scale %.2f)", limit, quality, scale)
    return converted, True
