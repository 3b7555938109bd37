"""Sentencepiece-only tokenizers load (sentencepiece and protobuf are dependencies), and one that
cannot load names the package really missing, not what transformers falls through to."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FIXTURES, ROOT
from worker.families.loading import load_tokenizer
from worker.training.protocols import TrainingError


@pytest.fixture(scope="module")
def deberta_v3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeBERTa-v3-style directory: spm.model (trained here, on the Korean slice) and no tokenizer.json."""
    import sentencepiece as spm

    frame = pd.read_csv(FIXTURES / "korean_chatbot_qa_slice.csv")
    lines = [*frame["Q"], *frame["A"], "the quick brown fox jumps over the lazy dog"] * 3
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=500, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]",
        user_defined_symbols=["[MASK]"], minloglevel=2)
    directory = tmp_path_factory.mktemp("deberta-v3")
    (directory / "spm.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    (directory / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "vocab_size": 500}))
    return directory


def test_a_sentencepiece_only_tokenizer_loads(deberta_v3_dir: Path) -> None:
    tokenizer = load_tokenizer(str(deberta_v3_dir), "tiny-deberta-v3")
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("하루가 또 가네요.")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "[UNK]" not in tokens and "하" in "".join(tokens)


def test_without_sentencepiece_the_error_names_it(deberta_v3_dir: Path) -> None:
    # A fresh interpreter where `import sentencepiece` fails, as in an environment without it.
    code = (
        "import sys; sys.modules['sentencepiece'] = None\n"
        "from worker.families.loading import load_tokenizer\n"
        "from worker.training.protocols import TrainingError\n"
        f"try:\n    load_tokenizer({str(deberta_v3_dir)!r}, 'microsoft/deberta-v3-base')\n"
        "except TrainingError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "needs the sentencepiece package: pip install sentencepiece" in out.stdout, out.stderr[-2000:]
    assert "tiktoken" not in out.stdout


def test_an_unloadable_tokenizer_says_why(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TrainingError, match="Cannot load the tokenizer of 'broken'"):
        load_tokenizer(str(tmp_path), "broken")
