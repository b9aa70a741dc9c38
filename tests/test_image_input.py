"""Pictures people send, made into the model's input: every bad attachment of issue 10 with a real file."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.generation import InvalidRequest
from bot.image_input import (
    MAX_INPUT_BYTES,
    check_byte_size,
    load_source,
    nearest_size,
    prepare_image,
    save_input,
    upscale_size,
)
from bot.image_size import ImageSize
from bot.settings import RECOMMENDED_SIZES

SIZES = tuple(ImageSize.parse(text) for text in RECOMMENDED_SIZES.split(","))
SQUARE = ImageSize(1024, 1024)


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def gradient(width: int = 200, height: int = 200, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1)).convert(mode)


def prepare(data: bytes, **kwargs):
    kwargs.setdefault("sizes", SIZES)
    return prepare_image(data, **kwargs)


def test_a_plain_picture_becomes_the_nearest_offered_size_without_notes():
    prepared = prepare(encode(gradient(400, 300)))  # 4:3
    assert prepared.size == ImageSize(1152, 864)
    assert prepared.image.size == (1152, 864) and prepared.image.mode == "RGB"
    assert prepared.notes == ()
    assert prepared.original_size == (400, 300)


def test_a_given_size_wins_and_a_different_shape_is_centre_cropped_with_a_note():
    source = gradient(400, 200)
    prepared = prepare(encode(source), size=SQUARE)
    assert prepared.size == SQUARE and prepared.image.size == (1024, 1024)
    assert any("cropped at the sides" in str(note) and "400x200" in str(note) for note in prepared.notes)
    # The centre was kept: the middle column of the input is the middle column of the output.
    middle = np.asarray(prepared.image)[512, 512].astype(int)
    assert np.abs(middle - np.asarray(source)[100, 200].astype(int)).max() < 12


def test_text_is_not_a_picture():
    with pytest.raises(InvalidRequest, match="not a picture the bot can read"):
        prepare(b"hello, this is a text file\n" * 10)


def test_a_truncated_png_is_damaged():
    data = encode(gradient(300, 300))
    with pytest.raises(InvalidRequest, match=r"damaged|cut off"):
        prepare(data[: len(data) // 2])


def test_an_animated_gif_uses_its_first_frame_and_says_so():
    frames = [Image.new("RGB", (120, 120), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    prepared = prepare(data)
    assert any("first frame" in str(note) for note in prepared.notes)
    red, green, blue = np.asarray(prepared.image).reshape(-1, 3).mean(0)
    assert red > 200 and green < 30 and blue < 30


def test_transparency_is_flattened_on_white():
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 50, 100))  # left half opaque red, right half transparent
    prepared = prepare(encode(image))
    assert any("transparent" in str(note) for note in prepared.notes)
    pixels = np.asarray(prepared.image)
    assert tuple(pixels[512, 100]) == (255, 0, 0)
    assert tuple(pixels[512, 1000]) == (255, 255, 255)


def test_an_opaque_alpha_channel_needs_no_note():
    assert prepare(encode(gradient(100, 100, "RGBA"))).notes == ()


def test_cmyk_jpeg_is_converted():
    prepared = prepare(encode(Image.new("CMYK", (100, 100), (0, 255, 255, 0)), "JPEG"))  # red in CMYK
    assert any("CMYK" in str(note) for note in prepared.notes)
    red, green, blue = np.asarray(prepared.image).reshape(-1, 3).mean(0)
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_grey_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 128, dtype=np.uint16)[None, :].repeat(128, 0)
    image = Image.fromarray(values)  # uint16: Pillow makes it I;16
    data = encode(image)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    prepared = prepare(data, size=ImageSize(128, 128))
    assert any("16-bit" in str(note) for note in prepared.notes)
    row = np.asarray(prepared.image)[64, :, 0].astype(int)
    # A plain convert would make nearly every pixel 255; scaled, the ramp survives.
    assert row[2] < 20 and row[-3] > 235 and 100 < row[64] < 160


def test_palette_pictures_keep_their_colours():
    image = gradient(100, 100).quantize(64)
    assert image.mode == "P"
    prepared = prepare(encode(image))
    assert prepared.notes == ()
    assert prepared.image.mode == "RGB"
    original = np.asarray(image.convert("RGB").resize((1024, 1024))).astype(int)
    assert np.abs(np.asarray(prepared.image).astype(int) - original).mean() < 12


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    prepared = prepare(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert prepared.original_size == (100, 300)  # upright it is tall
    assert prepared.size.height > prepared.size.width
    assert any("upright" in str(note) for note in prepared.notes)
    pixels = np.asarray(prepared.image).astype(int)
    top, bottom = pixels[10].mean(0), pixels[-10].mean(0)
    assert top[0] > 200 and top[2] < 60  # the stored left edge is now the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_tiny_pictures_are_refused():
    with pytest.raises(InvalidRequest, match="32x32 pixels; send one at least 64"):
        prepare(encode(Image.new("RGB", (32, 32), "white")))


def png_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims `width` x `height`: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 60_000])  # above our limit; and above Pillow's own bomb limit
def test_a_decompression_bomb_is_refused_from_its_header(side):
    data = png_claiming(side, side)
    assert len(data) < 200
    with pytest.raises(InvalidRequest, match="megapixels"):
        prepare(data)


def test_byte_limits():
    check_byte_size(MAX_INPUT_BYTES)
    with pytest.raises(InvalidRequest, match=r"at most 25\.0 MB"):
        check_byte_size(MAX_INPUT_BYTES + 1)
    with pytest.raises(InvalidRequest, match="empty"):
        prepare(b"")
    with pytest.raises(InvalidRequest, match=r"at most 0\.0 MB"):
        prepare(encode(gradient()), max_bytes=100)


def test_other_formats_are_refused_before_any_decoder_runs():
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
    with pytest.raises(InvalidRequest, match="not a picture the bot can read"):
        prepare(data)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1000, 1000, "1024x1024"), (1920, 1080, "1280x720"), (1080, 1920, "720x1280"), (3000, 1000, "1344x576")],
)
def test_nearest_size_by_shape(width, height, expected):
    assert str(nearest_size(width, height, SIZES)) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1024x1024", "2048x2048"), ("512x256", "1024x512"), ("1152x896", "2048x1584"), ("1344x576", "2048x864")],
)
def test_upscale_doubles_and_caps_the_long_side(size, expected):
    result = upscale_size(ImageSize.parse(size))
    assert str(result) == expected
    result.check()


def test_saved_input_is_a_png_named_by_its_hash_and_stored_once(tmp_path: Path):
    prepared = prepare(encode(gradient(300, 300)))
    first = save_input(prepared.image, tmp_path)
    again = save_input(prepared.image, tmp_path)
    assert first == again
    assert first.path.parent == tmp_path / "inputs" and first.path.suffix == ".png"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256 == first.path.stem
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(prepared.image))
    # Upscale reads it back at a larger size.
    assert load_source(first.path, ImageSize(2048, 2048)).size == (2048, 2048)


def test_two_threads_saving_the_same_picture_at_once_both_succeed(tmp_path):
    # Several workers warm up side by side and each saves the same grey picture.
    from concurrent.futures import ThreadPoolExecutor

    from bot.image_input import save_input

    # A large noisy picture: writing it takes long enough for the threads' writes to overlap.
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    with ThreadPoolExecutor(8) as pool:
        saved = list(pool.map(lambda _: save_input(picture, tmp_path), range(16)))
    assert len({entry.path for entry in saved}) == 1 and saved[0].path.is_file()
    assert [path.name for path in (tmp_path / "inputs").iterdir()] == [saved[0].path.name]
