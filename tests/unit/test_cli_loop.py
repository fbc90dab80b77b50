"""`--loop asyncio|uvloop` on spark-worker and spark-edge: the loop the process runs on."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from spark.cli import edge, worker
from spark.cli.common import run


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_is_always_available():
    assert run(loop_module(), "asyncio").startswith("asyncio")


def test_uvloop_when_installed_else_a_clear_error():
    if importlib.util.find_spec("uvloop") is not None:
        assert run(loop_module(), "uvloop").startswith("uvloop")
        assert run(loop_module(), None).startswith("uvloop")  # the default when installed
    else:
        with pytest.raises(SystemExit, match=r"spark-rpc\[speed\]"):
            run(loop_module(), "uvloop")
        assert run(loop_module(), None).startswith("asyncio")


def test_both_console_scripts_take_the_option():
    assert edge.parser().parse_args(["--loop", "asyncio"]).loop == "asyncio"
    args = worker.parser().parse_args(["mod:Cls", "--loop", "uvloop"])
    assert args.loop == "uvloop"
    with pytest.raises(SystemExit):
        edge.parser().parse_args(["--loop", "trio"])
