"""A worker host whose wall clock is `LAB_CLOCK_SKEW` seconds ahead of everyone else's.

Used as a `spark-worker` target (`support.skewed:LabRpcNode`): importing it shifts
`time.time` for the whole worker process, as a host with a wrong clock would.
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ.get("LAB_CLOCK_SKEW", "0"))
_real_time = time.time


def _skewed_time() -> float:
    return _real_time() + _SKEW


time.time = _skewed_time

from support.services import LabRpcNode  # noqa: E402

__all__ = ["LabRpcNode"]
