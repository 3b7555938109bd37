"""Chat: supervised fine-tuning of a causal language model on conversations (worker/chat.py is its
TrainingTask, worker/chat_compare.py its comparison; core/serving/generation.py serves it).

Evaluation metrics: `loss` (mean cross-entropy over the assistant's tokens), `token_accuracy`
(share of the assistant's tokens predicted exactly, teacher-forced) and `perplexity` (exp(loss)).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.config import TrainConfig
    from worker.protocols import TrainingTask

CHAT_METRICS = frozenset({"loss", "token_accuracy", "perplexity"})
DEFAULT_METRIC = "loss"

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


class ChatFamily:
    name = "chat"
    tasks = frozenset({"chat"})

    def metric_names(self, task: str) -> frozenset[str]:
        return CHAT_METRICS

    def greater_is_better(self, metric: str) -> bool:
        return metric == "token_accuracy"

    def default_metric(self, task: str) -> str:
        return DEFAULT_METRIC

    def job_defaults(self, task: str) -> dict[str, Any]:
        # LoRA trains a few new weights from zero: it wants ~10x the learning rate of a full
        # fine-tune (2e-4, as peft's and TRL's examples use); conversations are longer than texts.
        return {"learning_rate": 2e-4, "max_seq_length": 512}

    def build_training_task(self, dataset_dir: Path, labels: list[str], task: str, base_model: str,
                            config: TrainConfig) -> TrainingTask:
        from worker.chat import build_chat_task

        return build_chat_task(dataset_dir, base_model, config)

    def setup_events(self, training_task: Any, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
        from worker.chat import setup_events

        return setup_events(training_task, config)

    def model_meta(self, checkpoint: Path, task: str, labels: list[str], hp: Hyperparameters,
                   base_model: str, job_id: str) -> dict[str, Any]:
        from core import store

        saved = store.read_model_meta(checkpoint)
        return {"task": "chat", "labels": [],
                "max_seq_length": saved.get("max_seq_length", hp.max_seq_length),
                "base_model": base_model, "job_id": job_id, "adapter": bool(saved.get("adapter")),
                "system_prompt": hp.system_prompt}

    def compare(self, job_id: str, model_id: str | None = None) -> dict[str, Any]:
        from worker.chat_compare import compare_chat_job

        return compare_chat_job(job_id, model_id)


CHAT = ChatFamily()
