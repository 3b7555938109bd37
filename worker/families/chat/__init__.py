"""Chat: supervised fine-tuning of a causal language model on conversations (task.py is its
TrainingTask, compare.py its base-vs-tuned report; core/serving/generation.py serves it). Its
metrics (loss, token_accuracy, perplexity) are in core/catalogue.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.training.config import TrainConfig
    from worker.training.protocols import TrainingTask

class ChatFamily:
    name = "chat"
    tasks = frozenset({"chat"})

    def build_training_task(self, dataset_dir: Path, labels: list[str], task: str, base_model: str,
                            config: TrainConfig) -> TrainingTask:
        from worker.families.chat.task import build_chat_task

        return build_chat_task(dataset_dir, base_model, config)

    def setup_events(self, training_task: Any, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
        from worker.families.chat.task import setup_events

        return setup_events(training_task, config)

    def model_meta(self, checkpoint: Path, task: str, labels: list[str], hp: Hyperparameters,
                   base_model: str, job_id: str) -> dict[str, Any]:
        from core import store

        saved = store.read_model_meta(checkpoint)
        return {"task": "chat", "labels": [],
                "max_seq_length": saved.get("max_seq_length", hp.max_seq_length),
                "base_model": base_model, "job_id": job_id, "adapter": bool(saved.get("adapter")),
                "system_prompt": hp.system_prompt, "quantization": saved.get("quantization", "none")}

    def compare(self, job_id: str, model_id: str | None = None) -> dict[str, Any]:
        from worker.families.chat.compare import compare_chat_job

        return compare_chat_job(job_id, model_id)


CHAT = ChatFamily()
