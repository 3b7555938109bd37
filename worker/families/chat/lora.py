"""LoRA adapters for chat fine-tuning, through peft: which linear layers get an adapter, and
wrapping the base model with them."""

from __future__ import annotations

from typing import Any

from worker.training.config import TrainConfig
from worker.training.protocols import TrainingError

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


def default_lora_targets(model_type: str) -> list[str] | None:
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = PEFT_DEFAULTS.get(model_type)
    return list(targets) if targets else None



def apply_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules or default_lora_targets(getattr(model.config, "model_type", ""))
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                             lora_dropout=config.lora_dropout, target_modules=targets)
    try:
        return get_peft_model(model, lora_config)
    except ValueError as error:  # "Target modules {...} not found in the base model"
        raise TrainingError(f"LoRA cannot be applied: {error}. Set hyperparameters.lora_target_modules "
                            "to names of the model's linear layers, e.g. [\"q_proj\", \"v_proj\"]."
                            ) from error
