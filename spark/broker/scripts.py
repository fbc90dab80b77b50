"""Lua scripts, kept in `lua/*.lua` and registered once per client."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


@cache
def source(name: str) -> str:
    return resources.files("spark.broker").joinpath("lua", f"{name}.lua").read_text()


def script(redis: aioredis.Redis, name: str) -> AsyncScript:
    # register_script only hashes the source; EVALSHA falls back to EVAL on NOSCRIPT
    # (after a Redis restart), so holding one per client is enough.
    return redis.register_script(source(name))
