"""bench/gpu_check.py --tiny: every check of the GPU check runs on the CPU through the service's
own loop, so the script a GPU run needs cannot rot unnoticed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 4 minutes on a busy 2-core CPU


def test_the_tiny_gpu_check_runs_every_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import gpu_check

    out = tmp_path / "rows.json"
    code = gpu_check.main(["--tiny", "--out", str(out)])
    rows = {(r["check"], r["model"]): r for r in json.loads(out.read_text())}
    assert code == 0, rows
    assert [r[0] for r in rows] == ["plan_vs_peak", "probe_vs_max", "probe_vs_max", "oom_recovery",
                                    "bf16_vs_fp32"]
    plan = rows[("plan_vs_peak", "tiny Llama")]["data"]
    assert plan["steps"] == 4 and plan["plan_gib"] > 0 and plan["choice"]["quantization"] == "none"
    for model in ("tiny BERT", "tiny Llama"):  # the injected limit is 37; 36 divides 720
        assert rows[("probe_vs_max", model)]["data"] == {"probed": 36, "largest": 37,
                                                        "sequence_length": 32 if "BERT" in model else 64}
    oom = rows[("oom_recovery", "MiniLM, fp32")]["data"]
    assert oom["recoveries"] == 1 and oom["max_abs_diff"] <= 1e-5
    losses = rows[("bf16_vs_fp32", "MiniLM")]["data"]
    assert len(losses["fp32"]) == len(losses["bf16"]) == 20
    assert "GPU check on CPU (--tiny)" in capsys.readouterr().out
