"""`tuneserve metrics` on a chat job prints its base-vs-tuned report: BLEU, chrF and cosine for
the base and the tuned model, the count scored and the cap, and example replies side by side.
The report is the worker's own (worker/families/chat/compare.py over the tiny random Llama with
a LoRA adapter, on a real SQLite database); the CLI reads it through the in-process app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.client import output as out
from tests.conftest import configure
from tests.worker.families.test_chat_compare import VALIDATION_ROWS, add_chat_job_with_model

CAP = 3


def _table_rows(text: str, title: str | None) -> dict[str, list[str]]:
    """The body rows of the table titled `title` in a command's output (None: of every table),
    by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line) if title else -1
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.startswith("└") and title:
            break
        if line.startswith("│"):
            first, *cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[first] = cells
    return rows


@pytest.fixture
def compared_chat_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str,
                      tiny_chat_lm_dir: Path) -> str:
    """A succeeded LoRA chat job whose comparison the worker recorded, capped at CAP prompts."""
    from app.migrate import upgrade_head
    from core.settings import get_settings
    from worker.families.chat.compare import compare_chat_job

    configure(monkeypatch, tmp_path, sqlite_url, compare_max_new_tokens="8", compare_max_prompts=str(CAP))
    upgrade_head(get_settings().database_url)
    job_id = add_chat_job_with_model(tiny_chat_lm_dir, tmp_path, "", state="succeeded")
    assert compare_chat_job(job_id)["prompts"] == CAP
    return job_id


def test_metrics_of_a_chat_job_prints_the_base_vs_tuned_report(compared_chat_job: str) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    runner = CliRunner()
    with TestClient(create_app()) as http:
        shown = runner.invoke(app, ["metrics", compared_chat_job], obj=http, env={"COLUMNS": "200"})
        body = http.get(f"/jobs/{compared_chat_job}/metrics").json()
    assert shown.exit_code == 0, shown.output
    report: dict[str, Any] = body["comparison"]
    text = shown.output

    scores = _table_rows(text, "base vs tuned")
    bleu = f"BLEU ({report['bleu_tokenize']})"
    assert list(scores) == [bleu, "chrF", "cosine (MiniLM)"], text
    for row, key in ((bleu, "bleu"), ("chrF", "chrf"), ("cosine (MiniLM)", "cosine_similarity")):
        assert scores[row] == [out.fmt(report["base"][key]), out.fmt(report["tuned"][key]),
                               out.fmt(report["delta"][key])], (row, text)

    facts = _table_rows(text, None)
    assert f"{CAP} of {VALIDATION_ROWS} (capped at {CAP})" in facts["prompts scored"][0]
    assert facts["split"] == ["validation"]
    assert facts["decoding"] == ["greedy, at most 8 new tokens"]

    examples = _table_rows(text, "example replies (2 of 3; --json has all)")
    first = report["examples"][0]
    assert examples[str(first["row"])][0] == first["prompt"], text
    assert str(report["examples"][2]["row"]) not in examples  # a couple shown, not all
    # The tuned and the base reply of one row are cells of the same line.
    cells = examples[str(first["row"])]
    assert cells[2].startswith(first["base"].split("\n")[0].strip()[:10])
    assert cells[3].startswith(first["tuned"].split("\n")[0].strip()[:10])
    # No classification tables on a chat job.
    assert "tuned vs baselines" not in text and "per class" not in text and "no metric points" not in text
