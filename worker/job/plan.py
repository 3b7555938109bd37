"""The job's memory plan, made before its model loads: what fits the device decides the
quantization, the optimizer and gradient checkpointing (core/planning), and a job that cannot fit
fails at once with the numbers instead of a CUDA traceback minutes later.

A resumed attempt keeps the first attempt's choices: its checkpoints hold an adapter trained on
that base and optimizer state of that optimizer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from core.jobspec import Hyperparameters
from core.planning import PlanError, PlanRequest, apply_memory_cap, measure, plan_for_source
from core.settings import Settings
from worker.training.config import TrainConfig
from worker.training.devices import pick_device
from worker.training.errors import TrainingError

log = logging.getLogger("tuneserve.worker.plan")


def plan_job(base_model: str, source: str, task: str, hp: Hyperparameters, config: TrainConfig,
             settings: Settings) -> dict[str, Any] | None:
    """The plan (MemoryPlan.to_dict()) for this job on this worker's device, under the cap; None
    when the planner cannot read the model (the loading itself then says why)."""
    device = pick_device(config.device)
    request = PlanRequest.from_hyperparameters(hp, chat=task == "chat",
                                               max_micro_batch_size=settings.max_micro_batch_size)
    try:
        plan = plan_for_source(base_model, source, request, measure(device, settings.device_memory_gib),
                               lora_target_modules=hp.lora_target_modules,
                               trust_remote_code=settings.trust_remote_code)
    except PlanError as error:
        raise TrainingError(str(error)) from error
    except Exception:  # noqa: BLE001 - an architecture the planner cannot build must not stop the job
        log.warning("no memory plan for %s: its config could not be built on the meta device", base_model,
                    exc_info=True)
        return None
    return plan.to_dict()


def apply_plan(config: TrainConfig, plan: dict[str, Any] | None) -> TrainConfig:
    """The config with the plan's choices where the job left them to auto; a plan that does not fit
    fails the job now (error_kind environment) with the plan's numbers."""
    if plan is None:
        return dataclasses.replace(config, quantization=_explicit(config.quantization, "none"),
                                   optimizer=_explicit(config.optimizer, "adamw"))
    if not plan["fits"]:
        raise TrainingError(plan["message"], kind="environment")
    choice = plan["choice"]
    return dataclasses.replace(config, quantization=choice["quantization"], optimizer=choice["optimizer"],
                               gradient_checkpointing=config.gradient_checkpointing
                               or bool(choice["gradient_checkpointing"]),
                               memory_plan_message=str(plan["message"]))


def _explicit(value: str, default: str) -> str:
    return default if value == "auto" else value


def plan_event(plan: dict[str, Any], resumed: bool) -> tuple[str, str, dict[str, Any]]:
    from core.planning.plan import plan_lines

    prefix = "Kept the first attempt's memory plan (its checkpoints were trained with it): " \
        if resumed else ""
    return "memory_plan", prefix + " | ".join(line.strip() for line in plan_lines(plan) if line.strip()), plan


def cap_device_memory(config: TrainConfig, settings: Settings) -> None:
    """TUNESERVE_DEVICE_MEMORY_GIB made binding on CUDA before anything is allocated."""
    apply_memory_cap(pick_device(config.device), settings.device_memory_gib)
