"""benchmarks/gpu_check.sh in its CPU smoke mode: every step runs end to end (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_cpu_smoke_runs_every_step_and_reports(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT": "880", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "cpu" and report["ok"]
    backends = report["steps"]["exactness"]["backends"]
    assert backends["dense"]["status"] == backends["segment"]["status"] == "exact"
    assert backends["flex"] == {**backends["flex"], "status": "exact", "checked": "rewards (forward only)"}
    assert backends["varlen"]["status"] == "skipped" and "CUDA" in backends["varlen"]["why"]
    speed = report["steps"]["speed"]
    assert set(speed["runs"]) == {"TRL", "rayreward"}
    # packing computes fewer tokens per pair than TRL's padded batches
    assert speed["runs"]["rayreward"]["tokens computed/pair"] < speed["runs"]["TRL"]["tokens computed/pair"]
    for stage in ("zero2", "zero3"):
        assert report["steps"][stage]["ok"] and report["steps"][stage]["scored"] > 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| segment | exact |" in markdown and "DeepSpeed ZeRO-3" in markdown
    assert "ray" not in {m.split(".")[0] for m in _imported_by_check()}


def _imported_by_check() -> list[str]:
    """Modules the check's own code imports (the Ray-free promise)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check, _trl_run, _measure; "
            "import rayreward.core.trainer, rayreward.core.checkpoint, rayreward.evaluation.scorer, "
            "rayreward.core.attention; print('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return out.stdout.split()
