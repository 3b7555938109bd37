"""Which torch device a setting names: the worker's `device` and the API's
TUNESERVE_PREDICT_DEVICE read the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(name: str | None) -> torch.device:
    """auto: the GPU when torch sees one, else the CPU; None or empty: the CPU; else as named."""
    import torch

    if name in (None, "", "cpu"):
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
