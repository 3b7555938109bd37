"""The memory plan: will a model train on this device, and in what precision?

    shapes.py    what the model is made of, from its config alone (meta-device init, no weights)
    estimate.py  weights, gradients, optimizer state and activations of one option, in bytes
    plan.py      the choice of quantization, optimizer and gradient checkpointing, and why
    device.py    the free memory, and the TUNESERVE_DEVICE_MEMORY_GIB cap
    lora.py      which modules LoRA wraps by default (the planner and the chat family agree)

Imports torch and transformers only inside functions, like the rest of core/.
"""

from __future__ import annotations

from core.planning.device import DeviceMemory, apply_memory_cap, gpu_of_size, measure
from core.planning.plan import MemoryPlan, PlanError, PlanRequest, make_plan
from core.planning.shapes import ModelShape, shape_of, shape_of_source


def plan_for_source(base_model: str, source: str, request: PlanRequest, device: DeviceMemory, *,
                    lora_target_modules: list[str] | None = None,
                    trust_remote_code: bool = False) -> MemoryPlan:
    """The plan for a model directory or cached hub name (its config.json only)."""
    shape = shape_of_source(source, causal_lm=request.chat,
                            lora_target_modules=tuple(lora_target_modules) if lora_target_modules else None,
                            trust_remote_code=trust_remote_code)
    return make_plan(base_model, shape, request, device)


__all__ = ["DeviceMemory", "MemoryPlan", "ModelShape", "PlanError", "PlanRequest", "apply_memory_cap",
           "gpu_of_size", "make_plan", "measure", "plan_for_source", "shape_of", "shape_of_source"]
