"""Base vs tuned for chat: both answer the held-out prompts, scored against the references.

For each held-out conversation the prompt is every turn before the last assistant turn and the
reference is that turn. Both models decode greedily (reproducible), the base through the same
chat template and system prompt as the tuned model, so the only difference is the fine-tune.
Scores: sacrebleu's corpus BLEU and chrF, and the mean cosine similarity of sentence embeddings
(the bundled MiniLM, mean pooling) between each reply and its reference.

The whole held-out split by default (`compare_max_prompts` caps it; the cap and the count scored
are in the report), decoded in batches by the generation engine (core/serving/engine.py): for a
LoRA model the base's and the tuned model's replies are rows of the same batches (the adapter off
for the base's rows). A `comparison_progress` event (done/total, ETA) every few seconds; a cancel
of the job stops the report at the next decoding step and records nothing but an event.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from sqlalchemy import select

from core import store
from core.dataset import CONTENT, HELD_OUT_SPLITS, MESSAGES, ROLE, ROW, split_path
from core.db import session_scope
from core.events import add_event
from core.serving.engine import GenerationParams, generate_many
from core.serving.generation import ChatModels, ChatRuntime, read_spec
from core.settings import get_settings
from core.tables import Job, JobEvent, utcnow
from worker.families.comparison import compared_job

log = logging.getLogger("tuneserve.worker.families.chat.compare")

EXAMPLES_SHOWN = 5
PROGRESS_INTERVAL_S = 5.0  # between comparison_progress events: the stream shows it moving
CANCEL_CHECK_INTERVAL_S = 1.0
# Hangul, kana and CJK ideographs: 13a's whitespace-and-punctuation words are whole eojeol
# (word + particles) in Korean, so one particle differing zeroes a word match. Character
# n-grams (sacrebleu's "char") score such text fairly without a morphological analyser.
CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u4e00-\u9fff\uac00-\ud7af]")


def bleu_tokenization(references: list[str]) -> str:
    text = "".join(references)
    cjk = len(CJK.findall(text))
    return "char" if cjk > 0.2 * max(1, len(re.sub(r"\s", "", text))) else "13a"


def held_out(dataset_dir: Path, limit: int | None
             ) -> tuple[str, int, list[tuple[int, list[dict[str, str]], str]]]:
    """(split name, conversations in it, [(row, prompt messages, reference)] for the first
    `limit` of them, all when None): validation, else test."""
    for split in HELD_OUT_SPLITS:
        path = split_path(dataset_dir, split)
        if not path.is_file():
            continue
        table = pq.read_table(path, columns=[ROW, MESSAGES])
        total = table.num_rows
        table = (table.slice(0, limit) if limit is not None else table).to_pydict()
        out = []
        for row, messages in zip(table[ROW], table[MESSAGES], strict=True):
            turns = [{"role": str(m[ROLE]), "content": str(m[CONTENT])} for m in messages]
            last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
            out.append((int(row), turns[:last], turns[last]["content"]))
        return split, total, out
    return "", 0, []


def embed(texts: list[str], encoder: Any, tokenizer: Any) -> torch.Tensor:
    """Mean-pooled, L2-normalized sentence embeddings (the sentence-transformers recipe)."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows) if rows else torch.empty(0)


def score(replies: list[str], references: list[str], tokenize: str, encoder: Any, enc_tokenizer: Any
          ) -> dict[str, float]:
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=tokenize, effective_order=True).corpus_score(replies, [references])
    chrf = CHRF().corpus_score(replies, [references])
    # An empty reply embeds as nothing in particular: it is scored as it is, not skipped.
    cosine = (embed(replies, encoder, enc_tokenizer) * embed(references, encoder, enc_tokenizer)).sum(-1)
    return {"bleu": round(float(bleu.score), 4), "chrf": round(float(chrf.score), 4),
            "cosine_similarity": round(float(cosine.mean()), 6) if len(replies) else 0.0}


class ComparisonCancelled(Exception):
    """The job was cancelled while the report generated."""


class _Progress:
    """comparison_progress events (done/total, ETA) at most every PROGRESS_INTERVAL_S, and the
    job's cancel flag read at most every CANCEL_CHECK_INTERVAL_S."""

    def __init__(self, job_id: str, total: int) -> None:
        self.job_id, self.total = job_id, total
        self.started = time.monotonic()
        self._last_event = self.started
        self._last_check = -math.inf  # the first check at once: a job cancelled before it started
        self.done_before = 0  # replies of earlier generate_many calls

    def __call__(self, done: int, _total: int) -> None:
        now = time.monotonic()
        done += self.done_before
        if now - self._last_event < PROGRESS_INTERVAL_S and done < self.total:
            return
        self._last_event = now
        elapsed = now - self.started
        eta_s = round(elapsed / done * (self.total - done), 1) if done else None
        add_event(self.job_id, "comparison_progress",
                  f"Base vs tuned: {done}/{self.total} replies generated"
                  + (f", about {eta_s:.0f} s left." if eta_s is not None and done < self.total else "."),
                  {"done": done, "total": self.total, "eta_s": eta_s, "elapsed_s": round(elapsed, 1)})

    def cancelled(self) -> bool:
        now = time.monotonic()
        if now - self._last_check < CANCEL_CHECK_INTERVAL_S:
            return False
        self._last_check = now
        with session_scope() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))


def generate_replies(job_id: str, tuned: ChatRuntime, base: ChatRuntime, prompts: list[list[dict[str, str]]],
                     max_new_tokens: int) -> tuple[list[str], list[str]]:
    """(base replies, tuned replies), greedy, in batches; the base's rows share the tuned model's
    batches when both are one base (a LoRA model: its adapter off for the base's rows)."""
    settings = get_settings()
    params = GenerationParams(max_new_tokens=max_new_tokens)
    progress = _Progress(job_id, 2 * len(prompts))
    if base.base is tuned.base:
        replies = generate_many(tuned, [*prompts, *prompts], params, settings,
                                base_only=[True] * len(prompts) + [False] * len(prompts),
                                on_progress=progress, should_stop=progress.cancelled)
    else:
        replies = generate_many(base, prompts, params, settings, on_progress=progress,
                                should_stop=progress.cancelled)
        progress.done_before = len(prompts)
        replies += generate_many(tuned, prompts, params, settings, on_progress=progress,
                                 should_stop=progress.cancelled)
    if any(r.finish_reason == "cancelled" for r in replies):
        raise ComparisonCancelled
    texts = [r.text.strip() for r in replies]
    return texts[:len(prompts)], texts[len(prompts):]


def compare_chat_job(job_id: str, model_id: str | None = None) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    settings = get_settings()
    compared = compared_job(job_id, model_id)
    model_id = compared.model_id
    tuned_path, dataset_dir, base_name = compared.tuned_path, compared.dataset_dir, compared.base_model

    split, in_split, items = held_out(dataset_dir, settings.compare_max_prompts)
    report: dict[str, Any] = {"base_model": base_name, "model_id": model_id, "split": split,
                              "prompts": len(items), "prompts_in_split": in_split,
                              "max_prompts": settings.compare_max_prompts,
                              "max_new_tokens": settings.compare_max_new_tokens, "decoding": "greedy"}
    if items:
        spec = read_spec(model_id, tuned_path)
        models = ChatModels("auto")  # the worker's GPU when it has one
        tuned_runtime = models.runtime(spec)
        if spec.adapter:
            base_runtime = tuned_runtime  # the same base, its adapter disabled
        else:
            from core.serving.generation import ChatSpec

            base_source = store.resolve_base_model(base_name)
            base_runtime = models.runtime(ChatSpec(model_id="base", path=Path(base_source), adapter=False,
                                                   base_path=None, system_prompt=spec.system_prompt))
            base_runtime.tokenizer = tuned_runtime.tokenizer  # the template the tuned model learned
        prompts = [p for _, p, _ in items]
        references = [r for _, _, r in items]
        started = time.monotonic()
        try:
            base_replies, tuned_replies = generate_replies(job_id, tuned_runtime, base_runtime, prompts,
                                                           settings.compare_max_new_tokens)
        except ComparisonCancelled:
            add_event(job_id, "comparison_cancelled", "Base vs tuned: cancelled while generating; nothing "
                      f"was recorded. POST /jobs/{job_id}/compare makes the report again.")
            return {}
        report["generation_s"] = round(time.monotonic() - started, 2)
        tokenize = bleu_tokenization(references)
        encoder_path = str(store.bundled_model_path())
        encoder = AutoModel.from_pretrained(encoder_path).eval()
        enc_tokenizer = AutoTokenizer.from_pretrained(encoder_path)
        base_scores = score(base_replies, references, tokenize, encoder, enc_tokenizer)
        tuned_scores = score(tuned_replies, references, tokenize, encoder, enc_tokenizer)
        report |= {
            "bleu_tokenize": tokenize,
            "embedding_model": "sentence-transformers/all-MiniLM-L6-v2 (bundled), mean pooling",
            "base": base_scores, "tuned": tuned_scores,
            "delta": {k: round(tuned_scores[k] - base_scores[k], 6) for k in tuned_scores},
            "examples": [{"row": row, "prompt": prompt[-1]["content"][:500], "reference": ref[:500],
                          "base": b[:500], "tuned": t[:500]}
                         for (row, prompt, ref), b, t in list(zip(items, base_replies, tuned_replies,
                                                                  strict=True))[:EXAMPLES_SHOWN]],
        }
    report["created_at"] = utcnow().isoformat()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.comparison = report
        if items:
            message = (f"Base vs tuned on {len(items)} {split} prompts ({report['generation_s']:.0f} s to "
                       f"generate): BLEU ({report['bleu_tokenize']}) "
                       f"{report['base']['bleu']:.2f} -> {report['tuned']['bleu']:.2f}, chrF "
                       f"{report['base']['chrf']:.2f} -> {report['tuned']['chrf']:.2f}, cosine "
                       f"{report['base']['cosine_similarity']:.3f} -> "
                       f"{report['tuned']['cosine_similarity']:.3f}.")
        else:
            message = "Base vs tuned: the dataset has no held-out conversations to generate for."
        session.add(JobEvent(job_id=job_id, kind="comparison", message=message, data=None))
    return report
