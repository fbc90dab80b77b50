"""`close_with_loop`: what registered itself is closed when asyncio.run ends its loop."""

from __future__ import annotations

import asyncio
import gc

from spark.lifetime import close_with_loop


class Resource:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def aclose(self) -> None:
        await asyncio.sleep(0)  # closing may await
        self.log.append(self.name)


def test_registered_objects_are_closed_in_order_at_loop_shutdown():
    log: list[str] = []
    keep: list[Resource] = []

    async def main() -> None:
        for name in ("first", "second"):
            res = Resource(log, name)
            keep.append(res)
            close_with_loop(res)
            close_with_loop(res)  # once per object however often registered
        assert log == []

    asyncio.run(main())
    assert log == ["first", "second"]


def test_no_task_is_added_and_collected_objects_are_skipped():
    log: list[str] = []

    async def main() -> None:
        before = asyncio.all_tasks()
        close_with_loop(Resource(log, "dropped"))  # no strong reference left
        gc.collect()
        assert asyncio.all_tasks() == before

    asyncio.run(main())
    assert log == []


def test_without_a_running_loop_it_is_a_no_op():
    close_with_loop(Resource([], "x"))
