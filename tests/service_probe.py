"""One start of the model service in a fresh process, as `zimage-bot run` makes it, then one image.

Run as `python tests/service_probe.py IMAGE.npy` with the environment of `conftest.tiny_env`; prints the
load report as JSON on its last line and saves the image's pixels to IMAGE.npy. A fresh process is what
a restart is: nothing compiled or loaded survives from an earlier start but what is on disk.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict

import numpy as np

from bot.generation import GenerationRequest
from bot.model.pipeline_service import PipelineService
from bot.settings import Settings


def main(image_path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    service = PipelineService(settings)
    report = service.load()
    try:
        result = service.generate(GenerationRequest("a red fox in the snow", settings.default_size, 2, seed=7))
        np.save(image_path, np.asarray(result.images[0]))
    finally:
        service.close()
    print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
