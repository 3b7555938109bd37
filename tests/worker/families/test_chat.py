"""The chat TrainingTask on a tiny random Llama: answer-only targets, left truncation of the history,
LoRA through the same loop (metrics, checkpoints, resume to the uninterrupted weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import FIXTURES, make_tiny_tokenizer
from tests.worker.helpers import max_weight_diff
from worker.families.chat.task import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE,
    build_chat_task,
    conversation_segments,
    ensure_chat_template,
    tokenize_conversations,
    truncate_left,
)
from worker.training.config import TrainConfig
from worker.training.errors import TrainingError
from worker.training.loop import run_training
from worker.training.recording import RecordingSink

CONVERSATION = [
    {"role": "system", "content": "친절하게 답하세요"},
    {"role": "user", "content": "12시 땡!"},
    {"role": "assistant", "content": "하루가 또 가네요."},
    {"role": "user", "content": "1지망 학교 떨어졌어"},
    {"role": "assistant", "content": "위로해 드립니다."},
]


@pytest.fixture(scope="module")
def chat_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Korean Q/A slice as the ingest stores it: row, text, messages (user, assistant)."""
    frame = pd.read_csv(FIXTURES / "korean_chatbot_qa_slice.csv")
    directory = tmp_path_factory.mktemp("chat-dataset")
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    for split, part in (("train", frame.iloc[:48]), ("validation", frame.iloc[48:64])):
        rows = [i + 2 for i in part.index]
        messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                    for q, a in zip(part["Q"], part["A"], strict=True)]
        pq.write_table(pa.table({"row": pa.array(rows, pa.int64()), "text": pa.array(list(part["Q"])),
                                 "messages": pa.array(messages, message_type)}),
                       directory / f"{split}.parquet")
    return directory


def _config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "max_steps": 6, "learning_rate": 3e-3, "batch_size": 8, "micro_batch_size": 4, "max_seq_length": 64,
        "warmup_ratio": 0.0, "logging_steps": 1, "device": "cpu", "metric_for_best_model": "loss",
        "eval_strategy": "steps", "eval_steps": 3, "lr_scheduler": "cosine", "lora_dropout": 0.1,
    }
    return TrainConfig(**(values | overrides))


def test_only_the_assistant_answers_are_targets(tiny_chat_lm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm_dir)
    [example], cut, dropped = tokenize_conversations(tokenizer, [CONVERSATION], [7], 256, None)
    assert (cut, dropped) == ([], [])
    ids, labels = example["input_ids"], example["labels"]
    # The whole conversation is exactly the template's rendering, tokenized.
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    answers = tokenizer.decode([t for t in labels if t != IGNORE])
    assert answers == "하루가 또 가네요.<|im_end|>\n위로해 드립니다.<|im_end|>\n"  # end of turn learned too
    assert example["targets"] == sum(1 for t in labels[1:] if t != IGNORE)
    # What precedes the last answer is what /generate sends: the template's generation prompt.
    prompt = tokenizer.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    first_target = max(i for i, t in enumerate(labels) if t == IGNORE) + 1
    assert tokenizer.decode(ids[:first_target]) == prompt


def test_an_assistant_turn_with_weight_0_is_context_not_a_target(tiny_chat_lm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm_dir)
    weighted = [dict(m) for m in CONVERSATION]
    weighted[2]["weight"] = 0  # the first answer: rendered, but not learned
    weighted[4]["weight"] = 1
    [example], _, _ = tokenize_conversations(tokenizer, [weighted], [1], 256, None)
    [plain], _, _ = tokenize_conversations(tokenizer, [CONVERSATION], [1], 256, None)
    assert example["input_ids"] == plain["input_ids"]  # the same text reaches the model
    answers = tokenizer.decode([t for t in example["labels"] if t != IGNORE])
    assert answers == "위로해 드립니다.<|im_end|>\n"
    assert example["targets"] < plain["targets"]


def test_a_system_prompt_is_added_where_a_row_has_none(tiny_chat_lm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm_dir)
    plain, own = CONVERSATION[1:3], CONVERSATION
    examples, _, _ = tokenize_conversations(tokenizer, [plain, own], [1, 2], 256, "짧게 답하세요")
    first, second = (tokenizer.decode(e["input_ids"]) for e in examples)
    assert first.startswith("<|im_start|>system\n짧게 답하세요<|im_end|>\n<|im_start|>user\n12시 땡!")
    assert second.startswith("<|im_start|>system\n친절하게 답하세요") and "짧게" not in second


def test_truncation_cuts_the_oldest_history_never_an_answer() -> None:
    segments = [([1, 2, 3, 4], False), ([5, 6], True), ([7, 8, 9], False), ([10, 11], True)]
    assert truncate_left(segments, 11) == (segments, False)
    # The oldest prompt loses its first tokens.
    kept = [([4], False), ([5, 6], True), ([7, 8, 9], False), ([10, 11], True)]
    assert truncate_left(segments, 8) == (kept, True)
    # A cut that would fall inside an earlier answer drops that whole answer instead.
    assert truncate_left(segments, 6) == ([([7, 8, 9], False), ([10, 11], True)], True)
    # The prompt before the last answer loses its oldest tokens, the answer none.
    assert truncate_left(segments, 4) == ([([8, 9], False), ([10, 11], True)], True)
    # The last answer alone longer than what is left: the row cannot train.
    assert truncate_left(segments, 1) == ([], True)


def test_rows_cut_and_dropped_are_named(tiny_chat_lm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm_dir)
    long_history = [{"role": "user", "content": "아주 긴 질문 " * 40}, {"role": "assistant", "content": "네"}]
    long_answer = [{"role": "user", "content": "질문"},
                   {"role": "assistant", "content": "아주 긴 답변 " * 40}]
    examples, cut, dropped = tokenize_conversations(
        tokenizer, [CONVERSATION[1:3], long_history, long_answer], [2, 3, 4], 48, None)
    assert (cut, dropped) == ([3], [4])
    assert [e["row"] for e in examples] == [2, 3]
    assert len(examples[1]["input_ids"]) == 48
    assert tokenizer.decode([t for t in examples[1]["labels"] if t != IGNORE]) == "네<|im_end|>\n"


def test_a_tokenizer_without_a_chat_template_gets_the_documented_default() -> None:
    tokenizer = make_tiny_tokenizer(["안녕하세요 반가워요", "user assistant"], chat_template=None)
    assert ensure_chat_template(tokenizer) is True
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE  # type: ignore[attr-defined]
    segments = conversation_segments(tokenizer, CONVERSATION[1:3])
    assert [tokenizer.decode(ids) for ids, answer in segments if answer] == ["하루가 또 가네요.<|im_end|>\n"]  # type: ignore[attr-defined]
    assert ensure_chat_template(tokenizer) is False  # a template is never replaced


def test_lora_chat_trains_through_the_loop_and_resumes_to_the_same_adapter(
    tiny_chat_lm_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """With LoRA dropout ON: the same adapter after cancel+resume proves the RNG came back too."""
    config = _config()
    full = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    assert full.lora
    assert all(not p.requires_grad for n, p in full.model.named_parameters() if "lora_" not in n)
    full_sink = RecordingSink()
    full_result = run_training(full, config, tmp_path / "full", full_sink)
    assert full_result.global_step == 6 and not full_result.cancelled

    evals = [values for _, _, values in full_sink.eval_points]
    assert len(evals) == 2
    for values in evals:
        assert 0.0 <= values["token_accuracy"] <= 1.0
        assert values["perplexity"] == pytest.approx(math.exp(values["loss"]), rel=1e-4)
        assert values["train_loss"] > 0
        assert 0.0 <= values["train_token_accuracy"] <= 1.0  # what trained since the last evaluation
    train = [values for _, _, values in full_sink.train_points]
    assert train[-1]["loss"] < train[0]["loss"]  # lr 3e-3 on 48 short answers: it learns
    assert all(0.0 <= v["token_accuracy"] <= 1.0 for v in train)  # OpenAI's train_mean_token_accuracy
    assert all(v["learning_rate"] > 0 for v in train)
    # The checkpoint holds the adapter, not a copy of the base.
    best = full_result.best_checkpoint
    assert best is not None and (best / "adapter_model.safetensors").is_file()
    assert not (best / "model.safetensors").exists()

    first = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    cancelled = run_training(first, config, tmp_path / "run", RecordingSink(stop_when=lambda s: s >= 4))
    assert cancelled.cancelled and cancelled.global_step == 4  # a checkpoint where it stopped
    second = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    sink = RecordingSink()
    resumed = run_training(second, config, tmp_path / "run", sink)
    assert resumed.resumed_from_step == 4 and resumed.global_step == 6
    # The resumed steps score the same answer tokens the same way as the uninterrupted run.
    assert [v["token_accuracy"] for _, _, v in sink.train_points] == pytest.approx(
        [v["token_accuracy"] for step, _, v in full_sink.train_points if step > 4], abs=1e-6)

    def adapter(task: Any) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in task.model.state_dict().items() if "lora_" in k}

    assert max_weight_diff(adapter(full), adapter(second)) < 1e-6
    assert max_weight_diff(adapter(full), adapter(first)) > 1e-4  # the test can tell runs apart


def test_probe_and_length_grouping_count_tokens(tiny_chat_lm_dir: Path, chat_dataset_dir: Path,
                                                 tmp_path: Path) -> None:
    config = _config(max_steps=1, micro_batch_size=None, eval_strategy="epoch", eval_steps=None)
    task = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    sink = RecordingSink()
    run_training(task, config, tmp_path / "run", sink)
    [probe] = sink.events_of("batch_probe")
    assert probe["sequence_length"] == max(len(e["input_ids"]) for e in task.train_examples)
    assert all(e["length"] == len(e["input_ids"]) for e in task.train_examples)


def test_full_fine_tuning_trains_every_weight(tiny_chat_lm_dir: Path, chat_dataset_dir: Path,
                                              tmp_path: Path) -> None:
    config = _config(finetuning="full", max_steps=2, eval_steps=2)
    task = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    assert not task.lora and all(p.requires_grad for p in task.model.parameters())
    result = run_training(task, config, tmp_path / "run", RecordingSink())
    assert result.best_checkpoint is not None and (result.best_checkpoint / "model.safetensors").is_file()


def test_qlora_trains_a_4_bit_base_with_8_bit_adamw_and_resumes_to_the_same_adapter(
    tiny_qlora_lm_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """QLoRA on the CPU (bitsandbytes 0.50): NF4 base, paged 8-bit AdamW, the same loop's cancel and
    resume; the checkpoint is the adapter and says which base it trained on."""
    import bitsandbytes as bnb

    config = _config(quantization="4bit", optimizer="adamw_8bit", max_steps=4, eval_steps=2)
    task = build_chat_task(chat_dataset_dir, str(tiny_qlora_lm_dir), config)
    assert task.quantization == "4bit"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in task.model.modules())
    assert all(not p.requires_grad for n, p in task.model.named_parameters() if "lora_" not in n)
    first = run_training(task, config, tmp_path / "run", RecordingSink(stop_when=lambda s: s >= 2))
    assert first.cancelled and first.global_step == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-2" / "training_state.pt", weights_only=False)
    # bitsandbytes' optimizer state (the tiny adapter's tensors are under its 8-bit minimum size, so
    # their moments stay 32-bit; the 8-bit path itself is bitsandbytes' to test).
    assert all("__bnb_optimizer_quant_state__" in s for s in state["optimizer"]["state"].values())
    second = build_chat_task(chat_dataset_dir, str(tiny_qlora_lm_dir), config)
    sink = RecordingSink()
    resumed = run_training(second, config, tmp_path / "run", sink)
    assert resumed.resumed_from_step == 2 and resumed.global_step == 4
    train = [values for _, _, values in sink.train_points]
    assert all(math.isfinite(v["loss"]) for v in train)
    best = resumed.best_checkpoint
    assert best is not None and (best / "adapter_model.safetensors").is_file()
    assert json.loads((best / "tuneserve.json").read_text())["quantization"] == "4bit"


def test_a_quantized_full_fine_tune_is_refused_in_words(tiny_qlora_lm_dir: Path,
                                                        chat_dataset_dir: Path) -> None:
    with pytest.raises(TrainingError, match="a full fine-tune cannot"):
        build_chat_task(chat_dataset_dir, str(tiny_qlora_lm_dir),
                        _config(quantization="8bit", finetuning="full"))


def test_an_encoder_base_is_refused_in_words_before_its_weights_load(tiny_encoder_dir: Path,
                                                                     chat_dataset_dir: Path) -> None:
    """A BERT tokenizer has no end-of-sequence token: a chat job on it says it needs a decoder
    rather than failing as a bug inside the chat template."""
    with pytest.raises(TrainingError, match="no end-of-sequence token.*need a decoder"):
        build_chat_task(chat_dataset_dir, str(tiny_encoder_dir), _config())


def test_learning_rate_auto_on_lora_chat_tests_the_adapter_only_and_trains_at_its_choice(
    tiny_chat_lm_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """The range test goes through the chat task's token loss and restores the adapter (the only
    weights that train): the run equals one told the chosen rate."""
    config = _config(learning_rate="auto")
    task = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), config)
    sink = RecordingSink()
    run_training(task, config, tmp_path / "auto", sink)
    (test,) = sink.events_of("lr_range_test")
    assert test["steps"] >= 5 and test["lrs"] == sorted(test["lrs"])
    assert all(math.isfinite(loss) for loss in test["losses"])
    chosen = test["chosen"]
    given = _config(learning_rate=chosen)
    plain = build_chat_task(chat_dataset_dir, str(tiny_chat_lm_dir), given)
    run_training(plain, given, tmp_path / "given", RecordingSink())
    adapters = [{k: v.detach().clone() for k, v in t.model.state_dict().items() if "lora_" in k}
                for t in (task, plain)]
    assert max_weight_diff(*adapters) < 1e-6
