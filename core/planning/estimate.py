"""The memory one training option needs, term by term, from a ModelShape.

Every term is in bytes and is an estimate (the GPU check, bench/gpu_check.py, measures the peak
against it). What each one counts:

    weights      the model as loaded: quantized linear layers at 4 or 8 bits with their scale
                 constants, everything else (embeddings, norms, the head) at the load dtype;
                 LoRA's adapter weights in fp32 (peft keeps adapters in fp32 on a 16-bit base)
    gradients    one per trainable weight, in its dtype
    optimizer    AdamW: two moments per trainable weight in its dtype; 8-bit AdamW: two bytes
    activations  what forward keeps for backward at one micro-batch of the longest sequence:
                 per layer (the attention and MLP intermediates, the score matrices of eager
                 attention, LoRA's dropped-out inputs), or with gradient checkpointing only each
                 layer's input plus one layer recomputed; and the vocabulary logits of a causal
                 LM with the fp32 copies its loss makes
    overhead     the CUDA allocator's fragmentation and the cuBLAS workspace (a fixed share)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.planning.shapes import ModelShape

Quantization = Literal["none", "8bit", "4bit"]
Optimizer = Literal["adamw", "adamw_8bit"]

GIB = 2**30
# bitsandbytes' 4-bit blocks: one absmax per 64 weights; double quantization stores those as
# 8-bit with one fp32 constant per 256 of them (QLoRA paper: 0.127 bits per weight instead of 0.5).
NF4_BLOCK = 64
DOUBLE_QUANT_BLOCK = 256
# The allocator's fragmentation and cuBLAS workspace: a fixed reserve plus a share of the rest.
OVERHEAD_FIXED_BYTES = 256 * 2**20
OVERHEAD_SHARE = 0.08
# Eager attention keeps the scores, their softmax and its dropout mask per head: three
# (sequence x sequence) matrices per layer; DeBERTa's relative attention adds c2p and p2c.
EAGER_SCORE_MATRICES = 3
DISENTANGLED_SCORE_MATRICES = 2


@dataclass(frozen=True)
class Option:
    quantization: Quantization
    optimizer: Optimizer
    gradient_checkpointing: bool


@dataclass(frozen=True)
class Workload:
    """What a job asks of the model, and how the device computes."""

    lora: bool                      # frozen base + adapters, else every weight trains
    lora_r: int = 16
    lora_dropout: float = 0.05
    sequence_length: int = 512
    # bytes per activation element: 2 under bf16/fp16 autocast (a GPU), 4 in fp32 (the CPU)
    activation_bytes: int = 2
    # bytes per non-quantized weight of a 4/8-bit model: its compute dtype (bf16 or fp16 on a
    # GPU, fp32 on the CPU)
    compute_dtype_bytes: int = 2
    # the CUDA allocator's and cuBLAS's fixed reserve; nothing of the kind on the CPU
    overhead_fixed_bytes: int = OVERHEAD_FIXED_BYTES


@dataclass(frozen=True)
class Terms:
    weights: int
    gradients: int
    optimizer: int
    activations_fixed: int       # does not grow with the micro-batch (autocast's weight copies)
    activations_per_sample: int  # what one more sample of the longest sequence adds
    overhead_fixed: int = OVERHEAD_FIXED_BYTES

    def activations(self, micro_batch: int) -> int:
        return self.activations_fixed + micro_batch * self.activations_per_sample

    def total(self, micro_batch: int) -> int:
        subtotal = self.weights + self.gradients + self.optimizer + self.activations(micro_batch)
        return subtotal + self.overhead(micro_batch)

    def overhead(self, micro_batch: int) -> int:
        subtotal = self.weights + self.gradients + self.optimizer + self.activations(micro_batch)
        return self.overhead_fixed + int(OVERHEAD_SHARE * subtotal)

    def largest_micro_batch(self, budget_bytes: int, limit: int) -> int:
        """The largest micro-batch (up to `limit`) whose total fits `budget_bytes`; 0 if none."""
        if self.total(1) > budget_bytes:
            return 0
        low, high = 1, max(1, limit)
        while low < high:  # total() is increasing in the micro-batch
            mid = (low + high + 1) // 2
            if self.total(mid) <= budget_bytes:
                low = mid
            else:
                high = mid - 1
        return low


def weight_bytes(shape: ModelShape, quantization: Quantization, workload: Workload) -> int:
    """The base model's weights as loaded (without adapters)."""
    if quantization == "none":
        return shape.total_params * shape.load_dtype_bytes
    kept = (shape.total_params - shape.quantizable_params) * workload.compute_dtype_bytes
    if quantization == "8bit":
        # LLM.int8: one byte per weight and one fp32 scale per output row.
        return kept + shape.quantizable_params + 4 * shape.quantizable_rows
    blocks = -(-shape.quantizable_params // NF4_BLOCK)
    constants = blocks + 4 * -(-blocks // DOUBLE_QUANT_BLOCK)  # double quantization
    return kept + shape.quantizable_params // 2 + constants


def quantized_storage_bytes(shape: ModelShape, quantization: Quantization, workload: Workload) -> int:
    """The weights as transformers' get_memory_footprint() counts them: quantized weights without
    their scale constants (those live outside the parameters). For tests against a loaded model."""
    if quantization == "none":
        return shape.total_params * shape.load_dtype_bytes
    kept = (shape.total_params - shape.quantizable_params) * workload.compute_dtype_bytes
    per_weight = 1 if quantization == "8bit" else 0.5
    return kept + int(shape.quantizable_params * per_weight)


def estimate(shape: ModelShape, option: Option, workload: Workload) -> Terms:
    lora_params = shape.lora_params(workload.lora_r) if workload.lora else 0
    if workload.lora:
        trainable, trainable_bytes = lora_params, 4  # peft keeps adapters in fp32
    else:
        trainable, trainable_bytes = shape.total_params, shape.load_dtype_bytes
    weights = weight_bytes(shape, option.quantization, workload) + lora_params * 4
    gradients = trainable * trainable_bytes
    moments = 2 * trainable * (1 if option.optimizer == "adamw_8bit" else trainable_bytes)
    fixed, per_sample = _activations(shape, option, workload)
    return Terms(weights=weights, gradients=gradients, optimizer=moments,
                 activations_fixed=fixed, activations_per_sample=per_sample,
                 overhead_fixed=workload.overhead_fixed_bytes)


def _activations(shape: ModelShape, option: Option, workload: Workload) -> tuple[int, int]:
    """(bytes that do not grow with the micro-batch, bytes per sample) kept for backward."""
    s, a = workload.sequence_length, workload.activation_bytes
    h, inner, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    # Per token, one layer: attention (norm in, qkv in, q k v, attention out, o_proj in) and the
    # MLP (norm in, its input, and the intermediate-wide tensors: gate, up, act(gate), product
    # for SwiGLU; fc1 out and act(fc1) for a plain MLP).
    per_token = 5 * h + 2 * kv + 2 * h + (4 if shape.gated_mlp else 2) * inner
    if workload.lora and workload.lora_dropout > 0:
        per_token += shape.lora_input_features_per_layer
    per_layer = per_token * s * a
    if not shape.fused_attention:
        matrices = EAGER_SCORE_MATRICES + (DISENTANGLED_SCORE_MATRICES if shape.disentangled_attention else 0)
        per_layer += matrices * shape.num_heads * s * s * a
    if option.gradient_checkpointing:
        # Each layer's input (the residual stream) is kept; one layer at a time is recomputed.
        layers = shape.num_layers * h * s * a + per_layer
    else:
        layers = shape.num_layers * per_layer
    embeddings = 2 * h * s * a
    # The logits in the compute dtype and their gradient, and the loss's fp32 copies (scored
    # logits, log-softmax, its gradient): at worst every position is an answer token.
    logits = s * shape.vocab_size * (2 * a + 12) if shape.causal_lm else 0
    # Full fine-tuning of fp32 weights under 16-bit autocast: autocast caches a 16-bit copy of
    # every trainable weight for the step.
    casts = shape.total_params * a if not workload.lora and shape.load_dtype_bytes > a else 0
    return casts, layers + embeddings + logits
