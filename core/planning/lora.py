"""Which modules LoRA wraps by default, per architecture: the planner counts the adapter's
weights from this, and the chat family applies it, so both name the same modules."""

from __future__ import annotations

# LoRA on every attention projection: the usual recipe for chat SFT of decoder LMs (peft's own
# defaults take q and v only). Other architectures fall back to peft's per-architecture table;
# hyperparameters.lora_target_modules overrides both.
LORA_TARGETS: dict[str, list[str]] = {
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj"]
       for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo",
                 "olmo2", "exaone", "granite", "cohere", "stablelm")},
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def lora_targets_for(model_type: str) -> list[str] | None:
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = PEFT_DEFAULTS.get(model_type)
    return list(targets) if targets else None


def matches_target(module_name: str, targets: list[str]) -> bool:
    """peft's rule for a list of names: the module's full name, or its name ending in '.' + target."""
    return any(module_name == t or module_name.endswith(f".{t}") for t in targets)
