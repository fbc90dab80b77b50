"""Item 1: worker processes SIGKILLed under load; every request answered exactly once."""

from __future__ import annotations

import pytest

from support.lab import crash_scenario, report

pytestmark = pytest.mark.timeout(180)


async def test_sigkill_two_of_three_workers_under_load(redis_url):
    figures, violations = await crash_scenario(redis_url, requests=2000, kills=2)
    report("worker_crash", **figures)
    assert violations == []
    assert figures["lost"] == 0 and figures["duplicated"] == 0
