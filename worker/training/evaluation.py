"""Evaluation on the held-out split, with its own OOM budget."""

from __future__ import annotations

from typing import Any

import torch

from worker.training import faults
from worker.training.devices import free_memory, is_oom, to_device
from worker.training.micro_batch import Trainer
from worker.training.protocols import TrainingError


def evaluate(trainer: Trainer) -> dict[str, Any]:
    """The task's metrics on the evaluation split plus the mean `loss`. An OOM here halves the
    evaluation batch only (the training micro-batch is a different budget: no gradients)."""
    task, model, state = trainer.task, trainer.model, trainer.state
    examples = task.eval_examples
    if not examples:
        return {}
    # Longest first: if a batch is going to run out of memory, it is the first one.
    order = sorted(range(len(examples)), key=lambda i: -examples[i]["length"])
    payloads: list[Any] = []
    loss_sum = torch.zeros((), device=trainer.device)
    units = 0
    model.eval()
    try:
        position = 0
        while position < len(order):
            size = state.eval_batch_size
            chunk = [examples[i] for i in order[position:position + size]]
            try:
                faults.check_eval_batch(len(chunk), trainer.config.fault_oom_above_eval_batch)
                batch = to_device(task.collate(chunk), trainer.device)
                with torch.no_grad(), trainer.autocast():
                    batch_loss, output = task.forward(model, batch)
                payloads.append(task.eval_payload(output, batch))
                loss_sum += batch_loss.float()
                units += task.loss_units(chunk)
                position += len(chunk)
                continue
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_oom(error):
                    raise
                reason = str(error)
            free_memory(model, trainer.device)
            if size == 1:
                raise TrainingError(
                    f"Out of memory while evaluating the model {task.model_name} one sample at a time "
                    f"on {trainer.device}. What would help: a shorter max_seq_length (now "
                    f"{trainer.config.max_seq_length}) or a smaller base model.",
                    kind="environment",
                )
            state.eval_batch_size = max(1, size // 2)
            trainer.sink.event(
                "eval_oom",
                f"Out of memory while evaluating with batch {size}; evaluating with batch "
                f"{state.eval_batch_size} (the training micro-batch is unchanged).",
                {"old_eval_batch_size": size, "new_eval_batch_size": state.eval_batch_size,
                 "error": reason[:500]},
            )
    finally:
        model.train()
    metrics = task.compute_metrics(payloads)
    metrics["loss"] = float(loss_sum) / max(1, units)
    return metrics
