"""LoRA adapters for chat fine-tuning, through peft: which linear layers get an adapter, and
wrapping the base model with them."""

from __future__ import annotations

from typing import Any

# The default targets per architecture live in core/planning/lora.py: the memory plan counts the
# adapter's weights from the same table this applies.
from core.planning.lora import LORA_TARGETS as LORA_TARGETS
from core.planning.lora import lora_targets_for as default_lora_targets
from worker.training.config import TrainConfig
from worker.training.protocols import TrainingError


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
