"""Which column holds the text, which the label(s), and which task the file is for.

Names first (text, sentence, 문장, label, 분류, ...), then the values (0/1 columns, short
repeated values, the longest strings). Every choice carries its reason for the report, and a
guess that could be wrong carries a warning that says how to choose otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from app.ingest import cells
from app.ingest.errors import IngestError

TASKS = ("single_label", "multi_label", "chat")
# Priority order: the first name present wins.
TEXT_NAMES = ("text", "texts", "sentence", "sentences", "document", "content", "contents", "review",
              "reviews", "comment", "comments", "body", "utterance", "tweet", "post", "question",
              "query", "q", "prompt", "input",
              "문장", "내용", "댓글", "텍스트", "본문", "리뷰", "발화", "질문")
LABEL_NAMES = ("label", "labels", "class", "classes", "category", "categories", "target", "sentiment",
               "hate", "emotion", "emotions", "intent", "topic", "tag", "tags", "polarity", "y",
               "라벨", "레이블", "분류", "감정", "감성", "클래스", "카테고리", "정답")
MESSAGES_NAMES = ("messages", "conversation", "conversations", "dialog", "dialogue", "chat", "대화")
QA_PAIRS = (("q", "a"), ("question", "answer"), ("질문", "답변"), ("질문", "대답"), ("prompt", "response"),
            ("prompt", "completion"), ("instruction", "output"), ("query", "response"), ("user", "assistant"))
# Rows looked at to profile a column: enough to tell text from labels, cheap on big files.
PROFILE_ROWS = 20_000
# A label column repeats its values: at most this many distinct ones...
MAX_CLASSES = 1000
# ...and at most this share of its rows distinct (free text is nearly all distinct).
MAX_DISTINCT_SHARE = 0.5
# Beside other 0/1 columns, a column this much 0/1 is a label column with a few bad cells
# (those rows are rejected with the reason) rather than something else.
NEAR_BINARY_SHARE = 0.9


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass
class Profile:
    non_empty: int
    distinct: int
    mean_chars: float
    numeric: bool
    binary_share: float  # share of non-empty values that read as 0/1
    messages: bool
    # Cells that are objects (a Parquet struct or map, a JSON object) or lists (not chat turns):
    # as text they would be Python's repr of the value, so they are never a text column.
    objects: bool = False
    lists: bool = False

    @property
    def binary(self) -> bool:
        return self.non_empty > 0 and self.binary_share == 1.0

    @property
    def label_like(self) -> bool:
        return self.binary or (
            2 <= self.distinct <= MAX_CLASSES and self.distinct <= MAX_DISTINCT_SHARE * self.non_empty
        )

    @property
    def text_like(self) -> bool:
        return self.non_empty > 0 and not (self.numeric or self.binary or self.messages or self.objects
                                           or self.lists)


def profile(series: pd.Series) -> Profile:
    values = series.iloc[:PROFILE_ROWS].tolist()
    if any(cells.looks_like_messages(v) for v in values[:50]):
        return Profile(len(values), 0, 0.0, False, 0.0, True)
    objects = any(isinstance(v, dict) for v in values)
    lists = any(cells.is_sequence(v) for v in values)
    texts = [t for t in (cells.as_text(v) if not cells.is_sequence(v) else ",".join(map(str, v))
                         for v in values) if t is not None]
    if not texts:
        return Profile(0, 0, 0.0, False, 0.0, False, objects, lists)
    numeric = all(_is_number(t) for t in texts)
    binary_share = sum(cells.binary_flag(t) is not None for t in texts) / len(texts)
    mean_chars = sum(map(len, texts)) / len(texts)
    return Profile(len(texts), len(set(texts)), mean_chars, numeric, binary_share, False, objects, lists)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Plan:
    task: str
    text_column: str | None
    label_columns: list[str] = field(default_factory=list)
    # single: one label per row; multi_cell: "joy,surprise" or a list in one column;
    # binary_columns: one 0/1 column per label; none: chat.
    label_shape: str = "single"
    messages_column: str | None = None
    answer_column: str | None = None  # question/answer chat: text_column holds the question
    # chat: openai (messages of role/content), sharegpt (conversations of from/value), alpaca
    # (instruction + optional input -> user, output -> assistant) or question_answer.
    chat_format: str | None = None
    input_column: str | None = None  # alpaca: joined to the instruction on a new line
    system_column: str | None = None  # alpaca and sharegpt: a system turn per row
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Inference:
    """Plans the columns of one training frame; see `plan_columns`."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.columns = list(frame.columns)
        self._profiles: dict[str, Profile] = {}

    def profile(self, column: str) -> Profile:
        if column not in self._profiles:
            self._profiles[column] = profile(self.frame[column])
        return self._profiles[column]

    def by_name(self, names: tuple[str, ...], exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Columns whose normalised name is in `names`, in the priority order of `names`."""
        rank = {n: i for i, n in enumerate(names)}
        found = [c for c in self.columns if _norm(c) in rank and c not in exclude]
        return sorted(found, key=lambda c: rank[_norm(c)])

    def listing(self) -> str:
        return ", ".join(repr(c) for c in self.columns)

    def require(self, column: str, field_name: str) -> None:
        if column not in self.columns:
            raise IngestError(
                f"column {column!r} named in {field_name} is not in the file; its columns are: "
                f"{self.listing()}. Pass one of those (names are case-sensitive)"
            )


def plan_columns(
    frame: pd.DataFrame, *, task: str | None, text_column: str | None, label_columns: list[str]
) -> Plan:
    """Decide task and columns, honouring what the user named; IngestError when impossible."""
    inf = Inference(frame)
    if text_column:
        inf.require(text_column, "text_column")
    for column in label_columns:
        inf.require(column, "label_column")
    _check_named(inf, text_column, label_columns)
    if task == "chat" or (task is None and not text_column and not label_columns):
        plan = _plan_chat(inf, task, text_column, label_columns)
        if plan is not None:
            return plan
    return _plan_classification(inf, task, text_column, label_columns)


def _check_named(inf: Inference, text_column: str | None, label_columns: list[str]) -> None:
    """Columns the request names that cannot serve as named: one column as both text and
    label (the model would read its answer), or cells that are objects or lists, not text."""
    if text_column and text_column in label_columns:
        raise IngestError(
            f"column {text_column!r} is named as both text_column and label_column: the model would "
            f"be shown the label as its input. Name the text column and the label column apart; the "
            f"file has {inf.listing()}"
        )
    if text_column and not inf.profile(text_column).messages and (
            inf.profile(text_column).objects or inf.profile(text_column).lists):
        kind = "objects (a Parquet struct or map, or JSON objects)" if inf.profile(text_column).objects \
            else "lists"
        raise IngestError(
            f"column {text_column!r} named in text_column holds {kind}, not text: stored as text they "
            "would be Python's spelling of the value. Name a column of plain text, or flatten the "
            "value into a string column before uploading"
        )
    for column in label_columns:
        if inf.profile(column).objects:
            raise IngestError(
                f"column {column!r} named in label_column holds objects (a Parquet struct or map, or "
                "JSON objects), not label names: name a column of labels (a list of names is fine for "
                "multi_label)"
            )


def _plan_chat(inf: Inference, task: str | None, text_column: str | None,
               label_columns: list[str]) -> Plan | None:
    if task == "chat" and label_columns:
        raise IngestError("chat datasets have no labels: drop label_column, or pick task=single_label "
                          "or task=multi_label to train a classifier")
    messages = [c for c in ([text_column] if text_column else inf.columns) if inf.profile(c).messages]
    messages.sort(key=lambda c: _norm(c) not in MESSAGES_NAMES)
    alpaca = None if messages else _find_alpaca(inf, text_column)
    if messages:
        column = messages[0]
        first = next(v for v in inf.frame[column].tolist() if cells.looks_like_messages(v))
        dialect = cells.chat_dialect(first)
        shape = "{from, value}" if dialect == "sharegpt" else "{role, content}"
        reason = f"column {column!r} holds chat turns (a list of {shape}): {dialect} format"
        plan = Plan("chat", column, label_shape="none", messages_column=column, chat_format=dialect,
                    system_column=_system_column(inf, exclude={column}))
    elif alpaca is not None:
        instruction, input_column, output = alpaca
        joined = f"{instruction!r} (+ {input_column!r} on a new line)" if input_column else repr(instruction)
        reason = f"columns {joined} -> user and {output!r} -> assistant: alpaca format"
        plan = Plan("chat", instruction, label_shape="none", answer_column=output, chat_format="alpaca",
                    input_column=input_column,
                    system_column=_system_column(inf, exclude={instruction, output}))
    else:
        pair = _find_qa_pair(inf, text_column)
        if pair is None:
            if task != "chat":
                return None
            raise IngestError(
                f"task=chat needs a chat format: {cells.CHAT_FORMATS}, or question/answer columns such "
                f"as Q/A, question/answer or 질문/답변; the file has {inf.listing()}"
            )
        question, answer = pair
        reason = f"columns {question!r} and {answer!r} look like question/answer pairs (user -> assistant)"
        plan = Plan("chat", question, label_shape="none", answer_column=answer, chat_format="question_answer")
    plan.reasons["chat_format"] = plan.chat_format or ""
    plan.reasons["task"] = "named by the request" if task == "chat" else reason
    plan.reasons["text_column"] = reason
    if task is None:
        plan.warnings.append(f"task inferred as chat: {reason}; pass task=... to choose another")
        used = {c for c in (plan.text_column, plan.answer_column) if c}
        extra = [c for c in inf.by_name(LABEL_NAMES, exclude=used) if inf.profile(c).label_like]
        if extra and plan.text_column:
            plan.warnings.append(
                f"column {extra[0]!r} looks like a label: to train a classifier on {plan.text_column!r} "
                "instead, upload with "
                f"task=single_label&text_column={plan.text_column}&label_column={extra[0]}"
            )
    return plan


def _find_alpaca(inf: Inference, instruction: str | None) -> tuple[str, str | None, str] | None:
    """(instruction, input or None, output) columns of an Alpaca file, or None."""
    normed = {_norm(c): c for c in inf.columns}
    if "instruction" not in normed or "output" not in normed:
        return None
    if instruction is not None and normed["instruction"] != instruction:
        return None
    if not (inf.profile(normed["instruction"]).text_like and inf.profile(normed["output"]).text_like):
        return None
    return normed["instruction"], normed.get("input"), normed["output"]


def _system_column(inf: Inference, exclude: set[str]) -> str | None:
    normed = {_norm(c): c for c in inf.columns if c not in exclude}
    return normed.get("system")


def _find_qa_pair(inf: Inference, question: str | None) -> tuple[str, str] | None:
    normed = {_norm(c): c for c in inf.columns}
    for q, a in QA_PAIRS:
        if q in normed and a in normed and (question is None or normed[q] == question):
            if inf.profile(normed[q]).text_like and inf.profile(normed[a]).text_like:
                return normed[q], normed[a]
    return None


def _plan_classification(inf: Inference, task: str | None, text_column: str | None,
                         label_columns: list[str]) -> Plan:
    named_labels = set(label_columns) or set(inf.by_name(LABEL_NAMES))
    plan = Plan(task or "single_label", None)
    plan.text_column = text_column or _infer_text(inf, plan, exclude=named_labels)
    if label_columns:
        plan.label_columns = list(label_columns)
        plan.reasons["label_columns"] = "named by the request"
    else:
        plan.label_columns = _infer_labels(inf, plan, task)
    _decide_shape(inf, plan, task)
    return plan


def _infer_text(inf: Inference, plan: Plan, exclude: set[str]) -> str:
    for column in inf.by_name(TEXT_NAMES, exclude=exclude):
        if inf.profile(column).text_like:
            plan.reasons["text_column"] = f"column {column!r} has a usual name for text"
            return column
    candidates = [c for c in inf.columns if c not in exclude and inf.profile(c).text_like]
    if not candidates:
        raise IngestError(
            "no usable text column: no column holds text (they are empty, numbers or 0/1 flags); "
            f"the file has {inf.listing()}. Add a text column or name it with text_column=..."
        )
    column = max(candidates, key=lambda c: inf.profile(c).mean_chars)
    mean = inf.profile(column).mean_chars
    plan.reasons["text_column"] = f"column {column!r} has the longest strings (mean {mean:.0f} characters)"
    plan.warnings.append(
        f"text column guessed as {column!r} (the longest strings); pass text_column=... to choose another"
    )
    return column


def _infer_labels(inf: Inference, plan: Plan, task: str | None) -> list[str]:
    text = plan.text_column
    others = [c for c in inf.columns if c != text]
    binary = [c for c in others if inf.profile(c).binary]
    named = [c for c in inf.by_name(LABEL_NAMES, exclude={text or ""}) if inf.profile(c).non_empty]
    # Several 0/1 columns are one-column-per-label multi-label data (e.g. the Unsmile corpus),
    # unless a column with a label's name is a real multi-valued label.
    if len(binary) >= 2 and task != "single_label" and (
        task == "multi_label" or not named or (named[0] in binary and len(binary) >= 3)
    ):
        columns = [c for c in others if inf.profile(c).binary_share >= NEAR_BINARY_SHARE]
        plan.reasons["label_columns"] = (
            f"{len(columns)} columns hold 0/1 values: one column per label ({', '.join(columns)})"
        )
        return columns
    if named:
        choice = named[0]
        plan.reasons["label_columns"] = f"column {choice!r} has a usual name for labels"
    else:
        likely = [c for c in others if inf.profile(c).label_like and not inf.profile(c).messages]
        if not likely:
            raise IngestError(
                f"no label column found: no column has a label's name or a few repeated values; the file "
                f"has {inf.listing()}. Name it with label_column=... (several 0/1 columns: comma-separated)"
            )
        choice = likely[0]
        plan.reasons["label_columns"] = f"column {choice!r} holds a few repeated values"
        plan.warnings.append(f"label column guessed as {choice!r}; pass label_column=... to choose another")
    rivals = [c for c in others if c != choice and (c in named or inf.profile(c).label_like)]
    if rivals:
        listed = ", ".join(repr(c) for c in rivals)
        plan.warnings.append(
            f"label column {choice!r} chosen; {listed} could also be labels: pass "
            f"label_column={rivals[0]} to use another (several 0/1 columns: comma-separated)"
        )
    return [choice]


def _decide_shape(inf: Inference, plan: Plan, task: str | None) -> None:
    if len(plan.label_columns) > 1:
        if task == "single_label":
            raise IngestError(
                f"task=single_label takes one label column, but {len(plan.label_columns)} were named: "
                "name one, or use task=multi_label for one 0/1 column per label"
            )
        plan.task, plan.label_shape = "multi_label", "binary_columns"
        plan.reasons.setdefault("task", "several label columns: one 0/1 column per label")
        return
    column = plan.label_columns[0]
    values = inf.frame[column].iloc[: PROFILE_ROWS].tolist()
    several = any(cells.is_sequence(v) or (isinstance(v, str) and "," in v) for v in values)
    if task == "single_label" or (task is None and not several):
        plan.task, plan.label_shape = "single_label", "single"
        plan.reasons.setdefault("task", "named by the request" if task else
                                f"column {column!r} holds one label per row")
        return
    plan.task, plan.label_shape = "multi_label", "multi_cell"
    if task:
        plan.reasons.setdefault("task", "named by the request")
    else:
        plan.reasons["task"] = f"column {column!r} holds several labels per row (lists or 'a,b')"
        plan.warnings.append(
            f"task inferred as multi_label because {column!r} has comma-separated or list values; "
            "pass task=single_label to treat each value as one class"
        )
