"""The generation engine: every chat reply tuneserve makes (the base-vs-tuned report, /generate and
the OpenAI-compatible chat route) is decoded here, many sequences of one base in one batch.

The interface (nothing else here is meant to be called from outside):

    engine = Engine(settings)                                   # one per process
    runtime = ChatModels(...).runtime(spec)                     # core.serving.generation
    stream = engine.submit(runtime, messages_or_ids, params)    # raises QueueFull (429)
    async for piece in stream:                                  # text deltas, in order
        ...
    stream.reply                                                # Reply, once the iterator ended
    stream.cancel()                                             # the client left: the sequence stops
                                                                # before the next decoding step
    await engine.aclose()                                       # app shutdown

    replies = generate_many(runtime, prompts, params, ...)      # synchronous (the report)

How a batch is made (continuous batching over a padded KV cache):
- One lane per loaded base (a LoRA model's base is shared by all its adapters), one thread per
  lane. Sequences waiting for that base join the running batch at the next decoding step as long
  as the batch's reserved tokens (rows x the longest prompt + max_new_tokens) stay within
  `generate_max_batch_tokens`, so a request never waits for another's whole reply.
- Joining sequences are prefilled together, left-padded, then their KV cache is left-padded to
  the running batch's width and concatenated to it; the attention mask hides every pad. Rows that
  finish (end of turn, max_new_tokens, a stop string, cancelled) leave the cache at once, and the
  pad columns no remaining row needs are cut off.
- Different adapters of one base decode in one batch: each row names its adapter and peft's
  mixed-adapter forward (`adapter_names=`) applies each adapter to its own rows; "__base__" is
  the base alone.
- An out-of-memory error drops the batch, halves the row limit and decodes the same sequences
  again from their prompts; what was already streamed is not sent twice, and greedy replies are
  unchanged (the same computation, fewer rows at once).
- Greedy decoding is argmax over fp32 logits; sampling is temperature then top-p, drawn from the
  sequence's own generator (its `seed`), so a row's reply does not depend on its batch mates.
  Other knobs of a model's generation config (repetition penalty...) are not applied.

Imports torch: the API imports this module on the first /generate only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.settings import Settings

if TYPE_CHECKING:
    from core.serving.generation import ChatRuntime, LoadedBase

log = logging.getLogger("tuneserve.serving.engine")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()        # the reply ends before the first of these strings
    seed: int | None = None           # sampling only; None draws one


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


class QueueFull(Exception):
    """Queued tokens (prompt + max_new_tokens of every waiting and running request) past the budget."""

    def __init__(self, queued_tokens: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{queued_tokens} tokens are queued for generation, the limit is {limit} "
                         f"(TUNESERVE_GENERATE_MAX_QUEUED_TOKENS); retry in {retry_after_s} s")
        self.queued_tokens, self.limit, self.retry_after_s = queued_tokens, limit, retry_after_s


class GenerationOutOfMemory(RuntimeError):
    """Even one sequence alone does not fit in memory."""


# --- one sequence --------------------------------------------------------------------------------
class _Sequence:
    """A prompt, its params and what has been generated; `emit` is called on the lane's thread."""

    def __init__(self, runtime: ChatRuntime, prompt_ids: list[int], params: GenerationParams,
                 adapter: str | None, emit: Callable[[str, Any], None] | None = None) -> None:
        self.runtime, self.prompt_ids, self.params, self.adapter = runtime, prompt_ids, params, adapter
        self.emit = emit
        self.seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.reserved_tokens = len(prompt_ids) + params.max_new_tokens
        self.cancelled = False  # set from any thread; read before every decoding step
        self.tokens_at_cancel: int | None = None  # how far it had got when cancel() was called
        self.sent_chars = 0     # text already emitted: survives a retry after an out-of-memory error
        self.reply: Reply | None = None
        self.generator: torch.Generator | None = None
        self.generated: list[int] = []
        self.text = ""
        self._prefix = self._read = 0

    def restart(self, device: torch.device) -> None:
        self.generated, self.text = [], ""
        self._prefix = self._read = 0  # incremental detokenization offsets into `generated`
        if self.params.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's fp32 logits."""
        if self.params.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.params.top_p  # keeps the top token
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def append(self, token: int) -> bool:
        """Add a token; True when the sequence is finished (its reply is then set)."""
        eos = token in self.runtime.eos_ids
        if not eos:
            self.generated.append(token)
        if self.emit is not None or self.params.stop:  # the report needs the text only at the end
            checked = len(self.text)
            self._advance_text()
            cut = _first_stop(self.text, self.params.stop, checked)
            if cut is not None:
                return self._finish(self.text[:cut], "stop")
        if eos:
            return self._finish(self._decoded(), "stop")
        if len(self.generated) >= self.params.max_new_tokens:
            return self._finish(self._decoded(), "length")
        self._send(_stable_prefix(self.text, self.params.stop))
        return False

    def _decoded(self) -> str:
        return str(self.runtime.tokenizer.decode(self.generated, skip_special_tokens=True))

    def _advance_text(self) -> None:
        """Incremental detokenization (as text-generation-inference does it): decode only the
        tokens since the last whole character, so a step costs the same at token 5 and 500."""
        decode = self.runtime.tokenizer.decode
        before = decode(self.generated[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.generated[self._prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):  # U+FFFD: a character cut in two
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.generated)

    def cancel_now(self) -> None:
        self._finish(self.text, "cancelled")

    def fail(self, error: BaseException) -> None:
        self.reply = Reply(self.text, len(self.prompt_ids), len(self.generated), "error")
        if self.emit is not None:
            self.emit("error", error)

    def _send(self, text: str) -> None:
        if len(text) > self.sent_chars and self.emit is not None:
            self.emit("delta", text[self.sent_chars:])
        self.sent_chars = max(self.sent_chars, len(text))

    def _finish(self, text: str, reason: str) -> bool:
        self._send(text)
        self.reply = Reply(text, len(self.prompt_ids), len(self.generated), reason)
        if self.emit is not None:
            self.emit("done", self.reply)
        return True


def _first_stop(text: str, stops: Sequence[str], checked: int = 0) -> int | None:
    """Where the first stop string starts; `checked`: text before it was already searched."""
    found = [i for s in stops if s and (i := text.find(s, max(0, checked - len(s) + 1))) >= 0]
    return min(found) if found else None


def _stable_prefix(text: str, stops: Sequence[str]) -> str:
    """What can be streamed now: no half-decoded character (byte-level BPE ends a partial one in
    U+FFFD) and no tail that a stop string may still complete."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return text[:len(text) - hold] if hold else text


# --- the batch ---------------------------------------------------------------------------------------
class _Batch:
    """The running rows of one base: their KV cache, attention mask, next position and next input."""

    def __init__(self, base: LoadedBase, fault_oom_above_rows: int | None) -> None:
        self.base = base
        self.fault_oom_above_rows = fault_oom_above_rows
        self.rows: list[_Sequence] = []
        self.left: list[_Sequence] = []  # finished rows taken out of the batch, for the lane to collect
        self.peak_rows = 0      # the most rows, and distinct adapters, one forward has decoded
        self.peak_adapters = 0
        self.joins = 0          # prefills joined to an already running batch
        self.cache: Any = None
        self.mask = torch.empty(0)
        self.positions = torch.empty(0)
        self.next_tokens = torch.empty(0)

    @property
    def device(self) -> torch.device:
        return torch.device(self.base.model.device)

    def reserved_tokens(self, extra: Sequence[_Sequence] = ()) -> int:
        """Rows x the widest reservation: the padded KV cache the batch may grow to."""
        rows = [*self.rows, *extra]
        return len(rows) * max((s.reserved_tokens for s in rows), default=0)

    def clear(self) -> None:
        self.rows, self.cache = [], None

    def take_left(self) -> list[_Sequence]:
        left, self.left = self.left, []
        return left

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 rows: Sequence[_Sequence]) -> torch.Tensor:
        if self.fault_oom_above_rows is not None and len(rows) > self.fault_oom_above_rows:
            raise torch.OutOfMemoryError(f"injected: {len(rows)} rows is above "
                                         f"TUNESERVE_FAULT_OOM_ABOVE_GENERATE_ROWS={self.fault_oom_above_rows}")
        self.peak_rows = max(self.peak_rows, len(rows))
        self.peak_adapters = max(self.peak_adapters, len({s.adapter for s in rows}))
        kwargs: dict[str, Any] = {}
        model = self.base.model
        if self.base.adapters:
            adapters = {s.adapter for s in rows}
            if len(adapters) == 1 and None not in adapters:
                # One adapter for every row: it is made the active one, and peft's plain forward
                # skips the mixed batch's per-adapter gather and scatter in every adapted layer
                # (25% of a step in bench/generate_bench.py's model). The base's lock is held.
                (name,) = adapters
                if model.active_adapter != name:
                    model.set_adapter(name)  # under inference_mode: no gradient either way
            else:
                kwargs["adapter_names"] = [s.adapter or BASE_ADAPTER for s in rows]
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float()

    def add(self, seqs: list[_Sequence]) -> None:
        """Prefill `seqs` (left-padded) and join them to the running rows."""
        from transformers import DynamicCache

        device = self.device
        width = max(len(s.prompt_ids) for s in seqs)
        pad = self.base_pad_id(seqs[0])
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids):] = 1
            s.restart(device)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.base.model.config)
        logits = self._forward(ids, mask, positions, cache, seqs)
        next_positions = positions[:, -1] + 1
        if not self.rows:
            self.rows, self.cache, self.mask, self.positions = list(seqs), cache, mask, next_positions
        else:
            self._merge(seqs, cache, mask, next_positions)
        self._take(logits, seqs, offset=len(self.rows) - len(seqs))

    def base_pad_id(self, seq: _Sequence) -> int:
        pad = seq.runtime.tokenizer.pad_token_id
        return int(pad if pad is not None else seq.runtime.eos_ids[0])

    def _merge(self, seqs: list[_Sequence], cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        width = max(self.mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([left_pad(old.keys, -2), left_pad(new.keys, -2)])
            old.values = torch.cat([left_pad(old.values, -2), left_pad(new.values, -2)])
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(mask, 1)])
        self.positions = torch.cat([self.positions, positions])
        self.rows.extend(seqs)
        self.joins += 1

    def can_merge(self) -> bool:
        """Joining a running batch edits the cache's tensors: only plain (full attention) layers."""
        from transformers.cache_utils import DynamicLayer

        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def step(self) -> None:
        """One decoding step for every running row (the finished and cancelled ones leave first)."""
        self.drop_finished()
        if not self.rows:
            return
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self._forward(self.next_tokens.view(-1, 1), self.mask, self.positions.view(-1, 1),
                               self.cache, self.rows)
        self.positions = self.positions + 1
        self._take(logits, self.rows, offset=0)

    def _take(self, logits: torch.Tensor, seqs: Sequence[_Sequence], offset: int) -> None:
        """Each row's next token from its logits; sets next_tokens for those rows."""
        greedy = logits.argmax(-1).tolist()
        picked = [int(greedy[i]) if s.params.temperature <= 0 else s.pick(logits[i])
                  for i, s in enumerate(seqs)]
        tokens = torch.tensor(picked, dtype=torch.long, device=logits.device)
        if offset == 0 and len(seqs) == len(self.rows):
            self.next_tokens = tokens
        else:
            self.next_tokens = torch.cat([self.next_tokens[:offset], tokens])
        for s, token in zip(seqs, picked, strict=True):
            s.append(token)

    def drop_finished(self) -> None:
        for s in self.rows:
            if s.reply is None and s.cancelled:
                s.cancel_now()
        keep = [i for i, s in enumerate(self.rows) if s.reply is None]
        if len(keep) == len(self.rows):
            return
        self.left.extend(s for s in self.rows if s.reply is not None)
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = [self.rows[i] for i in keep]
        # Pad columns on the left that no remaining row attends to: cut them from the cache.
        lead = int((self.mask.cumsum(-1) == 0).sum(-1).min())
        if lead > 0:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


# --- a lane: one base's waiting sequences and its batch -------------------------------------------------
class _Lane:
    """Decodes every sequence for one base; `run_once` is one admission + one decoding step."""

    def __init__(self, base: LoadedBase, settings: Settings) -> None:
        self.base = base
        self.max_batch_tokens = settings.generate_max_batch_tokens
        self.max_rows = settings.generate_max_batch_rows
        self.batch = _Batch(base, settings.fault_oom_above_generate_rows)
        self.waiting: deque[_Sequence] = deque()
        self.oom_halvings = 0
        self.finished: list[_Sequence] = []  # handed to the caller by take_finished()

    def busy(self) -> bool:
        return bool(self.waiting) or bool(self.batch.rows)

    def _admit(self) -> list[_Sequence]:
        joining: list[_Sequence] = []
        if self.batch.rows and not self.batch.can_merge():
            return joining
        while self.waiting:
            head = self.waiting[0]
            if head.cancelled:
                self.waiting.popleft().cancel_now()
                self.finished.append(head)
                continue
            rows = len(self.batch.rows) + len(joining)
            if rows >= self.max_rows:
                break
            if rows and self.batch.reserved_tokens([*joining, head]) > self.max_batch_tokens:
                break
            joining.append(self.waiting.popleft())
        return joining

    def run_once(self, after_prefill: Callable[[], None] | None = None) -> None:
        """`after_prefill`: called once joining sequences have their first token, before the
        step of the whole batch (the server streams those first tokens at once)."""
        joining = self._admit()
        try:
            with torch.inference_mode(), self.base.lock:
                if joining:
                    self.batch.add(joining)
                    if after_prefill is not None:
                        after_prefill()
                self.batch.step()
                self.batch.drop_finished()
        except torch.OutOfMemoryError as error:
            self._out_of_memory(joining, error)
        except Exception as error:  # a bug or a bad model: what was decoding fails, nothing hangs
            for s in dict.fromkeys([*self.batch.take_left(), *self.batch.rows, *joining]):
                if s.reply is None:
                    s.fail(error)
                self.finished.append(s)
            self.batch.clear()
            raise
        self.finished.extend(self.batch.take_left())

    def _out_of_memory(self, joining: list[_Sequence], error: BaseException) -> None:
        self.finished.extend(self.batch.take_left())
        rows = [s for s in [*self.batch.rows, *joining] if s.reply is None]
        rows = list(dict.fromkeys(rows))  # a joining row may already be in the batch
        self.finished.extend(s for s in [*self.batch.rows, *joining] if s.reply is not None)
        self.finished = list(dict.fromkeys(self.finished))
        self.batch.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) <= 1:
            for s in rows:
                s.fail(GenerationOutOfMemory(f"one sequence of {s.reserved_tokens} tokens does not fit in "
                                             f"memory: {error}"))
                self.finished.append(s)
            return
        self.max_rows = max(1, len(rows) // 2)
        self.oom_halvings += 1
        log.warning("out of memory with %d rows on %s: retrying the same sequences, at most %d rows at once",
                    len(rows), self.base.path, self.max_rows)
        self.waiting.extendleft(reversed(rows))

    def take_finished(self) -> list[_Sequence]:
        done, self.finished = self.finished, []
        return done


def _ids(runtime: ChatRuntime, prompt: Sequence[dict[str, str]] | Sequence[int]) -> list[int]:
    """Messages through the model's chat template; token ids as they are."""
    if prompt and isinstance(prompt[0], dict):
        return runtime.prompt_ids(list(prompt))  # type: ignore[arg-type]
    return [int(t) for t in prompt]  # type: ignore[arg-type]




def generate_many(runtime: ChatRuntime, prompts: Sequence[list[dict[str, str]] | list[int]],
                  params: GenerationParams, settings: Settings, *, base_only: bool | Sequence[bool] = False,
                  on_progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> list[Reply]:
    """Replies to every prompt, in order, batched: sorted by length so rows of one batch pad little.
    `base_only` (one flag, or one per prompt): the base's reply, its adapters off for that row.
    `on_progress(done, total)` after each finished reply; `should_stop()` between steps cancels
    the rest (their replies come back with finish_reason "cancelled")."""
    ids = [_ids(runtime, p) for p in prompts]
    alone = [base_only] * len(ids) if isinstance(base_only, bool) else list(base_only)
    seqs = [_Sequence(runtime, i, params, None if b else runtime.adapter)
            for i, b in zip(ids, alone, strict=True)]
    lane = _Lane(runtime.base, settings)
    lane.waiting.extend(sorted(seqs, key=lambda s: len(s.prompt_ids)))
    done = 0
    while lane.busy():
        if should_stop is not None and should_stop():
            for s in [*lane.waiting, *lane.batch.rows]:
                s.cancelled = True
        lane.run_once()
        finished = lane.take_finished()
        if finished:
            done += len(finished)
            if on_progress is not None:
                on_progress(done, len(seqs))
    for s in seqs:
        if s.reply is not None and s.reply.finish_reason == "error":
            raise GenerationOutOfMemory(f"a prompt of {len(s.prompt_ids)} tokens could not be generated for: "
                                        "it does not fit in memory alone")
    return [s.reply for s in seqs if s.reply is not None]


# --- the async engine ----------------------------------------------------------------------------------
class Stream:
    """One request's reply as it is decoded: `async for piece in stream`, then `stream.reply`."""

    def __init__(self, engine: Engine, seq: _Sequence | None = None) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.seq: _Sequence | None = seq
        self.reply: Reply | None = None
        self.first_token_at: float | None = None
        self._outbox: list[tuple[Stream, str, Any]] | None = None  # its lane's, set by submit()

    def _emit(self, kind: str, value: Any) -> None:  # the lane's thread: delivered after its step
        assert self._outbox is not None
        self._outbox.append((self, kind, value))

    def _deliver(self, kind: str, value: Any) -> None:  # the event loop's thread
        self._queue.put_nowait((kind, value))

    def cancel(self) -> None:
        """Stop decoding this sequence (the client is gone); its slot is free at the next step."""
        if self.seq is not None and not self.seq.cancelled:
            self.seq.tokens_at_cancel = len(self.seq.generated)
            self.seq.cancelled = True

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == "delta":
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    yield value
                elif kind == "done":
                    self.reply = value
                    return
                else:
                    raise value
        finally:
            if self.reply is None:
                self.cancel()

    async def text(self) -> Reply:
        """The whole reply (no streaming)."""
        async for _ in self:
            pass
        assert self.reply is not None
        return self.reply


def _deliver_all(items: list[tuple[Stream, str, Any]]) -> None:
    for stream, kind, value in items:
        stream._deliver(kind, value)


class _LaneThread:
    def __init__(self, engine: Engine, base: LoadedBase) -> None:
        self.lane = _Lane(base, engine.settings)
        self.engine = engine
        self.wakeup = threading.Condition()
        self.closed = False
        self.retiring = False  # its base was unloaded: end once the queued sequences are answered
        # What the step's sequences emitted, handed to the event loop in one call per step: one
        # wake-up of the loop for all rows rather than one per row and token.
        self.outbox: list[tuple[Stream, str, Any]] = []
        self.thread = threading.Thread(target=self._run, name=f"tuneserve-generate-{id(base):x}", daemon=True)
        self.thread.start()

    def put(self, seq: _Sequence) -> None:
        with self.wakeup:
            self.lane.waiting.append(seq)
            self.wakeup.notify()

    def _run(self) -> None:
        max_wait_s = self.engine.settings.generate_max_wait_ms / 1000
        while True:
            with self.wakeup:
                while not self.lane.busy() and not self.closed and not self.retiring:
                    self.wakeup.wait()
                if self.closed or (self.retiring and not self.lane.busy()):
                    return
                if not self.lane.batch.rows:
                    # Idle until now: wait a moment for the requests sent together with this one.
                    deadline = time.monotonic() + max_wait_s
                    while (remaining := deadline - time.monotonic()) > 0 and not self.closed:
                        self.wakeup.wait(remaining)
            started = time.perf_counter()
            try:
                self.lane.run_once(after_prefill=self._flush)
            except Exception:  # run_once failed its rows; the lane keeps serving the others
                log.exception("generation failed on %s", self.lane.base.path)
            self._flush()
            # Hand the GIL over between steps: the event loop streams the pieces this step
            # made and admits new requests, which otherwise wait for the interpreter's
            # 5 ms switch interval after every step.
            time.sleep(0)
            self.engine._finished(self.lane.take_finished(), time.perf_counter() - started, self.lane.batch)

    def _flush(self) -> None:
        items, self.outbox[:] = list(self.outbox), []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, str, Any]]] = {}
        for item in items:
            by_loop.setdefault(item[0]._loop, []).append(item)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                pass

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()


@dataclass
class EngineStats:
    queued_tokens: int = 0
    finished: int = 0
    cancelled: int = 0
    tokens_per_s: float | None = None     # reserved tokens released per second of decoding, smoothed
    peak_rows: int = 0                    # the most rows one decoding step has run
    peak_adapters: int = 0                # the most distinct adapters (the base alone counts) in one step
    joins: int = 0                        # prefills joined to a running batch (the busiest lane's)
    last_cancelled: list[Reply] = field(default_factory=list)


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lanes: dict[int, _LaneThread] = {}
        self._lock = threading.Lock()  # queued tokens and stats: touched by the lanes' threads too
        self.stats = EngineStats()
        self._released_tokens, self._busy_s = 0, 0.0

    def submit(self, runtime: ChatRuntime, prompt: list[dict[str, str]] | list[int],
               params: GenerationParams) -> Stream:
        """Queue one reply (messages through the model's chat template, or token ids as they are);
        raises QueueFull past `generate_max_queued_tokens`."""
        ids = _ids(runtime, prompt)
        stream = Stream(self)
        seq = _Sequence(runtime, ids, params, runtime.adapter, stream._emit)
        stream.seq = seq
        with self._lock:
            limit = self.settings.generate_max_queued_tokens
            queued = self.stats.queued_tokens
            if queued and queued + seq.reserved_tokens > limit:
                raise QueueFull(queued, limit, self._retry_after_s())
            self.stats.queued_tokens += seq.reserved_tokens
            lane = self._lanes.get(id(runtime.base))
            if lane is None:
                lane = self._lanes[id(runtime.base)] = _LaneThread(self, runtime.base)
        stream._outbox = lane.outbox
        lane.put(seq)
        return stream

    def _retry_after_s(self) -> int:
        rate = self.stats.tokens_per_s
        return 1 if not rate else max(1, math.ceil(self.stats.queued_tokens / rate))

    def _finished(self, seqs: list[_Sequence], elapsed_s: float, batch: _Batch) -> None:
        with self._lock:
            self.stats.peak_rows = max(self.stats.peak_rows, batch.peak_rows)
            self.stats.peak_adapters = max(self.stats.peak_adapters, batch.peak_adapters)
            self.stats.joins = max(self.stats.joins, batch.joins)
            released = sum(s.reserved_tokens for s in seqs)
            self.stats.queued_tokens -= released
            # The drain rate over at least half a second of decoding (steps that release nothing
            # count too), smoothed: what Retry-After divides the queued tokens by.
            self._released_tokens += released
            self._busy_s += elapsed_s
            if self._busy_s >= 0.5:
                rate = self._released_tokens / self._busy_s
                old = self.stats.tokens_per_s
                self.stats.tokens_per_s = rate if old is None else 0.7 * old + 0.3 * rate
                self._released_tokens, self._busy_s = 0, 0.0
            for s in seqs:
                self.stats.finished += 1
                if s.reply is not None and s.reply.finish_reason == "cancelled":
                    self.stats.cancelled += 1
                    self.stats.last_cancelled = [*self.stats.last_cancelled[-9:], s.reply]

    def forget_base(self, base: LoadedBase) -> None:
        """The base was unloaded: its lane ends once idle (requests already queued are answered)."""
        with self._lock:
            lane = self._lanes.pop(id(base), None)
        if lane is not None:
            with lane.wakeup:
                lane.retiring = True
                lane.wakeup.notify()

    async def aclose(self) -> None:
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.close()
