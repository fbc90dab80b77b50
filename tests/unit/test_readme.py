"""The README's example runs as written, on the embedded broker."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from spark.runtime.worker import run_worker

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text()
    section = text[text.index("## Ten lines") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_readme_example_runs(monkeypatch, memory_url):
    monkeypatch.setenv("SPARK_REDIS_URL", memory_url)
    code = example()
    lines = code.rstrip().splitlines()
    setup, last, check = "\n".join(lines[:-2]), lines[-2], lines[-1]
    assert last.startswith("result = await ") and check.startswith("assert ")
    namespace: dict = {}
    exec(compile(setup, "README.md", "exec"), namespace)
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(namespace["AnalysisRpcNode"](), stop=stop, ready=ready))
    await ready.wait()
    try:
        namespace["result"] = await eval(last.removeprefix("result = await "), namespace)
        exec(check, namespace)
        result = namespace["result"]
        assert result.content["success"] is True
    finally:
        await namespace["analysis"].aclose()
        stop.set()
        await worker
