"""A loaded sequence classifier: tokenize, pad per batch, forward, probabilities.

The only serving module that imports torch and transformers; the predictor imports it on the
first load. Everything here runs in worker threads, never on the event loop's thread (except
`encode` of a short request, which costs tens of microseconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.devices import pick_device as serving_device
from core.settings import get_settings
from core.store import load_options, tokenizer_options

# Padded-token cost of one extra forward call (kernel launches, Python dispatch) on CPU,
# measured on MiniLM-L6: splitting a batch by length pays off once it saves more than this.
FORWARD_OVERHEAD_TOKENS = 96


def plan_chunks(lengths: Sequence[int], *, overhead_tokens: int) -> list[int]:
    """Split texts sorted by length into consecutive chunks, each padded to its longest text,
    minimising padded tokens plus `overhead_tokens` per chunk. Returns the chunks' end indices.

    Exact (dynamic programming over split points); n is a batch, so n^2 is nothing."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + (end - start) * lengths[end - 1] + overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    ends: list[int] = []
    end = n
    while end > 0:
        ends.append(end)
        end = cut[end]
    return ends[::-1]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One text, tokenized and truncated to the model's maximum length."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    truncated: bool


class LoadedModel:
    def __init__(self, path: Path, *, task: str, num_labels: int, max_seq_length: int | None,
                 device: str | None = None) -> None:
        """`device`: "auto" (a GPU when torch sees one), "cpu", "cuda", "cuda:1"...; None: cpu."""
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        trust = get_settings().trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **tokenizer_options(trust))
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **load_options(trust))
        if model.config.num_labels != num_labels:
            raise ValueError(
                f"the model in {path} has {model.config.num_labels} outputs but its row lists "
                f"{num_labels} labels"
            )
        self.model = model.to(serving_device(device)).eval()
        self.multi_label = task == "multi_label"
        # The recorded length is the one the model was trained at; the position limit still caps
        # it, for models registered before the length was recorded capped.
        limit = self._default_max_length()
        self.max_length = min(max_seq_length, limit) if max_seq_length else limit
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.device = next(model.parameters()).device

    def _default_max_length(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", 512)]
        if 0 < self.tokenizer.model_max_length < 1_000_000:  # unset means a huge sentinel
            limits.append(self.tokenizer.model_max_length)
        return int(min(limits))

    @property
    def size_bytes(self) -> int:
        """Bytes held by parameters and buffers: what the serving cache is bounded by."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        type_ids = batch.get("token_type_ids") if self.uses_token_types else None
        return [
            Encoded(
                input_ids=batch["input_ids"][i],
                token_type_ids=type_ids[i] if type_ids is not None else None,
                # The fast tokenizer keeps what truncation cut off: flag those texts.
                truncated=bool(batch.encodings[i].overflowing) if batch.encodings else False,
            )
            for i in range(len(texts))
        ]

    def forward(self, batch: Sequence[Encoded]) -> list[list[float]]:
        """Probabilities per label for each text, in the order given.

        Texts are sorted by length and split where padding would waste more than a forward
        call costs (SST-2 lengths run from 3 to 60 tokens: one padded batch of 32 computes
        about 3x the real tokens)."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i].input_ids))
        lengths = [len(batch[i].input_ids) for i in order]
        out: list[list[float]] = [[] for _ in batch]
        with torch.inference_mode():
            start = 0
            for end in plan_chunks(lengths, overhead_tokens=FORWARD_OVERHEAD_TOKENS):
                chunk = order[start:end]
                probs = self._forward_padded([batch[i] for i in chunk])
                for i, row in zip(chunk, probs, strict=True):
                    out[i] = row
                start = end
        return out

    def _forward_padded(self, batch: Sequence[Encoded]) -> list[list[float]]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if self.uses_token_types else None
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            mask[row, :n] = 1
            if types is not None and e.token_type_ids is not None:
                types[row, :n] = torch.tensor(e.token_type_ids)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs.cpu().tolist()  # type: ignore[no-any-return]
