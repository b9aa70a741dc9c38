"""Image sizes as the model accepts them: width and height, each a multiple of 16."""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_SIDE = 64
MAX_SIDE = 2048
SIZE_MULTIPLE = 16  # the VAE downsamples by 8 and the transformer patches 2x2


@dataclass(frozen=True, order=True)
class ImageSize:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> ImageSize:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"size {text!r} should look like WIDTHxHEIGHT, e.g. 1024x1024")
        size = cls(int(match[1]), int(match[2]))
        size.check()
        return size

    def check(self) -> None:
        for side in (self.width, self.height):
            if side % SIZE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
                raise ValueError(
                    f"size {self} is not allowed: width and height must be multiples of {SIZE_MULTIPLE} "
                    f"from {MIN_SIDE} to {MAX_SIDE}"
                )

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"
