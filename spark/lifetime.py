"""Close what a client opened when its event loop ends, whether or not `aclose()` was called.

Nobody closes proxies by hand in a short script (`asyncio.run(main())` with one call), so
every object that opens sockets or starts tasks (proxies, transports, broker clients)
registers itself with `close_with_loop(obj)`. At loop shutdown `asyncio.run` (and
`asyncio.Runner`, and pytest-asyncio) first cancels every task, then finalizes the async
generators the loop tracks (`loop.shutdown_asyncgens()`); one such generator per loop
awaits `aclose()` of every registered object still alive, in registration order, so
nothing is left for `__del__` to warn about once the loop is closed.

An async generator rather than a guard task: it adds no pending task to the loop (nothing
shows in `asyncio.all_tasks()`, nothing is "destroyed but pending" when a loop is closed
without the shutdown steps), and it runs after the tasks were cancelled, so what it closes
is already quiet. Registration holds only weak references: an object collected earlier is
simply skipped.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator
from typing import Any, Protocol

log = logging.getLogger("spark.lifetime")

#: How long one object's aclose() may take at loop shutdown.
CLOSE_TIMEOUT = 5.0


class Closable(Protocol):
    async def aclose(self) -> None: ...


class _Closer:
    def __init__(self) -> None:
        self._owned: dict[int, weakref.ref[Any]] = {}
        self.agen = self._run()

    def add(self, obj: Closable) -> None:
        key = id(obj)
        if key not in self._owned:
            self._owned[key] = weakref.ref(obj, lambda _ref, key=key: self._owned.pop(key, None))

    async def _run(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self._close_all()

    async def _close_all(self) -> None:
        while self._owned:
            _key, ref = next(iter(self._owned.items()))
            self._owned.pop(_key, None)
            obj = ref()
            if obj is None:
                continue
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await obj.aclose()
            except Exception as exc:  # shutting down: report, and close the rest
                log.debug("closing %r at loop shutdown failed: %r", obj, exc)


# Keyed weakly by loop; a _Closer never references its loop, so the entry goes with it.
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Closer] = (
    weakref.WeakKeyDictionary()
)


def close_with_loop(obj: Closable) -> None:
    """Have `obj.aclose()` awaited when the running loop shuts down (no-op without a loop).

    Idempotent per object; `aclose()` must be safe to call again after a user's own call.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    closer = _closers.get(loop)
    if closer is None:
        closer = _closers[loop] = _Closer()
        # Step the generator to its `yield` without awaiting: asend() runs the loop's
        # first-iteration hook, which is what makes shutdown_asyncgens() finalize it.
        step = closer.agen.asend(None)
        try:
            step.send(None)
        except StopIteration:
            pass
    closer.add(obj)
