"""Fixtures that build real things: a migrated database (SQLite or the PostgreSQL server on
127.0.0.1:5432), settings pointing at a private temp dir, and the FastAPI app over them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_URL = os.environ.get("TUNESERVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _redis_url() -> str:
    """The tests' Redis database: 15 (or TUNESERVE_TEST_REDIS_URL's), one lower for each further
    pytest-xdist process, so that processes never share a queue nor flush each other's."""
    base = os.environ.get("TUNESERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker[2:]) if worker[2:].isdigit() else 0
    if not offset:
        return base
    server, _, db = base.rpartition("/")
    if not db.isdigit() or int(db) < offset:
        raise RuntimeError(f"{base}: give TUNESERVE_TEST_REDIS_URL a database number of at least {offset} "
                           "(each pytest-xdist process takes the next lower one)")
    return f"{server}/{int(db) - offset}"


REDIS_URL = _redis_url()


# Run first: the compose stack test builds its images for minutes, which under two pytest
# processes overlaps the rest of the suite instead of running alone at its end.
FIRST_FILES = ("tests/test_compose_stack.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files in the order pytest-xdist hands them out (`make test` passes --no-loadscope-reorder,
    so this order is the one used): FIRST_FILES, then the files with slow tests (real workers,
    the real model), then the rest; the most tests first within each. The many quick files come
    last and even out the two processes' ends, where slow ones last ran alone. A run without
    xdist keeps the same order."""
    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    counts: dict[str, int] = {}
    slow: set[str] = set()
    for item in items:
        counts[file_of(item)] = counts.get(file_of(item), 0) + 1
        if item.get_closest_marker("slow") is not None:
            slow.add(file_of(item))
    first = {name: i for i, name in enumerate(FIRST_FILES)}
    order = {name: rank for rank, name in enumerate(sorted(
        counts, key=lambda name: (first.get(name, len(first)), name not in slow, -counts[name])))}
    items.sort(key=lambda item: order[file_of(item)])  # stable: within a file as written


def _clear_caches() -> None:
    from core.db import _sessionmaker, get_engine
    from core.queue import _client
    from core.settings import get_settings

    for cached in (get_settings, get_engine, _sessionmaker, _client):
        cached.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind; PostgreSQL gets a private schema per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuneserve.sqlite'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        # The application_name lets a fault test find (and kill) this test's connections alone.
        yield f"{PG_URL}?options=-csearch_path%3D{schema}&application_name=tuneserve-test-{schema}"
    finally:
        from core.db import get_engine

        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def kill_own_connections(database_url: str) -> int:
    """pg_terminate_backend for the connections of one test's database_url only (found by the
    application_name the fixture gives them); waits for each to end. Returns how many."""
    name = database_url.split("application_name=")[1]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": name}).all())
    finally:
        admin.dispose()


def read_training_queue(broker_url: str, timeout_s: float = 5.0) -> list[tuple[dict[str, Any], Any]]:
    """(headers, body) of every message on the worker's queue of a real broker, each
    acknowledged: what a worker would be handed. Celery's protocol 2 body is (args, kwargs, embed)."""
    from kombu import Connection

    from core.queue import TRAINING_QUEUE

    found: list[tuple[dict[str, Any], Any]] = []
    with Connection(broker_url) as conn, conn.SimpleQueue(TRAINING_QUEUE) as queue:
        wait_s = timeout_s  # the first message may take a poll interval to show; the rest are there
        while True:
            try:
                message = queue.get(block=True, timeout=wait_s)
            except queue.Empty:
                return found
            found.append((dict(message.headers), message.decode()))
            message.ack()
            wait_s = 0.5


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuneserve.sqlite'}"


def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, **extra: str) -> None:
    """Point every TUNESERVE_* setting at this test's own places and drop cached engines."""
    monkeypatch.setenv("TUNESERVE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("TUNESERVE_MODELS_DIR", str(tmp_path / "models_store"))
    monkeypatch.setenv("TUNESERVE_DATABASE_URL", database_url)
    monkeypatch.setenv("TUNESERVE_AUTO_MIGRATE", "true")
    for key, value in extra.items():
        monkeypatch.setenv(f"TUNESERVE_{key.upper()}", value)
    _clear_caches()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    configure(monkeypatch, tmp_path, database_url)
    from app.migrate import upgrade_head
    from core.settings import get_settings

    s = get_settings()
    upgrade_head(s.database_url)
    yield s
    _clear_caches()


@pytest.fixture
def client(settings):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


def make_tiny_classifier(
    directory: Path, labels: list[str], *, multi_label: bool = False, seed: int = 0,
    max_positions: int = 512,
) -> Path:
    """A tiny random BERT sequence classifier (2 layers, hidden 32) saved as a Hugging Face
    directory, with the bundled MiniLM tokenizer so real text tokenizes as it would in use."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from core.store import bundled_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_encoder(directory: Path, seed: int = 0) -> Path:
    """A tiny random BERT *base* model (no head), as a hub checkpoint would be before tuning."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from core.store import bundled_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


# ChatML turns; <|im_end|> is the end-of-turn token the model learns to emit and generation stops at.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer(texts: list[str], chat_template: str | None = TINY_CHAT_TEMPLATE) -> object:
    """A byte-level BPE tokenizer trained offline on `texts` (Korean included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "<|im_end|>", "<pad>", "<|im_start|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<pad>",
                                        additional_special_tokens=["<|im_start|>"])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_chat_lm(directory: Path, seed: int = 0, chat_template: str | None = TINY_CHAT_TEMPLATE,
                      hidden_size: int = 32, intermediate_size: int = 64) -> Path:
    """A 2-layer random LlamaForCausalLM with a BPE tokenizer trained on the Korean Q/A slice."""
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    frame = pd.read_csv(FIXTURES / "korean_chatbot_qa_slice.csv")
    texts = [str(t) for t in [*frame["Q"], *frame["A"]]] + ["user assistant system"]
    tokenizer = make_tiny_tokenizer(texts, chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,  # type: ignore[arg-type]
        num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    return directory


def make_chat_adapter(base_dir: Path, directory: Path, seed: int) -> Path:
    """A random LoRA adapter (q/v_proj) of the tiny chat Llama, its tokenizer beside it, and the
    tuneserve.json a finished LoRA chat job writes (base_model: the base's directory)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.store import write_model_meta

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: random B as well as A, so each adapter changes the replies.
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(directory)
    write_model_meta(directory, {"task": "chat", "base_model": str(base_dir), "adapter": True})
    return directory


@pytest.fixture(scope="session")
def tiny_chat_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_chat_lm(tmp_path_factory.mktemp("tiny-chat-lm"))


@pytest.fixture(scope="session")
def tiny_qlora_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama at width 64: bitsandbytes' 4-bit blocks are 64 weights, and its CPU kernels
    for evaluation need every linear layer's input at least one block wide."""
    return make_tiny_chat_lm(tmp_path_factory.mktemp("tiny-qlora-lm"), hidden_size=64, intermediate_size=128)

