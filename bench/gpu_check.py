"""The GPU check: does the memory plan and the adaptive batch hold on a real GPU? One command,
under 8 minutes on one GPU, a table at the end.

    python bench/gpu_check.py                 # on a GPU: the real shapes (Llama-3.1-8B, 1B, MiniLM)
    python bench/gpu_check.py --tiny          # on the CPU: tiny shapes, the same code paths
    python bench/gpu_check.py --out r.json    # the rows as JSON too

Checks (each one row of the table):
  plan_vs_peak   cap the process at --cap-gib (8) and train a randomly initialised
                 Llama-3.1-8B-shaped model (random weights need no download and take the same
                 memory) with the plan's choice (quantization, optimizer, checkpointing) for a few
                 steps at 512 tokens through the service's loop; the peak against the plan.
  probe_vs_max   the largest micro-batch that really fits (bisection over whole training
                 steps) for MiniLM and a 1B-shaped Llama, against the service's probe (goal:
                 the probe takes >= 90% of it).
  oom_recovery   a real CUDA OOM mid-step on one long batch (the cap set between the short and
                 the long batch's peaks); the weights after the recovered step equal those of a
                 reference run that never ran out of memory.
  bf16_vs_fp32   bf16 autocast against fp32, the same 20 steps: the largest relative difference
                 of the losses.

On the CPU (--tiny) there is no allocator to run out of: the OOMs are the service's injected ones
(TUNESERVE_FAULT_OOM_*), the peak is the process's RSS, and the figures only show the paths run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GIB = 2**30

# Llama-3.1-8B and Llama-3.2-1B as published; the tiny shapes keep their proportions' kinds.
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "tie_word_embeddings": False}
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "vocab_size": 128256,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "tie_word_embeddings": True}
TINY_LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 512,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
              "tie_word_embeddings": False}
# A batch size with many divisors, so the probe's choice (a divisor of the effective batch) can
# come within 90% of any limit.
PROBE_BATCH = 720
ENCODER_VOCAB = {True: 1000, False: 30000}  # token ids drawn below this (--tiny: its vocabulary)


def _loop() -> Any:
    """The service's training loop modules (imported late: the bench parses its flags first)."""
    from worker.training import config, loop, micro_batch, recording

    return loop, micro_batch, config, recording


# --------------------------------------------------------------------------------------------
# A synthetic task: random token ids, the loss summed over them (so any split sums the same)
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticTask:
    model: torch.nn.Module
    model_name: str
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    causal_lm: bool
    num_labels: int = 2
    metric_names: frozenset[str] = frozenset({"loss"})
    baseline_loss: float | None = None
    saved: list[Path] = field(default_factory=list)

    def loss_units(self, examples: Sequence[dict[str, Any]]) -> int:
        return sum(int(e["length"]) - 1 for e in examples) if self.causal_lm else len(examples)

    def collate(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(int(e["length"]) for e in examples)
        ids = torch.zeros((len(examples), width), dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            ids[row, :e["length"]] = torch.tensor(e["input_ids"])
            mask[row, :e["length"]] = 1
        labels = torch.tensor([int(e["label"]) for e in examples])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if self.causal_lm:
            logits, targets = out.logits[:, :-1], batch["input_ids"][:, 1:].clone()
            targets[batch["attention_mask"][:, 1:] == 0] = -100
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                     reduction="sum", ignore_index=-100)
        else:
            loss = torch.nn.functional.cross_entropy(out.logits.float(), batch["labels"], reduction="sum")
        return loss, loss.detach()

    def eval_payload(self, output: Any, batch: dict[str, torch.Tensor]) -> Any:
        return float(output)

    def train_counts(self, output: Any) -> dict[str, torch.Tensor]:
        return {}

    def train_metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return {}

    def compute_metrics(self, payloads: list[Any]) -> dict[str, Any]:
        return {}

    def greater_is_better(self, metric: str) -> bool:
        return False

    def save_checkpoint(self, directory: Path) -> None:
        # Only what trains (LoRA adapters or the whole small model): the check needs no export.
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(trainable, Path(directory) / "trainable.pt")
        self.saved.append(Path(directory))

    def load_checkpoint(self, directory: Path) -> None:
        state = torch.load(Path(directory) / "trainable.pt", weights_only=True)
        self.model.load_state_dict(state, strict=False)


def examples(n: int, length: int, vocab: int, seed: int, lengths: Sequence[int] | None = None
             ) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        size = lengths[i] if lengths is not None else length
        ids = torch.randint(5, vocab, (size,), generator=generator).tolist()
        rows.append({"input_ids": ids, "length": size, "label": i % 2, "row": i})
    return rows


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def write_random_llama(shape: dict[str, Any], directory: Path, seed: int = 0) -> Path:
    """A randomly initialised Llama of this shape saved in bf16: built on the meta device, then
    filled in place (no second copy, no slow per-layer init), so an 8B model costs 16 GB of RAM."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, dtype="bfloat16")
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        model.model.rotary_emb.__init__(config=config)  # its inv_freq buffer was left empty
    model.save_pretrained(directory)
    del model
    gc.collect()
    return directory


def load_for_plan(directory: Path, quantization: str, device: torch.device, lora: bool) -> torch.nn.Module:
    """The base as the plan says (4/8-bit through bitsandbytes, else its dtype), LoRA on top."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from core.planning.lora import lora_targets_for
    from core.planning.quantize import quantized_load_options

    options = quantized_load_options(quantization, device)
    model = AutoModelForCausalLM.from_pretrained(directory, **options)
    if quantization != "none":
        # Casts the norms to fp32 and lets the input embeddings' output require grad (so
        # checkpointed layers see a grad path); the checkpointing itself is the loop's to set.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = model.to(device)
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                 lora_dropout=0.05, target_modules=lora_targets_for("llama")))
    return model


def encoder(tiny: bool, dropout: float = 0.1) -> torch.nn.Module:
    """The bundled MiniLM with a new 2-label head; --tiny: a 2-layer BERT of width 32 (random)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from core.store import bundled_model_path

    drop = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if tiny:
        return BertForSequenceClassification(BertConfig(
            vocab_size=ENCODER_VOCAB[True], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512, num_labels=2, **drop))
    return AutoModelForSequenceClassification.from_pretrained(str(bundled_model_path()), num_labels=2, **drop)


# --------------------------------------------------------------------------------------------
# Running the service's loop
# --------------------------------------------------------------------------------------------

def train(task: SyntheticTask, run_dir: Path, device: str, **overrides: Any) -> Any:
    loop, _, config_module, recording = _loop()
    fields = {"batch_size": 8, "max_steps": 4, "learning_rate": 1e-4, "warmup_ratio": 0.0,
              "metric_for_best_model": "loss", "logging_steps": 1, "device": device, **overrides}
    config = config_module.TrainConfig(**fields)
    sink = recording.RecordingSink()
    result = loop.run_training(task, config, run_dir, sink)
    return result, sink


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Row:
    check: str
    model: str
    figure: str
    goal: str
    passed: bool | None  # None: shown, not judged (the CPU has no allocator to judge)
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def check_plan_vs_peak(args: argparse.Namespace, device: torch.device, work: Path) -> Row:
    from core.planning import measure, plan_for_source
    from core.planning.plan import PlanRequest

    shape, seq = (TINY_LLAMA, 64) if args.tiny else (LLAMA_8B, 512)
    name = "tiny Llama" if args.tiny else "Llama-3.1-8B-shaped (random)"
    directory = write_random_llama(shape, work / "llama-plan")
    memory = measure(device, args.cap_gib)
    request = PlanRequest(chat=True, max_seq_length=seq, batch_size=8)
    plan = plan_for_source(name, str(directory), request, memory)
    if not plan.fits:
        return Row("plan_vs_peak", name, plan.message(), "fits", False)
    choice = plan.to_dict()["choice"]
    micro = max(1, min(8, choice["max_micro_batch_size"]))
    while 8 % micro:
        micro -= 1
    reset_peak(device)
    model = load_for_plan(directory, choice["quantization"], device, lora=True)
    task = SyntheticTask(model=model, model_name=name, causal_lm=True,
                         train_examples=examples(16, seq, shape["vocab_size"], seed=1),
                         eval_examples=examples(2, seq, shape["vocab_size"], seed=2))
    result, sink = train(task, work / "run-plan", str(device), batch_size=8, micro_batch_size=micro,
                         max_steps=args.steps, gradient_checkpointing=choice["gradient_checkpointing"],
                         max_seq_length=seq)
    peak = peak_bytes(device)
    planned = plan.shown.terms.total(micro)
    ratio = peak / planned
    within = peak <= memory.budget_bytes
    figure = (f"{choice['quantization']}, {choice['optimizer']}, checkpointing "
              f"{'on' if choice['gradient_checkpointing'] else 'off'}, micro-batch {micro}: peak "
              f"{peak / GIB:.2f} GiB vs plan {planned / GIB:.2f} GiB ({ratio:.0%})")
    del model, task
    return Row("plan_vs_peak", name, figure, f"peak <= {args.cap_gib} GiB cap and <= plan",
               (within and peak <= planned) if device.type == "cuda" else None,
               data={"peak_gib": peak / GIB, "plan_gib": planned / GIB, "choice": choice,
                     "steps": result.global_step})


def _trainer(task: SyntheticTask, device: torch.device, batch_size: int, oom_above: int | None) -> Any:
    """The service's Trainer around `task`, with an AdamW that changes nothing (lr 0)."""
    _, micro_batch, config_module, recording = _loop()
    config = config_module.TrainConfig(batch_size=batch_size, max_micro_batch_size=batch_size,
                                       fault_oom_above_micro_batch=oom_above)
    optimizer = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=0.0,
                                  weight_decay=0.0)
    return micro_batch.Trainer(task=task, config=config, sink=recording.RecordingSink(), model=task.model,
                               device=device, autocast_dtype=_autocast(device),
                               scaler=torch.amp.GradScaler(device.type, enabled=False),
                               state=config_module.LoopState(micro_batch_size=1), optimizer=optimizer,
                               scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))


def _fits(task: SyntheticTask, micro: int, device: torch.device, oom_above: int | None) -> bool:
    """Does one whole training step (forward, backward, AdamW step) of `micro` samples fit?"""
    from worker.training.devices import free_memory, is_oom

    trainer = _trainer(task, device, micro, oom_above)
    trainer.state.micro_batch_size = micro
    try:
        trainer.forward_backward(task.train_examples, list(range(micro)),
                                 task.loss_units(task.train_examples[:micro]), micro, step=0)
        trainer.optimizer.step()  # AdamW's two moments are allocated here
        ok = True
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_oom(error):
            raise
        ok = False
    del trainer
    free_memory(task.model, device)
    return ok


def _autocast(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def check_probe_vs_max(args: argparse.Namespace, device: torch.device, work: Path, which: str) -> Row:
    if which == "minilm":
        model, vocab, causal = encoder(args.tiny), ENCODER_VOCAB[args.tiny], False
        name = "tiny BERT" if args.tiny else "MiniLM (all-MiniLM-L6-v2)"
        seq = 32 if args.tiny else 128
    else:
        shape = TINY_LLAMA if args.tiny else LLAMA_1B
        directory = write_random_llama(shape, work / "llama-1b")
        model = load_for_plan(directory, "none", device, lora=True)
        seq, vocab, causal = (64 if args.tiny else 512), shape["vocab_size"], True
        name = "tiny Llama" if args.tiny else "Llama-3.2-1B-shaped (random, LoRA)"
    model = model.to(device)
    model.train()
    # On the CPU nothing runs out: the injected OOM stands in for the memory limit.
    oom_above = 37 if device.type == "cpu" else None
    task = SyntheticTask(model=model, model_name=name, causal_lm=causal, train_examples=examples(
        PROBE_BATCH, seq, vocab, seed=3), eval_examples=[])
    started = time.perf_counter()
    low, high = 0, 1
    while high <= PROBE_BATCH and _fits(task, high, device, oom_above):
        low, high = high, high * 2
    high = min(high, PROBE_BATCH + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _fits(task, mid, device, oom_above) else (low, mid)
    trainer = _trainer(task, device, PROBE_BATCH, oom_above)
    probed = trainer.probe(task.train_examples)["micro_batch_size"]
    share = probed / max(1, low)
    del model, task, trainer
    reset_peak(device)
    return Row("probe_vs_max", name, f"probe {probed} of the largest that fits, {low} ({share:.0%}), "
               f"{seq} tokens", ">= 90%", share >= 0.9, time.perf_counter() - started,
               {"probed": probed, "largest": low, "sequence_length": seq})


def check_oom_recovery(args: argparse.Namespace, device: torch.device, work: Path) -> Row:
    """Step 3's window holds the long samples; the reference never runs out of memory."""
    short, long_ = (8, 48) if args.tiny else (16, 512)
    micro, batch = 8, 8
    lengths = [short] * 24 + [long_] * 8  # four windows, one of them long

    def fresh() -> SyntheticTask:
        # No dropout: its masks are drawn per micro-batch, so a split would draw other ones.
        torch.manual_seed(0)
        model = encoder(args.tiny, dropout=0.0).to(device)
        return SyntheticTask(model=model, model_name="MiniLM", causal_lm=False,
                             train_examples=examples(len(lengths), 0, ENCODER_VOCAB[args.tiny], seed=4,
                                                     lengths=lengths),
                             eval_examples=[])

    # One pool of length-sorted windows: the eight long samples make one window of their own.
    common = {"batch_size": batch, "micro_batch_size": micro, "max_steps": 4, "precision": "fp32",
              "data_order": "grouped"}
    started = time.perf_counter()
    reference_task = fresh()
    reset_peak(device)
    # The data order is seeded: find which window is the long one from the loop's own order.
    reference, _ = train(reference_task, work / "run-ref", str(device), **common)
    reference_weights = {n: p.detach().cpu().clone() for n, p in reference_task.model.named_parameters()}
    peak_long = peak_bytes(device)
    del reference_task
    reset_peak(device)
    if device.type == "cuda":
        # A cap under the long batch's peak (weights, state and short batches need far less).
        _, total = torch.cuda.mem_get_info(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, 0.75 * peak_long / total), device)
        extra: dict[str, Any] = {}
    else:
        extra = {"fault_oom_above_micro_batch": micro // 2, "fault_oom_from_step": 1}
    task = fresh()
    try:
        result, sink = train(task, work / "run-oom", str(device), **common, **extra)
    finally:
        from core.planning import apply_memory_cap

        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            apply_memory_cap(device, args.cap_gib)
    recovered = sink.events_of("oom_recovered")
    diff = max(float((p.detach().cpu() - reference_weights[n]).abs().max())
               for n, p in task.model.named_parameters())
    ok = bool(recovered) and diff <= 1e-5 and result.global_step == reference.global_step
    figure = (f"{len(recovered)} OOM recovered (micro-batch {micro} -> "
              f"{recovered[-1]['new_micro_batch_size'] if recovered else '-'}); weights differ by at most "
              f"{diff:.1e} from the reference")
    return Row("oom_recovery", "MiniLM, fp32", figure, "recovered, |dw| <= 1e-5", ok,
               time.perf_counter() - started, {"recoveries": len(recovered), "max_abs_diff": diff})


def check_bf16_vs_fp32(args: argparse.Namespace, device: torch.device, work: Path) -> Row:
    started = time.perf_counter()
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = encoder(args.tiny).to(device)
        task = SyntheticTask(model=model, model_name="MiniLM", causal_lm=False,
                             train_examples=examples(160, 32 if args.tiny else 128, ENCODER_VOCAB[args.tiny],
                                                     seed=5),
                             eval_examples=[])
        _, sink = train(task, work / f"run-{precision}", str(device), batch_size=8, max_steps=20,
                        precision=precision)
        losses[precision] = [values["loss"] for _, _, values in sink.train_points]
        del model, task
        reset_peak(device)
    worst = max(abs(b - f) / max(abs(f), 1e-8) for f, b in zip(losses["fp32"], losses["bf16"], strict=True))
    return Row("bf16_vs_fp32", "MiniLM", f"20 steps: largest relative loss difference {worst:.3%}",
               "<= 5%", worst <= 0.05, time.perf_counter() - started,
               {"fp32": losses["fp32"], "bf16": losses["bf16"]})


def table(rows: list[Row]) -> str:
    header = f"{'check':<14} {'model':<36} {'result':<8} {'s':>6}  figure (goal)"
    lines = [header, "-" * len(header)]
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: "shown"}[r.passed]
        lines.append(f"{r.check:<14} {r.model:<36} {verdict:<8} {r.seconds:>6.1f}  {r.figure} ({r.goal})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (what the test runs)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--cap-gib", type=float, default=8.0, help="the memory cap of plan_vs_peak")
    parser.add_argument("--steps", type=int, default=4, help="training steps of plan_vs_peak")
    parser.add_argument("--only", default="", help="comma-separated checks to run (default: all)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: run with --tiny (the real shapes need a GPU)")
    from core.planning import apply_memory_cap

    # Every check but oom_recovery (which sets its own) runs under the cap, as a worker with
    # TUNESERVE_DEVICE_MEMORY_GIB does: an 8 GB card on a bigger GPU.
    apply_memory_cap(device, args.cap_gib)
    wanted = set(filter(None, args.only.split(",")))
    checks = [("plan_vs_peak", lambda w: check_plan_vs_peak(args, device, w)),
              ("probe_vs_max", lambda w: check_probe_vs_max(args, device, w, "minilm")),
              ("probe_vs_max", lambda w: check_probe_vs_max(args, device, w, "llama")),
              ("oom_recovery", lambda w: check_oom_recovery(args, device, w)),
              ("bf16_vs_fp32", lambda w: check_bf16_vs_fp32(args, device, w))]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, (name, run) in enumerate(checks):
            if wanted and name not in wanted:
                continue
            started = time.perf_counter()
            try:
                row = run(Path(tmp) / str(i))
            except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
                row = Row(name, "-", f"error: {type(exc).__name__}: {str(exc)[:300]}", "runs", False)
            row.seconds = row.seconds or time.perf_counter() - started
            rows.append(row)
            print(f"[{name}] {row.figure}", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny)"
    print(f"\nGPU check on {where}, torch {torch.__version__}\n")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps([vars(r) for r in rows], indent=2, default=str))
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
