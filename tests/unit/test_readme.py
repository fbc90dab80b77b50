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
    setup, _, last = code.rstrip().rpartition("\n")
    assert last.startswith("result = await ")
    namespace: dict = {}
    exec(compile(setup, "README.md", "exec"), namespace)
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(namespace["AnalysisRpcNode"](), stop=stop, ready=ready))
    await ready.wait()
    try:
        expression = last.removeprefix("result = await ").split("#")[0]
        result = await eval(expression, namespace)
        assert result.content["words"] == 6
        assert result.content["success"] is True
    finally:
        await namespace["analysis"].aclose()
        stop.set()
        await worker
