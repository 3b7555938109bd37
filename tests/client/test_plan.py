"""`tuneserve plan`: through the server (the in-process app) and --local, printing each term, the
free memory and each choice; exit 3 when nothing fits."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.app.test_plan import llama_8b_dir  # noqa: F401 - the fixture
from tests.conftest import configure


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_plan_prints_the_terms_and_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str,
                                           llama_8b_dir: Path) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(monkeypatch, tmp_path, database_url)
    runner = CliRunner()
    with TestClient(create_app()) as http:
        fits = runner.invoke(app, ["plan", "--base-model", str(llama_8b_dir), "--gpu-memory", "8",
                                   "--max-seq-length", "512", "--finetuning", "lora"], obj=http)
        assert fits.exit_code == 0, fits.output
        for words in ("fits: 4-bit NF4", "weights", "gradients", "optimizer", "activations", "total",
                      "free             8.00 GiB", "quantization: 4bit - bf16 needs",
                      "gradient_checkpointing: True - on from the start"):
            assert words in fits.output, words
        refused = runner.invoke(app, ["plan", "--base-model", str(llama_8b_dir), "--gpu-memory", "8",
                                      "--quantization", "none"], obj=http)
        assert refused.exit_code == 3 and "does not fit" in refused.output
        bad = runner.invoke(app, ["plan", "--base-model", "/no/such/dir", "--gpu-memory", "8"], obj=http)
        assert bad.exit_code == 1 and "HTTP 422" in bad.output

    local = runner.invoke(app, ["plan", "--base-model", str(llama_8b_dir), "--gpu-memory", "8", "--local",
                                "--json"])
    assert local.exit_code == 0, local.output
    assert '"quantization": "4bit"' in local.output
