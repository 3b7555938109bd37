"""The chat TrainingTask: supervised fine-tuning of a causal language model for worker/training/loop.py.

Reads a stored chat dataset (core/dataset.py: the train and validation splits' `row` and
`messages`), renders every conversation through the tokenizer's chat template
(DEFAULT_CHAT_TEMPLATE when it has none), and trains on the assistant's tokens only: every other
token's label is -100, and so is every token of an assistant turn stored with `weight` 0
(OpenAI's per-message weight: the turn is context, not an answer to learn). The loss is (sum
over target tokens, target tokens), so the loop's accumulation gives the same gradient whatever
the micro-batch. LoRA through peft by default,
full fine-tuning on request.

An example's "length" is its token count: the probe tries the longest conversations and the
loop's length grouping batches similar lengths together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from core.catalogue import CHAT_METRICS, greater_is_better
from core.chat import with_system_prompt
from core.dataset import CONTENT, MESSAGES, ROLE, ROW, TRAIN, VALIDATION, WEIGHT, split_path
from core.settings import get_settings
from core.store import load_options, resolve_base_model
from worker.families.chat.lora import apply_lora
from worker.families.loading import load_weights_into, save_servable, set_pad_token
from worker.training.config import TrainConfig
from worker.training.protocols import Example, TrainingError

log = logging.getLogger("tuneserve.worker.families.chat.task")

IGNORE = -100
# Zephyr's template: for a tokenizer that has no chat template of its own (a plain base model).
# Each turn is "<|role|>\n" + content + EOS + "\n"; generation starts after "<|assistant|>\n" and
# stops at EOS. Documented in the README.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CUT_ROWS_SHOWN = 20  # rows named in the truncation event; the count covers all of them


@dataclass
class ChatTask:
    model: torch.nn.Module
    tokenizer: Any
    model_name: str
    max_seq_length: int
    train_examples: list[Example]
    eval_examples: list[Example]
    lora: bool
    system_prompt: str | None = None
    baseline_loss: float | None = None
    metric_names: frozenset[str] = field(default=CHAT_METRICS)
    truncated_rows: list[int] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)
    template_defaulted: bool = False  # the tokenizer had no chat template: DEFAULT_CHAT_TEMPLATE
    quantization: str = "none"  # the base as loaded: none | 8bit | 4bit (bitsandbytes)

    # ---- the loop's protocol --------------------------------------------------------------
    def loss_units(self, examples: Sequence[Example]) -> int:
        return sum(int(ex["targets"]) for ex in examples)  # the loss is a mean over answer tokens

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in examples)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ex in enumerate(examples):  # right padding: positions stay 0..n-1 for every row
            n = len(ex["input_ids"])
            ids[row, :n] = torch.tensor(ex["input_ids"])
            labels[row, :n] = torch.tensor(ex["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Token t predicts token t+1; only the answer positions are scored, and only their
        # logits are cast to fp32 (a whole (batch, length, vocab) fp32 copy is what runs out).
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        scored = logits[:, :-1][keep].float()
        wanted = targets[keep]
        loss = F.cross_entropy(scored, wanted, reduction="sum")
        # The argmax is over the answer positions only, which the loss already holds in fp32.
        correct = (scored.detach().argmax(dim=-1) == wanted).sum()
        return loss, {"correct": correct, "tokens": wanted.numel(), "loss_sum": loss.detach()}

    def train_counts(self, output: Any) -> dict[str, torch.Tensor]:
        return {"correct": output["correct"], "tokens": torch.tensor(float(output["tokens"]))}

    def train_metrics(self, counts: dict[str, float]) -> dict[str, float]:
        # Next-token accuracy over the answer tokens the train point's steps trained on.
        tokens = counts.get("tokens", 0.0)
        return {"token_accuracy": counts.get("correct", 0.0) / tokens} if tokens else {}

    def eval_payload(self, output: Any, batch: dict[str, torch.Tensor]) -> Any:
        return int(output["correct"]), int(output["tokens"]), float(output["loss_sum"])

    def compute_metrics(self, payloads: list[Any]) -> dict[str, Any]:
        correct = sum(p[0] for p in payloads)
        tokens = sum(p[1] for p in payloads)
        loss = sum(p[2] for p in payloads) / max(1, tokens)
        return {"token_accuracy": correct / max(1, tokens),
                "perplexity": math.exp(min(loss, 50.0)),  # exp(50) already says "nothing learned"
                "eval_tokens": tokens}

    def greater_is_better(self, metric: str) -> bool:
        return greater_is_better("chat", metric)

    def meta(self) -> dict[str, Any]:
        return {"task": "chat", "labels": [], "max_seq_length": self.max_seq_length,
                "base_model": self.model_name, "adapter": self.lora, "system_prompt": self.system_prompt,
                # The base the adapter trained on: /generate loads it quantized the same way.
                "quantization": self.quantization}

    def save_checkpoint(self, directory: Path) -> None:
        # LoRA: the adapter only (adapter_config.json names the base); full: the whole model.
        save_servable(self.model, self.tokenizer, directory, self.meta())

    def load_checkpoint(self, directory: Path) -> None:
        if self.lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(str(directory / "adapter_model.safetensors")))
            return
        load_weights_into(self.model, directory)


# --------------------------------------------------------------------------------------------
# Tokenizing conversations
# --------------------------------------------------------------------------------------------

def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer DEFAULT_CHAT_TEMPLATE; True when it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def conversation_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[list[int], bool]]:
    """The conversation as (token ids, is an assistant answer) segments, in order.

    Each answer's segment is what the template adds for that turn (content and end-of-turn
    tokens): the difference between the rendering up to that turn and the rendering of the
    turns before it with the generation prompt. So training sees exactly the prompt that
    /generate will build, and learns to end its turn. An assistant turn with `weight` 0 is
    rendered the same way but is not an answer to learn (its tokens get no loss)."""
    segments: list[tuple[list[int], bool]] = []
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]  # the template sees no weight
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(turns[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(turns[:i + 1], tokenize=False)
        if not prompt.startswith(done) or not through.startswith(prompt):
            raise TrainingError("The chat template renders a conversation differently from its beginning "
                                "(an earlier turn changes when a later one is added), so answer tokens "
                                "cannot be located; use a tokenizer with a prefix-stable chat template.")
        segments.append((_ids(tokenizer, prompt[len(done):]), False))
        segments.append((_ids(tokenizer, through[len(prompt):]), message.get(WEIGHT) != 0))
        done = through
    return segments


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template already holds BOS and the role markers: no special tokens added again.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def truncate_left(segments: list[tuple[list[int], bool]], max_len: int) -> tuple[list[tuple[list[int], bool]],
                                                                                   bool]:
    """Cut the history from the left until the conversation fits: whole earlier turns first,
    a prompt's oldest tokens next, never into an answer. ([], True) when even the last answer
    with no history does not fit (the row cannot train)."""
    segments = [(list(ids), answer) for ids, answer in segments]
    total = sum(len(ids) for ids, _ in segments)
    cut = False
    while total > max_len and segments:
        ids, answer = segments[0]
        excess = total - max_len
        is_last_answer = answer and not any(a for _, a in segments[1:])
        if is_last_answer:
            return [], True
        if answer or len(ids) <= excess:
            segments.pop(0)
            total -= len(ids)
        else:
            segments[0] = (ids[excess:], False)
            total -= excess
        cut = True
    return segments, cut


def tokenize_conversations(tokenizer: Any, conversations: list[list[dict[str, str]]], rows: list[int],
                           max_len: int, system_prompt: str | None) -> tuple[list[Example], list[int],
                                                                               list[int]]:
    """(examples, rows whose history was cut, rows dropped because their last answer alone is
    longer than max_len)."""
    examples: list[Example] = []
    cut_rows: list[int] = []
    dropped: list[int] = []
    for messages, row in zip(conversations, rows, strict=True):
        segments = conversation_segments(tokenizer, with_system_prompt(messages, system_prompt))
        segments, cut = truncate_left(segments, max_len)
        if not segments:
            dropped.append(row)
            continue
        if cut:
            cut_rows.append(row)
        ids = [t for seg, _ in segments for t in seg]
        labels = [t if answer else IGNORE for seg, answer in segments for t in seg]
        targets = sum(1 for t in labels[1:] if t != IGNORE)
        if targets == 0:
            dropped.append(row)
            continue
        examples.append({"input_ids": ids, "labels": labels, "targets": targets, "row": row,
                         "length": len(ids)})
    return examples, cut_rows, dropped


def load_conversations(path: Path) -> tuple[list[list[dict[str, Any]]], list[int]]:
    table = pq.read_table(path, columns=[ROW, MESSAGES]).to_pydict()
    # A dataset stored before weights existed has no `weight` field: every answer counts.
    conversations = [[{"role": str(m[ROLE]), "content": str(m[CONTENT]), WEIGHT: m.get(WEIGHT)}
                      for m in messages or []]
                     for messages in table[MESSAGES]]
    return conversations, [int(r) for r in table[ROW]]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def load_causal_lm(base_model: str, seed: int, quantization: str = "none",
                   device: str = "auto") -> tuple[Any, Any]:
    """The base model and its tokenizer; a 4-bit or 8-bit base (the memory plan's quantization)
    is quantized by bitsandbytes as it loads, onto the device it trains on."""
    from transformers import AutoModelForCausalLM

    from core.planning.quantize import quantized_load_options
    from worker.families.loading import load_tokenizer
    from worker.training.devices import pick_device

    source = resolve_base_model(base_model)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(source, base_model)
    if tokenizer.eos_token is None:  # an encoder (BERT, ELECTRA): nothing marks where a reply ends
        raise TrainingError(f"The tokenizer of {base_model!r} has no end-of-sequence token, so a reply "
                            "could never end: it is not a chat model. Chat jobs need a decoder such as "
                            "Llama, Qwen or GPT-2; encoders like BERT or ELECTRA train classification "
                            "jobs.")
    quantized = quantization in ("8bit", "4bit")
    extra = quantized_load_options(quantization, pick_device(device)) if quantized else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **load_options(get_settings().trust_remote_code),
                                                     **extra)
    except Exception as error:  # noqa: BLE001 - every reason becomes a message the user can act on
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TrainingError(f"Cannot load the base model {base_model!r} as a causal language model "
                            f"(chat needs a decoder such as Llama, Qwen or GPT-2): "
                            f"{type(error).__name__}: {first}") from error
    set_pad_token(model, tokenizer, base_model)
    if quantized:
        from peft import prepare_model_for_kbit_training

        # The norms and the head in fp32 and a gradient path into the first layer (so checkpointed
        # layers still reach LoRA); checkpointing itself is the loop's (plan, or the OOM ladder).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def build_chat_task(dataset_dir: Path, base_model: str, config: TrainConfig) -> ChatTask:
    dataset_dir = Path(dataset_dir)
    quantization = config.quantization if config.quantization in ("8bit", "4bit") else "none"
    if quantization != "none" and config.finetuning == "full":
        raise TrainingError(f"quantization {quantization} trains LoRA adapters on a frozen quantized base; "
                            "a full fine-tune cannot. Use finetuning lora, or quantization none.")
    model, tokenizer = load_causal_lm(base_model, config.seed, quantization, config.device)
    defaulted = ensure_chat_template(tokenizer)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    max_len = min(config.max_seq_length, max_positions) if max_positions else config.max_seq_length
    lora = config.finetuning != "full"
    if lora:
        model = apply_lora(model, config)

    train, train_rows = load_conversations(split_path(dataset_dir, TRAIN))
    train_examples, cut, dropped = tokenize_conversations(tokenizer, train, train_rows, max_len,
                                                          config.system_prompt)
    eval_path = split_path(dataset_dir, VALIDATION)
    eval_examples: list[Example] = []
    if eval_path.is_file():
        conversations, rows = load_conversations(eval_path)
        eval_examples, eval_cut, eval_dropped = tokenize_conversations(tokenizer, conversations, rows,
                                                                       max_len, config.system_prompt)
        cut, dropped = cut + eval_cut, dropped + eval_dropped
    vocab = len(tokenizer)
    task = ChatTask(model=model, tokenizer=tokenizer, model_name=base_model, max_seq_length=max_len,
                    train_examples=train_examples, eval_examples=eval_examples, lora=lora,
                    system_prompt=config.system_prompt,
                    baseline_loss=math.log(vocab) if vocab > 1 else None,  # a uniform guess
                    truncated_rows=cut, dropped_rows=dropped, template_defaulted=defaulted,
                    quantization=quantization)
    log.info("chat task: %d train / %d validation conversations, max %d tokens (longest %d), %s",
             len(train_examples), len(eval_examples), max_len,
             max((e["length"] for e in train_examples), default=0), "LoRA" if lora else "full fine-tuning")
    return task


def setup_events(task: ChatTask, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """What the user should know before the first step: template, adapter, cut and dropped rows."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    # Tokens one epoch reads (prompts included) and scores: what OpenAI's `trained_tokens` counts.
    tokens = sum(int(ex["length"]) for ex in task.train_examples)
    answer_tokens = sum(int(ex["targets"]) for ex in task.train_examples)
    events.append(("tokens", f"One epoch is {tokens:,} tokens, {answer_tokens:,} of them answers the loss "
                   "is on.", {"train_tokens_per_epoch": tokens, "target_tokens_per_epoch": answer_tokens}))
    if task.template_defaulted:
        events.append(("chat_template", "The tokenizer has no chat template; using tuneserve's default "
                       "(Zephyr style: <|role|> lines, each turn ending with EOS).", {"default": True}))
    if task.lora:
        trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in task.model.parameters())
        peft_config = getattr(task.model, "peft_config", {}).get("default")
        targets = sorted(getattr(peft_config, "target_modules", None) or [])
        events.append(("lora", f"LoRA r={config.lora_r} alpha={config.lora_alpha} "
                       f"dropout={config.lora_dropout} on {', '.join(targets)}: "
                       f"{trainable:,} of {total:,} parameters train "
                       f"({100 * trainable / max(1, total):.2f}%).",
                       {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                        "target_modules": targets, "trainable_parameters": trainable,
                        "total_parameters": total}))
    if task.truncated_rows:
        events.append(("truncated", f"{len(task.truncated_rows)} conversations were longer than "
                       f"{task.max_seq_length} tokens; their oldest history was cut (never the answer): "
                       f"rows {_rows_text(task.truncated_rows)}.",
                       {"rows": task.truncated_rows[:1000], "count": len(task.truncated_rows),
                        "max_seq_length": task.max_seq_length}))
    if task.dropped_rows:
        events.append(("rows_skipped", f"{len(task.dropped_rows)} conversations were skipped: their last "
                       f"answer alone is longer than max_seq_length {task.max_seq_length}: rows "
                       f"{_rows_text(task.dropped_rows)}. A larger max_seq_length keeps them.",
                       {"rows": task.dropped_rows[:1000], "count": len(task.dropped_rows)}))
    return events


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:CUT_ROWS_SHOWN]))
    return shown + (" ..." if len(rows) > CUT_ROWS_SHOWN else "")
