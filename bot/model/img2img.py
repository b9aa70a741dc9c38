"""Image-to-image on the resident pipeline's own components.

`ZImageImg2ImgPipeline.from_pipe(pipe)` shares the components but then calls `.to(dtype=...)` on the
new pipeline with float32 when no dtype is given (diffusers 0.42), which casts the shared transformer,
text encoder and VAE to float32 in place: the resident model doubles in memory and every later step,
text-to-image included, runs in fp32. That is what made the plain image-to-image figures in issue 10
slow. The pipeline is built here from the components directly, which moves and casts nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import ZImageImg2ImgPipeline

from bot.image_size import ImageSize

log = logging.getLogger(__name__)

# Working memory of one VAE decode (or encode) per output pixel, in bf16, with a margin: the
# full-resolution up blocks hold a few 128-channel activations at once. Tiling is used only when
# the GPU has less than this free, since tiled decoding is slower and can show seams.
VAE_BYTES_PER_PIXEL = 1600


def image_to_image_pipeline(pipe) -> Any:
    """An image-to-image pipeline over the very same modules as `pipe`: no copy, no cast, no move."""
    img2img: Any = ZImageImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    return img2img


@contextlib.contextmanager
def vae_tiling_for(vae, size: ImageSize, device: torch.device, *, force: bool = False) -> Iterator[bool]:
    """Tile the VAE for this call only if the GPU lacks the free memory to encode and decode `size` whole
    (or `force`: after running out of memory without tiling)."""
    tile = force
    free = 0
    if device.type == "cuda" and not force:
        free, _total = torch.cuda.mem_get_info(device)
        # Memory the caching allocator holds but is not using counts as free for PyTorch.
        index = device.index if device.index is not None else torch.cuda.current_device()
        free += torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        tile = free < VAE_BYTES_PER_PIXEL * size.pixels
    if tile:
        log.info("VAE tiling on for %s: %.1f GiB free", size, free / 2**30)
        vae.enable_tiling()
    try:
        yield tile
    finally:
        if tile:
            vae.disable_tiling()
