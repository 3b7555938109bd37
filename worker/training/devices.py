"""Where and in what precision a run computes, and what it measures of the device."""

from __future__ import annotations

import gc
import resource
from collections.abc import Mapping

import torch
from accelerate.utils.memory import should_reduce_batch_size

from core.devices import pick_device as pick_device


def pick_precision(requested: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if device.type == "cuda":
        if requested == "fp32":
            return None, False
        if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True  # fp16 gradients underflow without loss scaling
    if requested == "bf16":  # CPU bf16 autocast only when asked: it is slower on most CPUs
        return torch.bfloat16, False
    return None, False


def set_gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on activation checkpointing (transformers 5 name first); False if the model can't."""
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        enable = getattr(model, name, None)
        if callable(enable):
            try:
                enable()
            except ValueError:  # "X does not support activation checkpointing"
                return False
            return True
    return False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def is_oom(error: BaseException) -> bool:
    """The one out-of-memory test: torch's OutOfMemoryError (CUDA's, and the faults' injected
    one), or accelerate's list of allocator messages (the CPU allocator raises a RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, Exception) and should_reduce_batch_size(error)


def free_memory(model: torch.nn.Module, device: torch.device) -> None:
    """After an OOM: drop the partial gradients and give cached blocks back to the allocator.
    Called outside the `except` block, once the traceback (and the tensors its frames hold) is gone."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
