"""How a planned quantization loads: the from_pretrained arguments for a 4-bit or 8-bit base.

Shared by the worker (training loads the base the plan chose) and the serving runtime (/generate
loads the same quantized base an adapter was trained on), so both quantize alike.
"""

from __future__ import annotations

from typing import Any


def compute_dtype(device: Any) -> Any:
    """bf16 on a GPU that has it, fp16 on an older GPU, fp32 on the CPU (bf16 matmuls are slow
    on most CPUs, and the loop computes in fp32 there)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(quantization: str, dtype: Any) -> Any:
    """transformers' BitsAndBytesConfig for '4bit' (NF4, double quantization, `dtype` compute) or
    '8bit' (LLM.int8); None for 'none'."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    raise ValueError(f"unknown quantization {quantization!r}: none, 8bit or 4bit")


def quantized_load_options(quantization: str, device: Any) -> dict[str, Any]:
    """Extra from_pretrained arguments: the quantization config, the non-quantized weights in the
    compute dtype, and the device to load onto (bitsandbytes quantizes as each weight lands)."""
    if quantization == "none":
        return {}
    dtype = compute_dtype(device)
    index = device.index if device.type == "cuda" and device.index is not None else 0
    return {"quantization_config": quantization_config(quantization, dtype), "dtype": dtype,
            "device_map": {"": index if device.type == "cuda" else "cpu"}}
