"""`tuneserve plan`: will a base model fit a GPU, and in what precision? The server's POST /plan
(it reads the model's config where jobs will load it), or `--local` to plan in this process."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.client import output as out
from app.client.commands.common import api_of, calls, console, fail


def plan(
    ctx: typer.Context,
    base_model: Annotated[str, typer.Option(help="hub name, model directory or tuned model id")],
    gpu_memory: Annotated[float | None, typer.Option(
        help="GiB of GPU memory to plan for (default: the server's TUNESERVE_DEVICE_MEMORY_GIB)")] = None,
    task: Annotated[str, typer.Option(help="chat | single_label | multi_label")] = "chat",
    max_seq_length: Annotated[int | None, typer.Option(help="default: the task's (chat 512)")] = None,
    finetuning: Annotated[str, typer.Option(help="chat: auto | lora | full")] = "auto",
    quantization: Annotated[str, typer.Option(help="auto | none | 8bit | 4bit")] = "auto",
    optimizer: Annotated[str, typer.Option(help="auto | adamw | adamw_8bit")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="the effective batch (caps the micro-batch)")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    no_bf16: Annotated[bool, typer.Option("--no-bf16", help="a GPU without bf16 (before Ampere)")] = False,
    local: Annotated[bool, typer.Option(help="plan here from a local config, without a server")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the plan's JSON instead of text.")] = False,
) -> None:
    """The memory plan from the model's config alone: each term in GiB, the free memory, each
    choice (quantization, optimizer, gradient checkpointing) and why."""
    hp: dict[str, Any] = {"finetuning": finetuning, "quantization": quantization, "optimizer": optimizer}
    for key, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size), ("lora_r", lora_r)):
        if value is not None:
            hp[key] = value
    request = {"base_model": base_model, "task": task, "gpu_memory_gib": gpu_memory, "bf16": not no_bf16,
               "hyperparameters": hp}
    body = _local_plan(request) if local else api_of(ctx).post("/plan", json=request)
    if json_:
        return out.print_json(console, body)
    from core.planning.plan import plan_lines

    for line in plan_lines(body):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not body["fits"]:
        raise typer.Exit(3)  # scripts can tell "does not fit" from a refusal (1) or no server (2)


def _local_plan(request: dict[str, Any]) -> dict[str, Any]:
    """POST /plan's answer, computed in this process (the server's request validation included)."""
    from pydantic import ValidationError

    from app.schemas.plan import PlanCreate
    from core import store
    from core.catalogue import with_job_defaults
    from core.planning import PlanError, PlanRequest, gpu_of_size, plan_for_source

    try:
        plan_in = PlanCreate.model_validate(request)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    if plan_in.gpu_memory_gib is None:
        fail("--local needs --gpu-memory (GiB of the GPU to plan for)")
    hp = with_job_defaults(plan_in.hyperparameters, plan_in.task)
    plan_request = PlanRequest.from_hyperparameters(hp, chat=plan_in.task == "chat")
    try:
        return plan_for_source(plan_in.base_model, store.resolve_base_model(plan_in.base_model), plan_request,
                               gpu_of_size(plan_in.gpu_memory_gib, bf16=plan_in.bf16),
                               lora_target_modules=hp.lora_target_modules).to_dict()
    except PlanError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever the config holds, say which model and why
        fail(f"cannot read the config of {plan_in.base_model!r}: {str(exc).splitlines()[0][:300]}")


def register(root: typer.Typer) -> None:
    root.command("plan")(calls(plan))
