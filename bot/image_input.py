"""Pictures people send: checked, decoded and turned into the model's input, with no model in sight.

An attachment is refused before anything expensive happens when it is too large in bytes, and
before it is decoded when its header claims too many pixels (a decompression bomb: a few kilobytes
that would decode to gigabytes). What is accepted becomes an RGB image of one offered size,
resized and centre-cropped, and each conversion that changes what the user sent (first frame of an
animation, transparency filled with white, CMYK or 16-bit colours, EXIF rotation, cropping) comes
back as a note the user can be shown. The prepared input is saved as PNG under OUTPUT_DIR/inputs,
named by its SHA-256, so a job refers to it by path and hash, as plain data that survives restarts.

Every function here blocks (decoding, resizing, PNG encoding, disk): call them off the event loop.
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.generation import InvalidRequest
from bot.image_size import MAX_SIDE, SIZE_MULTIPLE, ImageSize
from bot.translations import Text

# Discord's own upload limit for unboosted servers is 10 MB and for Nitro users 500 MB; 25 MB keeps
# a phone photo or a lossless screenshot in and a download (held in memory) bounded.
MAX_INPUT_BYTES = 25 * 1024 * 1024
# 64 megapixels: beyond any phone's main camera at its default setting. A decoded RGB image of this
# size takes 192 MB of memory, so the check runs on the header, before decoding.
MAX_INPUT_PIXELS = 64_000_000
MIN_INPUT_SIDE = 64
INPUTS_FOLDER = "inputs"
# Formats Pillow decodes itself. Anything else (EPS, which runs Ghostscript, and the long tail of
# rarely used formats) is refused rather than handed to a decoder nobody needs.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Cropping that takes away less than this share of the picture is not worth a note.
CROP_NOTE_THRESHOLD = 0.02


@dataclass(frozen=True)
class PreparedImage:
    """An attachment made into the model's input: RGB, exactly `size`."""

    image: Image.Image
    size: ImageSize
    original_size: tuple[int, int]  # width, height as sent (after EXIF rotation)
    notes: tuple[Text, ...]  # what was changed, in words for the user (rendered in their language)


@dataclass(frozen=True)
class SavedInput:
    path: Path
    sha256: str


def check_byte_size(byte_count: int, limit: int = MAX_INPUT_BYTES) -> None:
    """Refuse an attachment by its announced size, before downloading it."""
    if byte_count <= 0:
        raise InvalidRequest(Text("The attachment is empty: send a PNG, JPEG, WebP or GIF picture."))
    if byte_count > limit:
        raise InvalidRequest(
            Text(
                "The picture is {size}; send one of at most {most} (a JPEG or a smaller export of it).",
                size=_megabytes(byte_count),
                most=_megabytes(limit),
            )
        )


def prepare_image(
    data: bytes,
    *,
    sizes: Sequence[ImageSize],
    size: ImageSize | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
    max_pixels: int = MAX_INPUT_PIXELS,
) -> PreparedImage:
    """Decode `data` and make it the model's input at `size`, or at the offered size nearest its shape.

    Raises InvalidRequest, with what to change, for anything that is not a usable picture.
    """
    check_byte_size(len(data), max_bytes)
    notes: list[Text] = []
    image = _open(data, max_pixels)
    try:
        if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
            image.seek(0)
            notes.append(Text("It is an animation: its first frame was used."))
        width, height = image.size
        rotated = _exif_orientation(image) in (5, 6, 7, 8)
        original_size = (height, width) if rotated else (width, height)
        if min(original_size) < MIN_INPUT_SIDE:
            raise InvalidRequest(
                Text(
                    "The picture is {width}x{height} pixels; send one at least {least} pixels on each side.",
                    width=original_size[0],
                    height=original_size[1],
                    least=MIN_INPUT_SIDE,
                )
            )
        target = size or nearest_size(*original_size, sizes)
        if image.format == "JPEG":
            # Decode a large JPEG at a reduced scale (1/2, 1/4, 1/8) that still covers the target:
            # several times faster and smaller than decoding every pixel only to throw most away.
            side = max(target.width, target.height)
            image.draft("RGB", (side, side))
        try:
            image.load()
        except Image.DecompressionBombError:
            raise _too_many_pixels(width, height, max_pixels) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InvalidRequest(
                Text(
                    "The picture could not be read to the end ({reason}): it is damaged or was cut off. "
                    "Send it again, or save it anew as PNG or JPEG.",
                    reason=_reason(error),
                )
            ) from None
        image = _upright(image, notes)
        image = _to_rgb(image, notes)
        fitted = ImageOps.fit(image, (target.width, target.height), method=Image.Resampling.LANCZOS)
        aspect = original_size[0] / original_size[1]
        if 1 - min(aspect / target.aspect, target.aspect / aspect) > CROP_NOTE_THRESHOLD:
            # One whole sentence for each side, so a translation can word each its own way.
            shape = {"size": str(target), "width": original_size[0], "height": original_size[1]}
            if aspect > target.aspect:
                cropped = Text("It was cropped at the sides to fit {size} (from {width}x{height}).", **shape)
            else:
                cropped = Text("It was cropped at the top and bottom to fit {size} (from {width}x{height}).", **shape)
            notes.append(cropped)
        return PreparedImage(fitted, target, original_size, tuple(notes))
    finally:
        image.close()


def nearest_size(width: int, height: int, sizes: Sequence[ImageSize]) -> ImageSize:
    """The offered size whose shape is nearest `width` x `height` (ties: the nearer pixel count)."""
    if not sizes:
        raise ValueError("no sizes to choose from")
    aspect = math.log(width / height)
    pixels = width * height
    return min(sizes, key=lambda s: (round(abs(math.log(s.aspect) - aspect), 6), abs(math.log(s.pixels / pixels))))


def upscale_size(size: ImageSize, factor: int = 2, max_side: int = MAX_SIDE) -> ImageSize:
    """`factor` times `size`, shrunk to keep the long side at most `max_side`, both sides multiples of 16."""
    scale = min(float(factor), max_side / max(size.width, size.height))

    def side(value: int) -> int:
        return max(SIZE_MULTIPLE, int(value * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    return ImageSize(side(size.width), side(size.height))


def save_input(image: Image.Image, output_dir: Path) -> SavedInput:
    """Save a prepared input as PNG under `output_dir`/inputs, named by its SHA-256 (the same picture
    is stored once), and return its path and hash."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    data = buffer.getvalue()
    return _store(data, Path(output_dir))


def source_of_file(path: Path) -> SavedInput:
    """An earlier result (a PNG under OUTPUT_DIR) as the input of a new job: Upscale and Vary.

    Raises InvalidRequest when retention removed the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(Text("This picture's file was removed (old results are deleted after a while).")) from None
    return SavedInput(Path(path), hashlib.sha256(data).hexdigest())


def load_source(path: str | Path, size: ImageSize) -> Image.Image:
    """The model's input image from a saved file: RGB at `size` (resized when it is not, as for Upscale)."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if rgb.size != (size.width, size.height):
        rgb = ImageOps.fit(rgb, (size.width, size.height), method=Image.Resampling.LANCZOS)
    return rgb


# ----- helpers -------------------------------------------------------------------------------------


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only, and refuse what would decode to too many pixels before any decoding."""
    with warnings.catch_warnings():
        # Pillow warns above its own MAX_IMAGE_PIXELS and raises above twice that; either way the
        # header is enough to refuse here with our own, lower, limit.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_formats())
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidRequest(
                Text(
                    "The picture claims more than {most} megapixels; send a smaller one.", most=max_pixels // 1_000_000
                )
            ) from None
        except UnidentifiedImageError:
            raise InvalidRequest(
                Text("The attachment is not a picture the bot can read: send a PNG, JPEG, WebP or GIF.")
            ) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InvalidRequest(
                Text(
                    "The picture is damaged ({reason}); send it again, or save it anew as PNG or JPEG.",
                    reason=_reason(error),
                )
            ) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _too_many_pixels(width, height, max_pixels)
    return image


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in ACCEPTED_FORMATS if name in Image.OPEN)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> InvalidRequest:
    return InvalidRequest(
        Text(
            "The picture is {width}x{height} pixels ({megapixels} megapixels); send one of at most {most} megapixels.",
            width=width,
            height=height,
            megapixels=f"{width * height / 1e6:.0f}",
            most=max_pixels // 1_000_000,
        )
    )


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block is no reason to refuse the picture
        return 1


def _upright(image: Image.Image, notes: list[Text]) -> Image.Image:
    if _exif_orientation(image) in (1, 0):
        return image
    try:
        turned = ImageOps.exif_transpose(image)
    except Exception:
        return image
    if turned is not None and turned is not image:
        notes.append(Text("It was turned upright, as its camera orientation (EXIF) says."))
        image.close()
        return turned
    return image


def _to_rgb(image: Image.Image, notes: list[Text]) -> Image.Image:
    mode = image.mode
    if mode == "CMYK":
        notes.append(
            Text("Its CMYK colours (a print format) were converted to RGB; colours may look a little different.")
        )
        return image.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        notes.append(Text("It has 16-bit (or deeper) greyscale; it was reduced to 8 bits."))
        return _deep_grey_to_rgb(image)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        low = _extrema(rgba.getchannel("A"))[0]
        if low < 255:
            notes.append(Text("Its transparent parts were filled with white."))
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return rgba.convert("RGB")
    return image.convert("RGB")


def _deep_grey_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit) grey to 0..255: Pillow's plain convert would clip everything above 255."""
    grey = image.convert("F") if image.mode == "F" else image.convert("I")
    high = _extrema(grey)[1]
    if image.mode.startswith("I;16") or (image.mode == "I" and high > 255):
        scale = 255 / 65535
    elif image.mode == "F" and high <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    grey = grey.convert("F").point(lambda value: value * scale)
    return grey.convert("L").convert("RGB")


def _extrema(band: Image.Image) -> tuple[float, float]:
    """Lowest and highest value of a one-band image."""
    low, high = band.getextrema()
    return float(low), float(high)  # type: ignore[arg-type]  # one band: two numbers, not tuples


def _store(data: bytes, output_dir: Path) -> SavedInput:
    digest = hashlib.sha256(data).hexdigest()
    folder = output_dir / INPUTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.png"
    if not path.exists():
        # Written under a temporary name of its own and renamed, so a crash never leaves a half file
        # under the name that jobs refer to, and two workers saving the same picture do not collide.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{digest}.", suffix=".partial", delete=False) as file:
            file.write(data)
        Path(file.name).replace(path)
    return SavedInput(path, digest)


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text[:120]
