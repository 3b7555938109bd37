"""Chat benchmark: LoRA SFT throughput of tuneserve's loop against Trainer + peft, one machine, one run.

Both peers fine-tune the same small random Llama (4 layers, hidden 256, a 4,000-token byte-level BPE
trained on the data; built once by the parent, seeded) with the same LoRA adapter (r 16, alpha 32,
dropout 0.05 on q/k/v/o_proj) on the first N conversations of korean_chatbot_qa.csv (Q -> user,
A -> assistant), 1 epoch, effective batch 8, lr 2e-4 cosine with 10% warmup, max length 128, fp32
on CPU, seed 42. Both train on the SAME tokenized examples (worker/families/chat/task.py: chat
template, labels on the assistant's tokens only), so tokens/s compares the training machinery,
not tokenization.

  a  tuneserve: worker.families.chat.task.build_chat_task + worker.training.loop.run_training
     (micro-batch probe, length-grouped windows, dynamic padding, the end-of-epoch evaluation on 64 held-out
     conversations and its checkpoint save: the service always does both, so they are counted)
  b  Trainer + peft, as a user would write it: get_peft_model, DataCollatorForSeq2Seq (pads the
     labels with -100), train_sampling_strategy="group_by_length", no evaluation, no saving

Each peer runs in its own subprocess (peak RSS is per peer) with the same torch thread count.
tokens/s = real (unpadded) tokens of the training examples / training wall time (the train call:
model loading and tokenization excluded for both).

    .venv/bin/python bench/chat_bench.py                  # 2,000 conversations
    .venv/bin/python bench/chat_bench.py --rows 400       # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

SHARED_DATA = Path(os.environ.get("TUNESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DATA = SHARED_DATA / "korean_chatbot_qa.csv"
PEERS = {"a": "tuneserve loop (LoRA)", "b": "Trainer + peft (LoRA)"}

BATCH_SIZE = 8
MAX_LENGTH = 128
LEARNING_RATE = 2e-4
WARMUP_RATIO = 0.1
SEED = 42
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
VAL_ROWS = 64
TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_conversations(path: Path, rows: int) -> list[list[dict[str, str]]]:
    import pandas as pd

    frame = pd.read_csv(path).iloc[: rows + VAL_ROWS]
    return [[{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
            for q, a in zip(frame["Q"], frame["A"], strict=True)]


def build_model(directory: Path, conversations: list[list[dict[str, str]]], *, intermediate_size: int = 688,
                max_position_embeddings: int = 256) -> None:
    """The small Llama and its tokenizer, saved once: both peers load these exact files."""
    build_small_llama(directory, [m["content"] for c in conversations for m in c],
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings)


def build_small_llama(directory: Path, texts: list[str], *, intermediate_size: int = 688,
                      max_position_embeddings: int = 256) -> None:
    """A 4-layer Llama (random weights, seeded) with a byte-level BPE tokenizer of 4,000 tokens
    trained on `texts` and the ChatML-style TEMPLATE: the model every chat benchmark measures."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([*texts, "user assistant"],
                            trainers.BpeTrainer(vocab_size=4000, special_tokens=[
                                "<unk>", "<s>", "<|im_end|>", "<pad>", "<|im_start|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<pad>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=intermediate_size,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_dataset(directory: Path, conversations: list[list[dict[str, str]]], rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    for split, part, offset in (("train", conversations[:rows], 0),
                                ("validation", conversations[rows:], rows)):
        pq.write_table(pa.table({
            "row": pa.array([offset + i + 2 for i in range(len(part))], pa.int64()),
            "text": pa.array([c[0]["content"] for c in part]),
            "messages": pa.array(part, message_type)}), directory / f"{split}.parquet")


# --------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------

def _config(args: argparse.Namespace) -> Any:
    from worker.training.config import TrainConfig

    return TrainConfig(epochs=1, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                       max_seq_length=MAX_LENGTH,
                       warmup_ratio=WARMUP_RATIO, lr_scheduler="cosine", seed=SEED, logging_steps=1,
                       metric_for_best_model="loss", lora_r=LORA["r"], lora_alpha=LORA["alpha"],  # type: ignore[arg-type]
                       lora_dropout=LORA["dropout"], lora_target_modules=LORA["targets"],  # type: ignore[arg-type]
                       device=args.device, torch_threads=args.threads)


def run_a(args: argparse.Namespace) -> dict[str, Any]:
    from worker.families.chat.task import build_chat_task
    from worker.training.loop import run_training
    from worker.training.recording import RecordingSink

    config = _config(args)
    task = build_chat_task(Path(args.dataset), args.model, config)
    tokens = sum(e["length"] for e in task.train_examples)
    with tempfile.TemporaryDirectory(prefix="tuneserve-chat-bench-") as run_dir:
        sink = RecordingSink()
        started, cpu = time.perf_counter(), time.process_time()
        result = run_training(task, config, Path(run_dir), sink)
        train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    final = sink.eval_points[-1][2] if sink.eval_points else {}
    return {"train_s": train_s, "train_cpu_s": train_cpu_s, "tokens": tokens,
            "examples": len(task.train_examples), "steps": result.global_step,
            "micro_batch_size": result.micro_batch_size, "grad_accum_steps": result.grad_accum_steps,
            "mean_train_loss": sum(v["loss"] for _, _, v in sink.train_points) / len(sink.train_points),
            "eval_loss": final.get("loss")}


def run_b(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from worker.families.chat.task import load_conversations as load_split
    from worker.families.chat.task import tokenize_conversations

    # The same examples as (a), made by the same code (without loading a model for it).
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    conversations, rows = load_split(Path(args.dataset) / "train.parquet")
    examples, _, _ = tokenize_conversations(tokenizer, conversations, rows, MAX_LENGTH, None)
    train = Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples],
                               "labels": [e["labels"] for e in examples],
                               "length": [e["length"] for e in examples]})
    tokens = sum(train["length"])
    torch.manual_seed(SEED)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model), LoraConfig(
        task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["targets"]))
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="tuneserve-chat-bench-") as out:
        training_args = TrainingArguments(
            output_dir=out, num_train_epochs=1, per_device_train_batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE, warmup_steps=WARMUP_RATIO, lr_scheduler_type="cosine", seed=SEED,
            weight_decay=0.01, max_grad_norm=1.0, eval_strategy="no", save_strategy="no", report_to="none",
            logging_steps=1, disable_tqdm=True, use_cpu=device.type == "cpu",
            bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
            train_sampling_strategy="group_by_length", length_column_name="length",
            remove_unused_columns=True)
        trainer = Trainer(model=model, args=training_args, train_dataset=train,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                               label_pad_token_id=-100),
                          processing_class=tokenizer)
        started, cpu = time.perf_counter(), time.process_time()
        trained = trainer.train()
        train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {"train_s": train_s, "train_cpu_s": train_cpu_s, "tokens": tokens, "examples": len(train),
            "steps": trained.global_step, "mean_train_loss": trained.training_loss}


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


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------

def run_peer(peer: str, args: argparse.Namespace, model: Path, dataset: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = Path(f.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", peer,
               "--result-file", str(result_file),
               "--model", str(model), "--dataset", str(dataset), "--threads", str(args.threads),
               "--device", args.device]
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    print(f"[{peer}] {PEERS[peer]} ...", flush=True)
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-4000:]
            raise SystemExit(f"[{peer}] failed (exit {proc.returncode}):\n{tail}")
        result: dict[str, Any] = json.loads(result_file.read_text())
    finally:
        result_file.unlink(missing_ok=True)
    busy = result["train_cpu_s"] / result["train_s"]
    print(f"[{peer}] {result['tokens_per_s']:.0f} tokens/s, train {result['train_s']:.1f}s "
          f"({busy:.2f} cores busy), {result['steps']} steps, "
          f"mean train loss {result['mean_train_loss']:.3f}, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="training conversations (default 2000)")
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
    print(f"korean_chatbot_qa: {args.rows} train conversations; LoRA r {LORA['r']}, 1 epoch, "
          f"batch {BATCH_SIZE}, "
          f"max length {MAX_LENGTH}, lr {LEARNING_RATE:g} cosine; {args.threads} torch threads, device "
          f"{args.device}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tuneserve-chat-bench-") as tmp:
        conversations = load_conversations(Path(args.data), args.rows)
        model, dataset = Path(tmp) / "model", Path(tmp) / "dataset"
        dataset.mkdir()
        build_model(model, conversations)
        write_dataset(dataset, conversations, args.rows)
        results = {peer: run_peer(peer, args, model, dataset) for peer in PEERS}
    a, b = results["a"], results["b"]
    ratio = a["tokens_per_s"] / b["tokens_per_s"]
    memory = a["peak_rss_mb"] / b["peak_rss_mb"]
    print(f"\n(a)/(b) tokens/s: {ratio:.2f}x (target >= 1.0: {'met' if ratio >= 1 else 'MISSED'}); "
          f"peak RSS (a)/(b): {memory:.2f} (target <= 1.0: {'met' if memory <= 1 else 'MISSED'}); "
          f"load average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        import torch
        import transformers

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        Path(args.out).write_text(json.dumps({
            "config": {"rows": args.rows, "threads": args.threads, "device": args.device, "lora": LORA,
                       "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "learning_rate": LEARNING_RATE},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "commit": commit},
            "peers": results, "ratio_tokens_per_s": ratio, "ratio_peak_rss": memory}, indent=2, default=str))


if __name__ == "__main__":
    main()
