"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, which `make test`
installs when it can) opens the page of a real finished job on the live service and the curves
must be drawn from its metric points; a running job's page must update from the event stream.
Screenshots are saved (wide and narrow) for people to look at."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.live_service import LiveService, cli

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed, so the dashboard cannot be opened in a browser: "
           "`make test` installs it with apt-get when it runs as root with apt; otherwise "
           "`apt-get install chromium` and run again",
)
# Screenshots land here (git-ignored), for a person to look at after the run.
ARTIFACTS = Path(os.environ.get("TUNESERVE_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))


def chromium(tmp_path: Path, url: str, *flags: str) -> str:
    """Load `url`, let its scripts fetch and render, and return stdout (the DOM for --dump-dom)."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--virtual-time-budget=15000", *flags, url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def paths(self) -> dict[str, dict[str, str]]:
        return {a["data-series"]: a for t, a in self.tags if t == "path" and "series" in a.get("class", "")}


def fmt_like_page(value: float) -> str:
    """A figure as the page's fmt() writes it (up to 4 decimals, no trailing zeros)."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _coordinates(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


@needs_chromium
def test_a_finished_jobs_page_draws_its_curves_in_chromium(live: LiveService, finished: dict[str, Any],
                                                           tmp_path: Path) -> None:
    job = finished["job"]
    assert job["state"] == "succeeded"
    metrics = json.loads(cli(live, "metrics", job["id"], "--json").output)
    page = f"{live.url}/#/jobs/{job['id']}"
    dom = Elements(chromium(tmp_path, page, "--dump-dom"))
    text = " ".join(dom.text)
    assert "Something went wrong" not in text, text[:2000]

    paths = dom.paths()
    # One line per series, with one vertex per metric point the API has.
    assert int(paths["train loss"]["data-points"]) == len(metrics["train"]) == 15
    assert int(paths["learning rate"]["data-points"]) == len(metrics["train"])
    assert int(paths["eval loss"]["data-points"]) == len(metrics["eval"]) == 3
    assert int(paths["f1_macro"]["data-points"]) == len(metrics["eval"])
    loss = _coordinates(paths["train loss"]["d"])
    assert len(loss) == 15
    assert [x for x, _ in loss] == sorted(x for x, _ in loss) and len({y for _, y in loss}) > 1
    # Learning rate decays linearly to zero (no warmup): the line goes down, left to right.
    rate = _coordinates(paths["learning rate"]["d"])
    assert rate[0][1] < rate[-1][1]  # SVG y grows downwards

    assert "Confusion matrix" in text and "true \\ predicted" in text
    confusion = [a for t, a in dom.tags if t == "td" and "cm" in a.get("class", "").split()]
    assert len(confusion) == 4  # two labels
    # A heat map: each cell shaded by its share of its true label's row (the rows sum to 1).
    shares = [float(a["data-share"]) for a in confusion]
    assert sum(shares[:2]) == pytest.approx(1, abs=0.002) and sum(shares[2:]) == pytest.approx(1, abs=0.002)
    assert all(a["style"].startswith("--share:") for a in confusion)
    comparison = metrics["comparison"]["splits"]["validation"]
    assert "Comparison: tuned vs " in text and "tfidf" in text and "majority" in text
    assert fmt_like_page(comparison["tuned"]["f1_macro"]) in text
    assert "Adaptive batch" in text and "batch_probe" in text
    for kind in ("queued", "claimed", "started", "model_ready", "succeeded"):
        assert kind in text
    charts = [a for t, a in dom.tags if t == "svg" and a.get("role") == "img"]
    assert any(a.get("aria-label", "").startswith("Loss. train loss: 15 points") for a in charts)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("dashboard-job.png", "1280,2200"), ("dashboard-job-narrow.png", "390,2800")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(tmp_path, page, f"--window-size={size}", f"--screenshot={shot}")
        assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_the_overview_and_the_dataset_page_with_its_validation_report(
    live: LiveService, finished: dict[str, Any], tmp_path: Path
) -> None:
    job = finished["job"]
    overview = Elements(chromium(tmp_path, f"{live.url}/", "--dump-dom"))
    links = {a.get("href") for t, a in overview.tags if t == "a"}
    assert f"#/jobs/{job['id']}" in links and f"#/datasets/{job['dataset_id']}" in links
    # Assets come from the service itself, never a CDN.
    sources = [a.get("src") or a.get("href") for t, a in overview.tags if t in {"script", "link"}]
    assert sources and all(s.startswith("/dashboard/static/") for s in sources)

    dataset_id = job["dataset_id"]
    found = httpx.get(f"{live.url}/datasets/{dataset_id}").json()
    dataset = Elements(chromium(tmp_path, f"{live.url}/#/datasets/{dataset_id}", "--dump-dom"))
    text = " ".join(dataset.text)
    for heading in ("Warnings", "Label distribution", "Rejected rows", "Validation report", "Preview",
                    "How the columns were chosen", "Text length (characters)",
                    "Overlap with the training split", "Files read"):
        assert heading in text, heading
    # The warnings as a list, one item each.
    items = [a for t, a in dataset.tags if t == "li"]
    assert len(items) >= len(found["warnings"]) > 0
    assert "also in the training split" in text  # the upload's warning about the overlap
    # One small bar per label and split, carrying the count the API reports.
    drawn = {(a["data-label"], int(a["data-count"])) for t, a in dataset.tags
             if t == "li" and "data-count" in a}
    expected = {(label, n) for counts in found["label_distribution"].values() for label, n in counts.items()}
    assert drawn == expected
    assert "{" not in text  # no raw JSON left on the page


def _save_screenshot(browser: Browser, name: str) -> Path:
    import base64

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    data = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    shot.write_bytes(base64.b64decode(data))
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return shot


# Every numeric header and the cells under it are right-aligned (a table's numeric columns).
NUMERIC_ALIGNMENT = """(() => {
  const bad = [];
  for (const th of document.querySelectorAll("table.stack th.num")) {
    if (getComputedStyle(th).textAlign !== "right") bad.push("th " + th.textContent);
  }
  for (const td of document.querySelectorAll("table.stack td.num")) {
    if (getComputedStyle(td).textAlign !== "right") bad.push("td " + td.dataset.label);
  }
  return JSON.stringify({heads: document.querySelectorAll("table.stack th.num").length, bad});
})()"""


@needs_chromium
def test_an_experiment_page_follows_its_jobs_then_shows_the_leaderboard(
    live: LiveService, finished: dict[str, Any], tmp_path: Path
) -> None:
    resp = httpx.post(f"{live.url}/experiments", json={
        "dataset_id": finished["job"]["dataset_id"], "name": "dashboard experiment",
        "base_models": [str(live.tiny_encoder_dir)],
        "hyperparameters": {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "warmup_ratio": 0}})
    assert resp.status_code == 201, resp.text
    experiment_id = resp.json()["id"]
    browser = Browser(tmp_path / "cdp-experiment")
    try:
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1400, deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.navigate", url=f"{live.url}/#/experiments/{experiment_id}")
        browser.wait_for("document.querySelector('h1 .badge') !== null")
        # Live while its job runs: the page reads the experiment again until it has ended.
        browser.wait_for("document.querySelector('h1 .badge').textContent === 'succeeded'", timeout_s=240)
        assert int(browser.evaluate("document.querySelector('[data-refreshes]').dataset.refreshes")) >= 1
        body = httpx.get(f"{live.url}/experiments/{experiment_id}").json()
        browser.wait_for("document.querySelectorAll('#board-h + div table tbody tr').length >= 3")
        text = browser.evaluate("document.getElementById('main').innerText")
        for heading in ("Recommendation", "Leaderboard", "Jobs (1)"):
            assert heading in text, heading
        assert body["recommendation"]["message"] in text
        names = browser.evaluate("[...document.querySelectorAll('#board-h + div tbody tr td:nth-child(2)')]"
                                 ".map((td) => td.innerText.trim())")
        assert names == [row["name"] for row in body["leaderboard"]]
        job_id = body["jobs"][0]["job_id"]
        assert browser.evaluate(f"!!document.querySelector('a[href=\"#/jobs/{job_id}\"]')")
        alignment = json.loads(browser.evaluate(NUMERIC_ALIGNMENT))
        # rank, the metric, test, time, samples/s, parameters; each job's step and ETA
        assert alignment["heads"] == 8 and alignment["bad"] == [], alignment
        _save_screenshot(browser, "dashboard-experiment.png")
    finally:
        browser.close()


@needs_chromium
def test_at_phone_width_no_page_scrolls_sideways(live: LiveService, finished: dict[str, Any],
                                                 tmp_path: Path) -> None:
    job = finished["job"]
    experiments = httpx.get(f"{live.url}/experiments").json()["data"]
    # Each page by its fragment and the start of its title (a hash change keeps the document:
    # the test waits for the new page's own heading, not the one before it).
    pages = {"overview": ("#/", "Overview"), "job": (f"#/jobs/{job['id']}", "Job "),
             "dataset": (f"#/datasets/{job['dataset_id']}", "Dataset ")}
    if experiments:
        pages["experiment"] = (f"#/experiments/{experiments[0]['id']}", "Experiment ")
    browser = Browser(tmp_path / "cdp-narrow")
    try:
        browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2,
                     mobile=True)
        for name, (fragment, title) in pages.items():
            browser.call("Page.navigate", url=f"{live.url}/{fragment}")
            browser.wait_for(f"(document.querySelector('#main h1')?.textContent || '').startsWith({title!r})")
            browser.wait_for("document.querySelectorAll('#main table').length > 0")
            width = browser.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (name, width)
            # Nothing drawn past the right edge (a card table's header row is there for screen
            # readers only, clipped to one pixel).
            wide = browser.evaluate("[...document.querySelectorAll('#main *')].filter((e) => "
                                    "!e.closest('table.stack thead') && "
                                    "e.getBoundingClientRect().right > 391)"
                                    ".map((e) => e.tagName + '.' + e.className).slice(0, 5)")
            assert wide == [], (name, wide)
            # The text and every table: Hangul has a font to be drawn in (fonts-noto-cjk in the image).
            family = browser.evaluate("getComputedStyle(document.body).fontFamily")
            assert "Noto Sans KR" in family and "Malgun Gothic" in family and "Apple SD Gothic Neo" in family
            _save_screenshot(browser, f"dashboard-{name}-390.png")
    finally:
        browser.close()


@needs_chromium
def test_a_chat_jobs_page_has_no_confusion_matrix_section(live: LiveService, tmp_path: Path) -> None:
    from tests.conftest import FIXTURES

    with (FIXTURES / "korean_chatbot_qa_slice.csv").open("rb") as fh:
        dataset = httpx.post(f"{live.url}/datasets", files={"file": ("chat.csv", fh)}, data={"task": "chat"},
                             timeout=60)
    assert dataset.status_code == 201, dataset.text
    created = httpx.post(f"{live.url}/jobs", json={"dataset_id": dataset.json()["id"],
                                                   "base_model": str(live.tiny_encoder_dir)}, timeout=60)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    httpx.post(f"{live.url}/jobs/{job_id}/cancel")  # the page is what is tested, not the training
    browser = Browser(tmp_path / "cdp-chat")
    try:
        browser.call("Page.navigate", url=f"{live.url}/#/jobs/{job_id}")
        browser.wait_for("document.getElementById('events-h') !== null")
        text = browser.evaluate("document.getElementById('main').innerText")
        assert "Curves" in text and "Events" in text
        assert "Confusion matrix" not in text and "Per-class" not in text
        assert "null" not in text.split() and "undefined" not in text  # a left-out section leaves no trace
        assert browser.evaluate("document.getElementById('cm-h') === null")
        chat_dataset = httpx.get(f"{live.url}/datasets/{dataset.json()['id']}").json()
        browser.call("Page.navigate", url=f"{live.url}/#/datasets/{chat_dataset['id']}")
        browser.wait_for("document.getElementById('report-h') !== null")
        text = browser.evaluate("document.getElementById('main').innerText")
        assert "Label distribution" not in text and "null" not in text.split()
        assert any("\uac00" <= ch <= "\ud7a3" for ch in text)  # the Korean preview, in Hangul
        _save_screenshot(browser, "dashboard-chat-dataset.png")
    finally:
        browser.close()


class Browser:
    """Headless Chromium driven over the DevTools protocol, for a page whose content keeps
    arriving (--dump-dom takes one snapshot at a moment the test cannot choose)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it took here
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        self.connection = ExitStack()
        self.ws = self.connection.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.calls = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.calls:
                assert "error" not in message, message
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"still false after {timeout_s}s: {expression}"
            time.sleep(0.2)
        return value

    def close(self) -> None:
        self.connection.close()
        self.proc.terminate()
        self.proc.wait(timeout=15)


TRAIN_POINTS = "Number(document.querySelector('path[data-series=\"train loss\"]')?.dataset.points || 0)"
LIVE_EVENTS = "Number(document.querySelector('[data-live-events]')?.dataset.liveEvents || 0)"


@needs_chromium
def test_a_running_jobs_page_updates_from_the_event_stream(live: LiveService, finished: dict[str, Any],
                                                           tmp_path: Path) -> None:
    created = cli(live, "jobs", "create", "--dataset", finished["job"]["dataset_id"], "--base-model",
                  str(live.tiny_encoder_dir), "--epochs", "100", "--batch-size", "8",
                  "--max-seq-length", "32", "--set", "logging_steps=1", "--set", "learning_rate=auto",
                  "--json")
    assert created.exit_code == 0, created.output
    job_id = json.loads(created.output)["id"]
    browser = Browser(tmp_path / "cdp-profile")
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{live.url}/jobs/{job_id}").json()["step"] < 1:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        browser.call("Page.navigate", url=f"{live.url}/#/jobs/{job_id}")
        first = browser.wait_for(TRAIN_POINTS)
        # Points the worker writes after the page loaded reach the curve over the stream.
        browser.wait_for(f"{TRAIN_POINTS} > {first}")
        assert browser.wait_for(LIVE_EVENTS) >= 1
        assert "running" in browser.evaluate("document.querySelector('h1 .badge').textContent")

        # learning_rate "auto": the range test's curve, loss against the rate on a log axis, the
        # chosen rate marked between the lowest and highest rate tried.
        (test,) = [e for e in httpx.get(f"{live.url}/jobs/{job_id}/events").json()
                   if e["kind"] == "lr_range_test"]
        chart = browser.evaluate("""(() => {
            const svg = document.querySelector('[data-chart="lr-range"] svg');
            const path = svg.querySelector('path[data-series="smoothed loss"]');
            const mark = svg.querySelector('line.mark');
            const xs = [...path.getAttribute('d').matchAll(/[ML](-?[0-9.]+),/g)].map((m) => Number(m[1]));
            return JSON.stringify({scale: svg.dataset.xScale, points: Number(path.dataset.points), xs,
                                   markX: Number(mark.getAttribute('x1')), chosen: Number(mark.dataset.x),
                                   label: mark.dataset.mark});
        })()""")
        chart = json.loads(chart)
        assert chart["scale"] == "log" and chart["points"] == len(test["data"]["lrs"]) > 2
        assert chart["chosen"] == pytest.approx(test["data"]["chosen"])
        assert chart["label"].startswith("chosen ")
        assert chart["xs"] == sorted(chart["xs"]) and chart["xs"][0] <= chart["markX"] <= chart["xs"][-1]
        # Log spacing: the range test's rates grow geometrically, so its points are evenly spaced.
        gaps = [b - a for a, b in zip(chart["xs"], chart["xs"][1:], strict=False)]
        assert max(gaps) - min(gaps) < 1.0
    finally:
        browser.close()
        cli(live, "jobs", "cancel", job_id)
