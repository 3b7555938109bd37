"""QLoRA benchmark: tokens/s and peak memory of tuneserve's loop against Trainer + peft + bitsandbytes,
the same model, examples and recipe, one machine, one run.

Both peers fine-tune the same small random Llama (4 layers, hidden 256, intermediate 768: every
width a multiple of bitsandbytes' 64-weight blocks; a 4,000-token BPE trained on the data) loaded
in 4-bit NF4 with double quantization (fp32 compute on the CPU, bf16 on a GPU) with the same LoRA
adapter (r 16, alpha 32, dropout 0.05 on q/k/v/o_proj) on the first N conversations of
korean_chatbot_qa.csv, 1 epoch, effective batch 8, lr 2e-4 cosine with 10% warmup, max length
128, seed 42, on the SAME tokenized examples (worker/families/chat/task.py).

  a  tuneserve: build_chat_task (quantization 4bit: BitsAndBytesConfig + prepare_model_for_kbit_training)
     + run_training (probe, length-grouped windows, the end-of-epoch evaluation and checkpoint)
  b  Trainer + peft + bitsandbytes as a user writes it: from_pretrained(quantization_config=...),
     prepare_model_for_kbit_training, get_peft_model, DataCollatorForSeq2Seq,
     train_sampling_strategy="group_by_length", no evaluation, no saving

Each peer in its own subprocess (peak RSS, or peak CUDA memory on a GPU, is per peer).

    .venv/bin/python bench/qlora_bench.py              # 1,000 conversations
    .venv/bin/python bench/qlora_bench.py --rows 200   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.chat_bench import (  # noqa: E402 - after the path is set
    BATCH_SIZE,
    DEFAULT_DATA,
    LEARNING_RATE,
    LORA,
    MAX_LENGTH,
    SEED,
    WARMUP_RATIO,
    build_model,
    load_conversations,
    write_dataset,
)

PEERS = {"a": "tuneserve loop (QLoRA 4-bit)", "b": "Trainer + peft + bitsandbytes (QLoRA 4-bit)"}


def run_a(args: argparse.Namespace) -> dict[str, Any]:
    from worker.families.chat.task import build_chat_task
    from worker.training.config import TrainConfig
    from worker.training.loop import run_training
    from worker.training.recording import RecordingSink

    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                         max_seq_length=MAX_LENGTH, warmup_ratio=WARMUP_RATIO, lr_scheduler="cosine",
                         seed=SEED, logging_steps=1, metric_for_best_model="loss", lora_r=16, lora_alpha=32,
                         lora_dropout=0.05, lora_target_modules=list(LORA["targets"]),  # type: ignore[call-overload]
                         device=args.device, torch_threads=args.threads, quantization="4bit",
                         optimizer="adamw")
    task = build_chat_task(Path(args.dataset), args.model, config)
    tokens = sum(e["length"] for e in task.train_examples)
    with tempfile.TemporaryDirectory(prefix="tuneserve-qlora-bench-") as run_dir:
        sink = RecordingSink()
        started = time.perf_counter()
        result = run_training(task, config, Path(run_dir), sink)
        train_s = time.perf_counter() - started
    return {"train_s": train_s, "tokens": tokens, "steps": result.global_step,
            "micro_batch_size": result.micro_batch_size,
            "mean_train_loss": sum(v["loss"] for _, _, v in sink.train_points) / len(sink.train_points)}


def run_b(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from worker.families.chat.task import load_conversations as load_split
    from worker.families.chat.task import tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    conversations, rows = load_split(Path(args.dataset) / "train.parquet")
    examples, _, _ = tokenize_conversations(tokenizer, conversations, rows, MAX_LENGTH, None)
    train = Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples],
                               "labels": [e["labels"] for e in examples],
                               "length": [e["length"] for e in examples]})
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=compute, device_map={"": 0 if device.type == "cuda" else "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True,
                                               bnb_4bit_compute_dtype=compute))
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                      target_modules=list(LORA["targets"]))
    model = get_peft_model(prepare_model_for_kbit_training(base, use_gradient_checkpointing=False), lora)
    with tempfile.TemporaryDirectory(prefix="tuneserve-qlora-bench-") as out:
        training_args = TrainingArguments(
            output_dir=out, num_train_epochs=1, per_device_train_batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE, warmup_steps=WARMUP_RATIO, lr_scheduler_type="cosine", seed=SEED,
            weight_decay=0.01, max_grad_norm=1.0, eval_strategy="no", save_strategy="no", report_to="none",
            logging_steps=1, disable_tqdm=True, use_cpu=device.type == "cpu",
            bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
            train_sampling_strategy="group_by_length", length_column_name="length")
        trainer = Trainer(model=model, args=training_args, train_dataset=train,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                               label_pad_token_id=-100),
                          processing_class=tokenizer)
        started = time.perf_counter()
        trained = trainer.train()
        train_s = time.perf_counter() - started
    return {"train_s": train_s, "tokens": sum(train["length"]), "steps": trained.global_step,
            "mean_train_loss": trained.training_loss}


def child_main(args: argparse.Namespace) -> None:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    result = {"a": run_a, "b": run_b}[args.child](args)
    result["tokens_per_s"] = result["tokens"] / result["train_s"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result_file).write_text(json.dumps(result, default=str))


def run_peer(peer: str, args: argparse.Namespace, model: Path, dataset: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = Path(f.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", peer,
               "--result-file", str(result_file), "--model", str(model), "--dataset", str(dataset),
               "--threads", str(args.threads), "--device", args.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    print(f"[{peer}] {PEERS[peer]} ...", flush=True)
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-4000:]
            raise SystemExit(f"[{peer}] failed (exit {proc.returncode}):\n{tail}")
        result: dict[str, Any] = json.loads(result_file.read_text())
    finally:
        result_file.unlink(missing_ok=True)
    memory = f"peak CUDA {result['peak_cuda_mb']:.0f} MiB" if "peak_cuda_mb" in result \
        else f"peak RSS {result['peak_rss_mb']:.0f} MB"
    print(f"[{peer}] {result['tokens_per_s']:.0f} tokens/s, train {result['train_s']:.1f}s, "
          f"{result['steps']} steps, mean train loss {result['mean_train_loss']:.3f}, {memory}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="training conversations (default 1000)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    print(f"korean_chatbot_qa: {args.rows} train conversations; QLoRA 4-bit NF4, LoRA r 16, 1 epoch, "
          f"batch {BATCH_SIZE}, max length {MAX_LENGTH}; {args.threads} torch threads, device "
          f"{args.device}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tuneserve-qlora-bench-") as tmp:
        conversations = load_conversations(Path(args.data), args.rows)
        model, dataset = Path(tmp) / "model", Path(tmp) / "dataset"
        dataset.mkdir()
        build_model(model, conversations, intermediate_size=768)
        write_dataset(dataset, conversations, args.rows)
        results = {peer: run_peer(peer, args, model, dataset) for peer in PEERS}
    a, b = results["a"], results["b"]
    key = "peak_cuda_mb" if "peak_cuda_mb" in a else "peak_rss_mb"
    ratio, memory = a["tokens_per_s"] / b["tokens_per_s"], a[key] / b[key]
    print(f"\n(a)/(b) tokens/s: {ratio:.2f}x (target >= 1.0: {'met' if ratio >= 1 else 'MISSED'}); "
          f"{key} (a)/(b): {memory:.2f} (target <= 1.0: {'met' if memory <= 1 else 'MISSED'}); "
          f"load average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "rows": args.rows, "threads": args.threads, "device": args.device, "peers": results,
            "ratio_tokens_per_s": ratio, "ratio_peak_memory": memory}, indent=2, default=str))


if __name__ == "__main__":
    main()
