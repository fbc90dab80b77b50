"""The README's "Ten lines", run the way it says: a `spark-worker` in one process, the
script in another, meeting on a real Redis; the script prints the answer and exits with
nothing on stderr (warnings as errors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.processes import WorkerProcess, env

ROOT = Path(__file__).resolve().parents[2]


def test_ten_lines_runs_as_a_script(redis_url):
    worker = WorkerProcess(
        "examples.ten_lines:AnalysisRpcNode", redis_url, service="analysis", cwd=str(ROOT)
    )
    try:
        worker.wait_ready()
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error", "examples/ten_lines.py"],
            cwd=ROOT,
            env={**env(), "SPARK_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        worker.stop()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'words': 6, 'success': True}"
    noise = [line for line in proc.stderr.splitlines() if not line.startswith("Executing <")]
    assert noise == [], proc.stderr
