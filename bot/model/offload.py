"""OFFLOAD=model and OFFLOAD=sequential: stream weights from host memory to the GPU as they are needed."""

from __future__ import annotations

from typing import Any

import torch


def apply_offload(pipe, mode: str, device: torch.device) -> None:
    """Keep what must be resident on the GPU and stream the transformer's blocks (and, for
    `sequential`, the text encoder's) from host memory one group at a time, overlapped with compute
    on a side stream. This is much faster than diffusers' enable_model_cpu_offload, which moves whole
    models at every call."""
    from diffusers.hooks import apply_group_offloading

    options: dict[str, Any] = {
        "onload_device": device,
        "offload_device": torch.device("cpu"),
        "offload_type": "block_level",
        "num_blocks_per_group": 1,
        "use_stream": True,
    }
    pipe.transformer.enable_group_offload(**options)
    pipe.vae.to(device)
    if mode == "sequential":
        apply_group_offloading(pipe.text_encoder, **options)
    else:
        pipe.text_encoder.to(device)
