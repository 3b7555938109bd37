"""The chat pages of the dashboard in headless Chromium, on the live service and a real chat job
(the tiny random Llama, LoRA): the job page shows the base-vs-tuned report (BLEU, chrF, cosine,
example replies side by side), and the model's playground streams a reply from /generate into
the conversation box, the same reply the API gives."""

from __future__ import annotations

import html
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import FIXTURES
from tests.integration.conftest import wait_for_job
from tests.integration.live_service import LiveService
from tests.integration.test_dashboard import CHROMIUM, chromium, needs_chromium

pytestmark = pytest.mark.slow

SYSTEM_PROMPT = "친절하게 답하세요"


@pytest.fixture(scope="module")
def chat_job(live: LiveService, tiny_chat_lm_dir: Path) -> dict[str, Any]:
    with httpx.Client(base_url=live.url, timeout=60) as client, \
            (FIXTURES / "korean_chatbot_qa_slice.csv").open("rb") as fh:
        uploaded = client.post("/datasets", files={"file": ("qa.csv", fh)}, data={"task": "chat"})
        assert uploaded.status_code == 201, uploaded.text
        hyperparameters = {"max_steps": 4, "batch_size": 8, "max_seq_length": 64, "warmup_ratio": 0.0,
                           "system_prompt": SYSTEM_PROMPT}
        job_in = {"dataset_id": uploaded.json()["id"], "base_model": str(tiny_chat_lm_dir),
                  "hyperparameters": hyperparameters}
        created = client.post("/jobs", json=job_in)
        assert created.status_code == 201, created.text
        job = wait_for_job(client, created.json()["id"], {"succeeded", "failed", "cancelled"},
                           worker=live.worker)
        assert job["state"] == "succeeded", job["error"]
        return {"job": job, "comparison": client.get(f"/jobs/{job['id']}/metrics").json()["comparison"]}


def chromium_until(tmp_path: Path, url: str, condition: str, timeout_s: float = 90) -> str:
    """Open `url` in headless Chromium, wait until the JavaScript `condition` holds and return the
    DOM then. Over the DevTools protocol: --dump-dom does not wait for a streamed fetch's body."""
    from websockets.sync.client import connect

    assert CHROMIUM is not None
    profile = tmp_path / "chromium-devtools"
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                "--disable-dev-shm-usage", "--remote-debugging-port=0",
                                f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        port_file = profile / "DevToolsActivePort"
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and browser.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        [target] = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 1_000_000))

            def call(method: str, **params: Any) -> Any:
                call_id = next(calls)
                ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
                while True:
                    answer = json.loads(ws.recv())
                    if answer.get("id") == call_id:
                        return answer.get("result", {}).get("result", {}).get("value")

            call("Page.navigate", url=url)
            while not call("Runtime.evaluate", expression=f"Boolean({condition})", returnByValue=True):
                assert time.monotonic() < deadline, f"{condition} never held"
                time.sleep(0.2)
            return str(call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                            returnByValue=True))
    finally:
        browser.terminate()
        browser.wait(15)


def _page_text(dom: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


@needs_chromium
def test_a_chat_jobs_page_shows_the_base_vs_tuned_report(live: LiveService, chat_job: dict[str, Any],
                                                         tmp_path: Path) -> None:
    job, comparison = chat_job["job"], chat_job["comparison"]
    dom = chromium(tmp_path, f"{live.url}/#/jobs/{job['id']}", "--dump-dom")
    assert 'id="chat-report"' in dom, dom[-3000:]
    report = dom[dom.index('id="chat-report"'):]
    text = _page_text(report)
    assert f"BLEU ({comparison['bleu_tokenize']})" in text and "chrF" in text and "cosine (MiniLM)" in text
    assert f"{comparison['prompts']} of {comparison['prompts_in_split']}" in text
    example = comparison["examples"][0]
    for field in ("prompt", "reference"):
        assert example[field] in text, field
    assert "Confusion matrix" not in _page_text(dom)  # a classifier's section, not a chat job's
    # The train points' token accuracy is drawn beside the evaluation's.
    chart = dom[dom.index('data-chart="eval"'):]
    legend = _page_text(chart[:chart.index("</figcaption>")])
    assert "train token_accuracy" in legend and legend.count("token_accuracy") == 2, legend  # eval's, train's


@needs_chromium
def test_the_playground_streams_a_reply_into_the_conversation(live: LiveService, chat_job: dict[str, Any],
                                                             tmp_path: Path) -> None:
    model_id = chat_job["job"]["model_id"]
    message = "12시 땡!"
    expected = httpx.post(f"{live.url}/generate", timeout=60, json={
        "model_id": model_id, "messages": [{"role": "user", "content": message}], "temperature": 0,
        "max_new_tokens": 12}).json()["message"]["content"]
    page = f"{live.url}/#/models/{model_id}?say={quote(message)}&temperature=0&max_new_tokens=12"
    answered = "document.querySelector('li[data-role=assistant][data-finish-reason]')"
    dom = chromium_until(tmp_path, page, answered)
    text = _page_text(dom)
    assert SYSTEM_PROMPT in text  # the system prompt the model was tuned with is shown
    turn = re.search(r'<li[^>]*data-role="assistant"[^>]*>.*?</li>', dom, re.S)
    assert turn is not None, dom[-3000:]
    attrs = turn.group(0)[:turn.group(0).index(">")]
    streamed = int(re.search(r'data-streamed-tokens="(\d+)"', attrs).group(1))  # type: ignore[union-attr]
    assert streamed >= 1, attrs  # pieces arrived one by one before the final message
    assert re.search(r'data-finish-reason="(stop|length)"', attrs), attrs
    body = re.search(r'class="chat-text">(.*?)</span>', turn.group(0), re.S)
    assert body is not None
    reply = html.unescape(body.group(1))
    assert reply == expected  # greedy: the API's own reply
