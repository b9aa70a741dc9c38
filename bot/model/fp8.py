"""FP8 (e4m3) linear layers for the transformer's repeated blocks: the opt-in QUANTIZE=fp8."""

from __future__ import annotations

import torch


class Fp8Unsupported(RuntimeError):
    """The GPU has no FP8 tensor cores; the message says what to set instead."""


class Fp8Linear(torch.nn.Module):
    """A Linear layer computed in FP8 (e4m3) with one scale per weight row and per activation row,
    scaled dynamically at every call: about twice the matrix throughput of bf16 on GPUs that have
    FP8 tensor cores (Ada, Hopper and newer), at a small cost in precision."""

    FP8_MAX = 448.0  # the largest e4m3 value
    weight_fp8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / self.FP8_MAX
        self.register_buffer("weight_fp8", (weight.float() / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out): the layout _scaled_mm wants
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / self.FP8_MAX
        quantized = (rows.float() / scale).to(torch.float8_e4m3fn)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        out = torch._scaled_mm(
            quantized, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias, out_dtype=x.dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)


def check_fp8_support(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise Fp8Unsupported(
            f"QUANTIZE=fp8 needs a GPU with FP8 tensor cores (RTX 40xx, L4, H100 or newer); {name} has none. "
            "Set QUANTIZE=none."
        )


def quantize_to_fp8(transformer: torch.nn.Module) -> int:
    """Swap the Linear layers inside the transformer's repeated blocks (where nearly all of its
    arithmetic is) for Fp8Linear; embedders and the final layer stay in bf16. Returns the count."""
    block_classes = set(getattr(transformer, "_repeated_blocks", ()))
    count = 0
    for block in [module for module in transformer.modules() if type(module).__name__ in block_classes]:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                # _scaled_mm needs both matrix dimensions to be multiples of 16.
                if isinstance(child, torch.nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                    setattr(parent, name, Fp8Linear(child))
                    count += 1
    return count
