"""The base-vs-tuned chat report on a real database and the tiny random Llama with a LoRA adapter:
the whole held-out split by default (a cap when set, both in the report), progress events with
done/total and an ETA, the generation time recorded, and a cancelled job's report stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from core.db import session_scope
from core.tables import Dataset, Job, JobEvent, TunedModel
from tests.conftest import FIXTURES, configure, make_chat_adapter

VALIDATION_ROWS = 12


def _dataset(directory: Path) -> Path:
    frame = pd.read_csv(FIXTURES / "korean_chatbot_qa_slice.csv").iloc[:VALIDATION_ROWS]
    directory.mkdir()
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                for q, a in zip(frame["Q"], frame["A"], strict=True)]
    table = pa.table({"row": pa.array([i + 2 for i in frame.index], pa.int64()),
                      "text": pa.array(list(frame["Q"])), "messages": pa.array(messages, message_type)})
    pq.write_table(table, directory / "validation.parquet")
    return directory


@pytest.fixture
def chat_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, tiny_chat_lm_dir: Path
             ) -> Any:
    from app.migrate import upgrade_head
    from core.settings import get_settings

    def make(**settings: str) -> str:
        configure(monkeypatch, tmp_path, sqlite_url, compare_max_new_tokens="8", **settings)
        upgrade_head(get_settings().database_url)
        return add_chat_job_with_model(tiny_chat_lm_dir, tmp_path, f"{len(settings)}", state="running")

    return make


def add_chat_job_with_model(base: Path, tmp_path: Path, suffix: str, state: str) -> str:
    """A chat job in `state` on a dataset of the Q/A fixture, with its tuned model (a LoRA adapter
    of `base`) registered: what the comparison reads. Returns the job's id."""
    adapter = make_chat_adapter(base, tmp_path / f"adapter{suffix}", 1)
    with session_scope() as session:
        dataset = Dataset(name="qa", task="chat", format="csv", encoding="utf-8", text_column="Q",
                          label_columns=[], labels=[], sha256="0" * 64,
                          storage_path=str(_dataset(tmp_path / f"data{suffix}")))
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model=str(base), task="chat", state=state, hyperparameters={})
        session.add(job)
        session.flush()
        model = TunedModel(job_id=job.id, base_model=str(base), task="chat", labels=[],
                           metrics={}, max_seq_length=64, path=str(adapter))
        session.add(model)
        session.flush()
        job.model_id = model.id
        return str(job.id)


def _events(job_id: str, kind: str) -> list[JobEvent]:
    with session_scope() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
                               .order_by(JobEvent.id)).all()
        session.expunge_all()
        return list(rows)


def test_the_report_covers_the_whole_split_with_progress(chat_job: Any) -> None:
    from worker.families.chat.compare import compare_chat_job

    job_id = chat_job()
    report = compare_chat_job(job_id)
    assert report["prompts"] == report["prompts_in_split"] == VALIDATION_ROWS
    assert report["max_prompts"] is None and report["split"] == "validation"
    assert report["generation_s"] > 0
    assert set(report["base"]) == set(report["tuned"]) == {"bleu", "chrf", "cosine_similarity"}
    assert report["examples"][0]["base"] != report["examples"][0]["tuned"]  # the adapter changes replies
    progress = _events(job_id, "comparison_progress")
    assert progress and progress[-1].data["done"] == progress[-1].data["total"] == 2 * VALIDATION_ROWS
    assert all("eta_s" in e.data for e in progress)
    [summary] = _events(job_id, "comparison")
    assert f"on {VALIDATION_ROWS} validation prompts" in summary.message
    assert "s to generate" in summary.message
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.comparison["prompts"] == VALIDATION_ROWS


def test_a_cap_is_in_the_report_and_a_cancel_stops_it(chat_job: Any) -> None:
    from worker.families.chat.compare import compare_chat_job

    job_id = chat_job(compare_max_prompts="5")
    report = compare_chat_job(job_id)
    assert (report["prompts"], report["prompts_in_split"], report["max_prompts"]) == (5, VALIDATION_ROWS, 5)

    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, comparison=None))
    assert compare_chat_job(job_id) == {}
    [cancelled] = _events(job_id, "comparison_cancelled")
    assert f"POST /jobs/{job_id}/compare" in cancelled.message
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.comparison is None
