"""The memory plan: which precision, optimizer and checkpointing a job trains with, chosen from
the model's config and the device's free memory before any weight is loaded.

The choice is an order of preference, each step the first that fits at micro-batch 1 of the
longest sequence:
    quantization            the base as it is (bf16) > 8-bit > 4-bit NF4 (chat LoRA only: a
                            quantized weight cannot train, so full fine-tunes keep their dtype)
    optimizer               AdamW > bitsandbytes' paged 8-bit AdamW (a quarter of the state)
    gradient checkpointing  off > on (about a third slower, a fraction of the activations)
Precision is kept first because it is what quality depends on; speed is given up last but one.
What the job sets explicitly is not chosen: it is taken, and the plan says whether it fits.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.planning.device import GIB, DeviceMemory
from core.planning.estimate import (
    OVERHEAD_FIXED_BYTES,
    Optimizer,
    Option,
    Quantization,
    Terms,
    Workload,
    estimate,
)
from core.planning.shapes import ModelShape

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters

QUANTIZATION_WORDS = {"8bit": "8-bit (LLM.int8)", "4bit": "4-bit NF4 (double quantization)"}
OPTIMIZER_WORDS = {"adamw": "AdamW", "adamw_8bit": "paged 8-bit AdamW (bitsandbytes)"}
DTYPE_WORDS = {2: "bf16", 4: "fp32", 1: "8-bit"}


class PlanError(ValueError):
    """The request cannot be planned (a quantized full fine-tune): the user's to fix."""


@dataclass(frozen=True)
class PlanRequest:
    """What the job asks for, in the job spec's words."""

    chat: bool                                  # a causal LM (chat), else a classifier
    finetuning: str = "auto"                    # chat: auto|lora|full; classifiers: always full
    quantization: str = "auto"                  # auto | none | 8bit | 4bit
    optimizer: str = "auto"                     # auto | adamw | adamw_8bit
    gradient_checkpointing: bool = False        # True: from the start, whatever the plan says
    max_seq_length: int = 512
    lora_r: int = 16
    lora_dropout: float = 0.05
    precision: str = "auto"                     # auto | fp32 | bf16 | fp16 (as the loop reads it)
    batch_size: int = 32                        # the effective batch: no micro-batch exceeds it
    max_micro_batch_size: int = 256

    @property
    def lora(self) -> bool:
        return self.chat and self.finetuning != "full"

    @classmethod
    def from_hyperparameters(cls, hp: Hyperparameters, *, chat: bool, max_micro_batch_size: int = 256
                             ) -> PlanRequest:
        """The request a job's hyperparameters (its task's defaults applied) make."""
        return cls(chat=chat, finetuning=hp.finetuning, quantization=hp.quantization, optimizer=hp.optimizer,
                   gradient_checkpointing=hp.gradient_checkpointing, max_seq_length=hp.max_seq_length,
                   lora_r=hp.lora_r, lora_dropout=hp.lora_dropout, precision=hp.precision,
                   batch_size=hp.batch_size, max_micro_batch_size=max_micro_batch_size)


@dataclass
class OptionPlan:
    option: Option
    terms: Terms
    budget_bytes: int

    @property
    def fits(self) -> bool:
        return self.terms.total(1) <= self.budget_bytes

    def to_dict(self, limit: int) -> dict[str, Any]:
        return {"quantization": self.option.quantization, "optimizer": self.option.optimizer,
                "gradient_checkpointing": self.option.gradient_checkpointing,
                "total_gib": _gib(self.terms.total(1)), "fits": self.fits,
                "max_micro_batch_size": self.terms.largest_micro_batch(self.budget_bytes, limit)}


@dataclass
class MemoryPlan:
    base_model: str
    request: PlanRequest
    shape: ModelShape
    device: DeviceMemory
    workload: Workload
    options: list[OptionPlan]
    chosen: OptionPlan | None                  # None: nothing fits
    smallest: OptionPlan                       # the option that needs the least memory
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.chosen is not None

    @property
    def shown(self) -> OptionPlan:
        return self.chosen or self.smallest

    @property
    def micro_batch_limit(self) -> int:
        return max(1, min(self.request.batch_size, self.request.max_micro_batch_size))

    @property
    def max_micro_batch_size(self) -> int:
        return self.shown.terms.largest_micro_batch(self.device.budget_bytes, self.micro_batch_limit)

    def precision_words(self, quantization: str) -> str:
        if quantization == "none":
            return DTYPE_WORDS.get(self.shape.load_dtype_bytes, f"{self.shape.load_dtype_bytes * 8}-bit")
        return QUANTIZATION_WORDS[quantization]

    def message(self) -> str:
        """One sentence: what was chosen, or the numbers of why nothing fits."""
        shown, s = self.shown, self.workload.sequence_length
        precision = self.precision_words(shown.option.quantization)
        needs = (f"needs {_gib(shown.terms.total(1)):.1f} GiB at {precision}, micro-batch 1, {s} tokens"
                 f"{', gradient checkpointing' if shown.option.gradient_checkpointing else ''}")
        if self.chosen is None:
            advice = ("a shorter max_seq_length, a smaller base model, or a GPU with more memory"
                      + ("" if self.request.lora or not self.request.chat
                         else "; LoRA (finetuning: lora) with quantization 4bit needs far less"))
            return (f"{self.base_model} does not fit: it {needs.replace('needs', 'needs ≥', 1)}; "
                    f"{self.device.describe()}. What would help: {advice}.")
        return (f"{self.base_model} fits: {self.precision_words(shown.option.quantization)}, "
                f"{OPTIMIZER_WORDS[shown.option.optimizer]}, gradient checkpointing "
                f"{'on' if shown.option.gradient_checkpointing else 'off'}; it {needs}, up to micro-batch "
                f"{self.max_micro_batch_size}; {self.device.describe()}.")

    def to_dict(self) -> dict[str, Any]:
        shown = self.shown
        terms = shown.terms
        return {
            "base_model": self.base_model, "fits": self.fits, "message": self.message(),
            "task": "chat" if self.request.chat else "classification",
            "finetuning": "lora" if self.request.lora else "full",
            "sequence_length": self.workload.sequence_length,
            "device": self.device.to_dict(),
            "params": {"total": self.shape.total_params, "quantizable": self.shape.quantizable_params,
                       "trainable": self.shape.lora_params(self.request.lora_r) if self.request.lora
                       else self.shape.total_params},
            "choice": {"quantization": shown.option.quantization, "optimizer": shown.option.optimizer,
                       "gradient_checkpointing": shown.option.gradient_checkpointing,
                       "max_micro_batch_size": self.max_micro_batch_size if self.fits else 0,
                       "compute_dtype": "bf16" if self.workload.compute_dtype_bytes == 2 else "fp32"},
            "terms_gib": {"weights": _gib(terms.weights), "gradients": _gib(terms.gradients),
                          "optimizer": _gib(terms.optimizer), "activations": _gib(terms.activations(1)),
                          "activations_per_sample": _gib(terms.activations_per_sample),
                          "overhead": _gib(terms.overhead(1)), "total": _gib(terms.total(1))},
            "reasons": dict(self.reasons),
            "options": [o.to_dict(self.micro_batch_limit) for o in self.options],
        }

    def lines(self) -> list[str]:
        return plan_lines(self.to_dict())


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """A plan (MemoryPlan.to_dict(), or a job's memory_plan) as text: its sentence, each term in
    GiB, the free memory, each choice and its reason. The CLI and the job's event print this."""
    t, choice = plan["terms_gib"], plan["choice"]
    checkpointing = "on" if choice["gradient_checkpointing"] else "off"
    out = [plan["message"], "",
           f"at micro-batch 1, {plan['sequence_length']} tokens ({choice['quantization']}, "
           f"{choice['optimizer']}, gradient checkpointing {checkpointing}):"]
    for name in ("weights", "gradients", "optimizer", "activations", "overhead", "total"):
        out.append(f"  {name:<12} {t[name]:>8.2f} GiB")
    out.append(f"  {'per sample':<12} {t['activations_per_sample']:>8.2f} GiB more activations each")
    out.append(f"  {'free':<12} {plan['device']['budget_gib']:>8.2f} GiB ({plan['device']['name']})")
    out.append("")
    for name in ("quantization", "optimizer", "gradient_checkpointing"):
        out.append(f"{name}: {choice[name]} - {plan['reasons'].get(name, '')}")
    if plan["fits"]:
        out.append(f"micro-batch: up to {choice['max_micro_batch_size']} estimated (the worker's probe "
                   "measures it)")
    return out


def _gib(n: int) -> float:
    return round(n / GIB, 6)  # six places: a tiny test model needs a few MB


def workload_for(request: PlanRequest, shape: ModelShape, device: DeviceMemory) -> Workload:
    """How the loop will compute on this device (worker/devices.py's pick_precision, in bytes)."""
    sixteen = (device.kind == "cuda" and request.precision != "fp32") or request.precision == "bf16"
    sequence = request.max_seq_length
    if shape.max_positions:  # the task truncates to the model's positions too
        sequence = min(sequence, shape.max_positions)
    return Workload(lora=request.lora, lora_r=request.lora_r, lora_dropout=request.lora_dropout,
                    sequence_length=int(sequence), activation_bytes=2 if sixteen else 4,
                    compute_dtype_bytes=2 if device.kind == "cuda" else 4,
                    overhead_fixed_bytes=OVERHEAD_FIXED_BYTES if device.kind == "cuda" else 0)


def candidates(request: PlanRequest) -> tuple[list[Quantization], list[Optimizer], list[bool]]:
    if request.quantization in ("8bit", "4bit") and not request.lora:
        raise PlanError(f"quantization {request.quantization} trains LoRA adapters on a frozen quantized "
                        "base: it applies to chat jobs with finetuning lora (or auto). A full fine-tune "
                        "updates every weight, which cannot be stored in 4 or 8 bits; use quantization auto "
                        "or none.")
    quantizations: list[Quantization]
    if request.quantization == "auto":
        quantizations = ["none", "8bit", "4bit"] if request.lora else ["none"]
    else:
        quantizations = [request.quantization]  # type: ignore[list-item]
    optimizers: list[Optimizer] = (["adamw", "adamw_8bit"] if request.optimizer == "auto"
                                   else [request.optimizer])  # type: ignore[list-item]
    checkpointing = [True] if request.gradient_checkpointing else [False, True]
    return quantizations, optimizers, checkpointing


def make_plan(base_model: str, shape: ModelShape, request: PlanRequest, device: DeviceMemory) -> MemoryPlan:
    workload = workload_for(request, shape, device)
    quantizations, optimizers, checkpointing = candidates(request)
    budget = device.budget_bytes
    options = [OptionPlan(Option(q, o, c), estimate(shape, Option(q, o, c), workload), budget)
               for q, o, c in itertools.product(quantizations, optimizers, checkpointing)]
    by: dict[tuple[str, str, bool], OptionPlan] = {
        (p.option.quantization, p.option.optimizer, p.option.gradient_checkpointing): p for p in options}
    smallest = min(options, key=lambda p: p.terms.total(1))

    def fitting(q: str | None = None, o: str | None = None) -> list[OptionPlan]:
        return [p for p in options if p.fits and q in (None, p.option.quantization)
                and o in (None, p.option.optimizer)]

    chosen: OptionPlan | None = None
    q_fit = next((q for q in quantizations if fitting(q)), None)
    if q_fit is not None:
        o_fit = next(o for o in optimizers if fitting(q_fit, o))
        chosen = fitting(q_fit, o_fit)[0]  # options are ordered checkpointing off, then on
    plan = MemoryPlan(base_model=base_model, request=request, shape=shape, device=device, workload=workload,
                      options=options, chosen=chosen, smallest=smallest)
    plan.reasons = _reasons(plan, by, quantizations)
    return plan


def _reasons(plan: MemoryPlan, by: Mapping[tuple[str, str, bool], OptionPlan],
             quantizations: list[Quantization]) -> dict[str, str]:
    request, shown = plan.request, plan.shown
    q, o, c = shown.option.quantization, shown.option.optimizer, shown.option.gradient_checkpointing
    budget = _gib(plan.device.budget_bytes)
    reasons: dict[str, str] = {}

    def least(quantization: str) -> float:
        return min(p.terms.total(1) for k, p in by.items() if k[0] == quantization) / GIB

    if request.quantization != "auto":
        reasons["quantization"] = f"set by the job ({plan.precision_words(q)})"
    elif not request.lora:
        reasons["quantization"] = ("a full fine-tune trains every weight, so the base keeps its dtype "
                                   f"({plan.precision_words('none')})")
    else:
        tried = quantizations[:quantizations.index(q)] if plan.fits else quantizations
        refused = [f"{plan.precision_words(x)} needs {least(x):.1f} GiB" for x in tried]
        weights = f"weights {_gib(shown.terms.weights):.2f} GiB"
        if not refused:
            reasons["quantization"] = f"{plan.precision_words(q)} fits ({weights}, {budget:.1f} GiB free)"
        elif plan.fits:
            reasons["quantization"] = (f"{'; '.join(refused)} of {budget:.1f} GiB free, so "
                                       f"{plan.precision_words(q)} ({weights})")
        else:
            reasons["quantization"] = f"none fits: {'; '.join(refused)} of {budget:.1f} GiB free"
    state = f"{_gib(shown.terms.optimizer):.2f} GiB of state"
    if request.optimizer != "auto":
        reasons["optimizer"] = f"set by the job ({OPTIMIZER_WORDS[o]}, {state})"
    elif o == "adamw":
        reasons["optimizer"] = f"AdamW's full-precision state fits ({state})"
    else:
        adamw = by[(q, "adamw", c)] if (q, "adamw", c) in by else None
        full = f" ({_gib(adamw.terms.optimizer):.2f} GiB)" if adamw else ""
        reasons["optimizer"] = (f"AdamW's full-precision state{full} does not fit beside the weights and "
                                f"activations, so paged 8-bit AdamW ({state})")
    without = by.get((q, o, False))
    if request.gradient_checkpointing:
        reasons["gradient_checkpointing"] = "set by the job"
    elif not c:
        reasons["gradient_checkpointing"] = (f"off: activations at micro-batch 1 "
                                             f"({_gib(shown.terms.activations(1)):.2f} GiB) fit")
    else:
        need = f"{_gib(without.terms.activations(1)):.2f} GiB" if without else "too much"
        reasons["gradient_checkpointing"] = (f"on from the start: activations at micro-batch 1 would need "
                                             f"{need}, which does not fit; with checkpointing "
                                             f"{_gib(shown.terms.activations(1)):.2f} GiB")
    return reasons
