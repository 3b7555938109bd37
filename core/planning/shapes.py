"""What a model is made of, read from its config alone: no weights are loaded.

The model is built on the meta device (accelerate's `init_empty_weights`), so an 8B model costs
a few seconds and no memory; its parameters are then counted by what each one costs in every
precision option: the linear layers bitsandbytes would quantize, the rest it keeps (embeddings,
norms, the output head), and the weights LoRA would add.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core.planning.lora import lora_targets_for, matches_target

# Attention implementations that keep no (heads, sequence, sequence) score matrix for backward.
FUSED_ATTENTION = frozenset({"sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"})


@dataclass(frozen=True)
class ModelShape:
    """Counts and dimensions of one architecture (one config)."""

    model_type: str
    causal_lm: bool                 # a decoder with a vocabulary head (chat), else an encoder
    total_params: int
    quantizable_params: int         # in nn.Linear layers bitsandbytes converts (not the head)
    quantizable_rows: int           # their output features: int8 keeps one scale per row
    load_dtype_bytes: int           # bytes per weight as from_pretrained loads it (config dtype)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    kv_dim: int                     # width of the key (and value) projection: GQA makes it < hidden
    vocab_size: int
    max_positions: int | None
    gated_mlp: bool                 # SwiGLU (gate, up, down): four intermediate-wide activations
    fused_attention: bool           # sdpa/flash: no score matrix saved; eager keeps one per layer
    disentangled_attention: bool    # DeBERTa's relative attention: two more score matrices
    # LoRA: params it adds at rank 1, and the input features of the modules it wraps per layer
    # (with dropout on, each wrapped module keeps a dropped-out copy of its input).
    lora_params_per_rank: int
    lora_input_features_per_layer: int
    lora_targets: tuple[str, ...]

    def lora_params(self, rank: int) -> int:
        return self.lora_params_per_rank * rank


def _dtype_bytes(config: Any) -> int:
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype.itemsize
    return 4  # no dtype recorded: from_pretrained loads float32


def _empty_model(config: Any, causal_lm: bool) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
    with init_empty_weights(include_buffers=False):
        return auto.from_config(config)


def shape_of(config: Any, *, causal_lm: bool, lora_target_modules: list[str] | None = None) -> ModelShape:
    """The ModelShape of a transformers config (a PretrainedConfig)."""
    model = _empty_model(config, causal_lm)
    head = model.get_output_embeddings() if causal_lm else None
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    skip = {id(head)} if head is not None else set()
    targets = lora_target_modules or lora_targets_for(getattr(config, "model_type", "")) or []
    quantizable = rows = lora_per_rank = lora_inputs = 0
    for name, module in model.named_modules():
        features = _linear_features(module)
        if features is None or id(module) in skip or f"{name}.weight" in tied:
            continue
        in_features, out_features = features
        quantizable += in_features * out_features
        rows += out_features
        if causal_lm and targets and matches_target(name, targets):
            lora_per_rank += in_features + out_features
            lora_inputs += in_features
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers") or 1)
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    heads = int(_first(config, "num_attention_heads", "n_head") or 1)
    kv_heads = int(_first(config, "num_key_value_heads") or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(_first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden)
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    first_layer = [n for n, _ in model.named_modules() if ".0." in f"{n}."]
    return ModelShape(
        model_type=str(getattr(config, "model_type", "")), causal_lm=causal_lm,
        total_params=sum(p.numel() for p in model.parameters()),
        quantizable_params=quantizable, quantizable_rows=rows, load_dtype_bytes=_dtype_bytes(config),
        hidden_size=hidden, intermediate_size=intermediate, num_layers=layers, num_heads=heads,
        kv_dim=kv_heads * head_dim, vocab_size=int(getattr(config, "vocab_size", 0) or 0),
        max_positions=_first(config, "max_position_embeddings", "n_positions"),
        gated_mlp=any(n.endswith("gate_proj") for n in first_layer),
        fused_attention=attn in FUSED_ATTENTION,
        disentangled_attention=bool(getattr(config, "relative_attention", False)),
        lora_params_per_rank=lora_per_rank, lora_input_features_per_layer=lora_inputs // max(1, layers),
        lora_targets=tuple(targets),
    )


def _linear_features(module: Any) -> tuple[int, int] | None:
    """(in, out) of a linear layer: torch's Linear, or GPT-2's Conv1D (its weight is transposed);
    bitsandbytes quantizes both. None for anything else."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


@lru_cache(maxsize=32)
def shape_of_source(source: str, *, causal_lm: bool, lora_target_modules: tuple[str, ...] | None = None,
                    trust_remote_code: bool = False) -> ModelShape:
    """The ModelShape of a model directory or cached hub name: its config.json only."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    return shape_of(config, causal_lm=causal_lm,
                    lora_target_modules=list(lora_target_modules) if lora_target_modules else None)
