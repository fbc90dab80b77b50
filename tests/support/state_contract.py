"""The GraphState contract, run against every backend.

A test module subclasses `StateContract` and provides a `backends` fixture: a `Backends`
factory whose every call returns a new handle on the same storage (the same MemoryBackend,
a new SQLiteBackend on the same file, a new RedisBackend on the same URL and namespace).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable

import pytest

from spark.state import (
    GraphState,
    MemoryBackend,
    RedisBackend,
    SQLiteBackend,
    StateBackend,
    StateClosedError,
    StateEncodeError,
    StateError,
    StateTypeError,
)

_unique = itertools.count()


class Backends:
    """Makes handles on one storage; `aclose()` closes all of them."""

    def __init__(self, make: Callable[[], StateBackend]):
        self._make = make
        self.made: list[StateBackend] = []

    def __call__(self) -> StateBackend:
        backend = self._make()
        self.made.append(backend)
        return backend

    async def aclose(self) -> None:
        for backend in self.made:
            await backend.aclose()

    @classmethod
    def memory(cls) -> Backends:
        shared = MemoryBackend()
        return cls(lambda: shared)

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], namespace: str = "default") -> Backends:
        return cls(lambda: SQLiteBackend(path, namespace))

    @classmethod
    def redis(cls, url: str, namespace: str | None = None, **kwargs) -> Backends:
        ns = namespace or f"contract-{os.getpid()}-{next(_unique)}"
        return cls(lambda: RedisBackend(url, namespace=ns, **kwargs))


class StateContract:
    """Every backend must pass these; subclasses provide the `backends` fixture."""

    @pytest.fixture
    def state(self, backends: Backends) -> GraphState:
        return GraphState(backend=backends())

    # -- get / set -------------------------------------------------------------------------

    async def test_missing_key_gives_default(self, state):
        assert await state.get("nope") is None
        assert await state.get("nope", 42) == 42
        assert not await state.has("nope")

    @pytest.mark.parametrize(
        "value",
        [0, -7, 2**62, 3.25, "héllo ✓", "", True, False, None, [1, "a", None], {"a": {"b": [1]}}],
    )
    async def test_json_values_round_trip(self, state, value):
        await state.set("k", value)
        assert await state.get("k", "default") == value
        assert await state.has("k")

    async def test_set_overwrites(self, state):
        await state.set("k", 1)
        await state.set("k", {"now": "a dict"})
        assert await state.get("k") == {"now": "a dict"}

    async def test_tuples_come_back_as_lists(self, state):
        await state.set("k", (1, 2))
        assert await state.get("k") == [1, 2]

    async def test_returned_values_are_copies(self, state):
        await state.set("k", {"items": [1]})
        got = await state.get("k")
        got["items"].append(2)
        assert await state.get("k") == {"items": [1]}

    async def test_stored_values_are_copies(self, state):
        value = {"items": [1]}
        await state.set("k", value)
        value["items"].append(2)
        assert await state.get("k") == {"items": [1]}

    @pytest.mark.parametrize("bad", [{1, 2}, object(), {"nested": b"bytes"}, 2**64])
    async def test_unencodable_value_is_a_clear_error_and_writes_nothing(self, state, bad):
        await state.set("k", "before")
        with pytest.raises(StateEncodeError, match="'k'"):
            await state.set("k", bad)
        assert await state.get("k") == "before"

    async def test_encode_error_is_a_type_error_and_a_state_error(self, state):
        with pytest.raises(TypeError):
            await state.set("k", {1, 2})
        with pytest.raises(StateError):
            await state.set("k", {1, 2})

    @pytest.mark.parametrize("key", [1, None, b"bytes", ("a",)])
    async def test_keys_must_be_str(self, state, key):
        with pytest.raises(StateEncodeError, match="str"):
            await state.set(key, 1)
        with pytest.raises(StateEncodeError):
            await state.get(key)

    async def test_invalid_json_in_storage_is_a_decode_error(self, state):
        from spark.state import StateDecodeError

        await state.backend.write({"raw": b"not json"})
        with pytest.raises(StateDecodeError, match="raw"):
            await state.get("raw")

    # -- update / delete / has / keys ------------------------------------------------------

    async def test_update_sets_several_keys(self, state):
        await state.set("a", 0)
        await state.update({"a": 1, "b": [2]}, c="three")
        assert await state.get_snapshot() == {"a": 1, "b": [2], "c": "three"}
        await state.update({})

    async def test_update_with_one_bad_value_writes_nothing(self, state):
        await state.set("a", "before")
        with pytest.raises(StateEncodeError, match="'bad'"):
            await state.update({"a": "after", "new": 1, "bad": {1}})
        assert await state.get_snapshot() == {"a": "before"}

    async def test_delete(self, state):
        await state.set("a", 1)
        assert await state.delete("a") is True
        assert await state.delete("a") is False
        assert await state.get("a") is None
        assert not await state.has("a")

    async def test_has_sees_none_values(self, state):
        await state.set("a", None)
        assert await state.has("a")
        assert await state.get("a", "default") is None

    async def test_keys(self, state):
        assert await state.keys() == []
        await state.update({"b": 1, "a": 2, "c": 3})
        await state.delete("c")
        assert sorted(await state.keys()) == ["a", "b"]

    async def test_snapshot_is_a_plain_copy(self, state):
        await state.update({"a": {"x": 1}, "b": [1]})
        snap = await state.get_snapshot()
        assert type(snap) is dict
        assert snap == {"a": {"x": 1}, "b": [1]}
        snap["a"]["x"] = 2
        snap["new"] = 1
        assert await state.get_snapshot() == {"a": {"x": 1}, "b": [1]}

    # -- increment ---------------------------------------------------------------------------

    async def test_increment_starts_at_zero(self, state):
        assert await state.increment("n") == 1
        assert await state.increment("n", 5) == 6
        assert await state.increment("n", -10) == -4
        assert await state.get("n") == -4
        assert await state.increment("m", 0) == 0
        assert await state.get("m") == 0

    async def test_increment_is_exact_on_large_counters(self, state):
        await state.set("n", 2**62 + 1)
        assert await state.increment("n", 2) == 2**62 + 3
        assert await state.get("n") == 2**62 + 3

    @pytest.mark.parametrize("value", ["5", 1.5, 1.0, True, None, [1], {"a": 1}])
    async def test_increment_on_non_integer_raises_and_keeps_the_value(self, state, value):
        await state.set("k", value)
        with pytest.raises(StateTypeError, match="integer"):
            await state.increment("k")
        assert await state.get("k") == value

    @pytest.mark.parametrize("by", [1.5, "1", True, None, 2**63])
    async def test_increment_amount_must_be_an_int64(self, state, by):
        with pytest.raises(StateTypeError):
            await state.increment("k", by)
        assert not await state.has("k")

    async def test_increment_overflow_raises(self, state):
        await state.set("k", 2**63 - 1)
        with pytest.raises(StateTypeError):
            await state.increment("k")
        assert await state.get("k") == 2**63 - 1

    async def test_concurrent_increments_are_atomic(self, backends):
        states = [GraphState(backend=backends()) for _ in range(4)]
        await asyncio.gather(*(s.increment("n") for _ in range(50) for s in states))
        assert await states[0].get("n") == 200

    # -- initial_state ---------------------------------------------------------------------

    async def test_initial_state(self, backends):
        state = GraphState({"a": 1, "b": {"c": [2]}}, backend=backends())
        assert await state.get_snapshot() == {"a": 1, "b": {"c": [2]}}

    async def test_initial_state_only_fills_absent_keys(self, backends):
        first = GraphState(backend=backends())
        await first.set("a", "written")
        second = GraphState({"a": "initial", "b": "initial"}, backend=backends())
        assert await second.get("a") == "written"
        assert await second.get("b") == "initial"
        assert await first.get("b") == "initial"

    async def test_initial_state_can_be_given_in_a_sync_constructor(self, backends):
        class Service:
            def __init__(self):
                self.graph_state = GraphState({"count": 0}, backend=backends())

        service = Service()
        assert await service.graph_state.increment("count") == 1

    def test_initial_state_is_encoded_at_construction(self, backends):
        with pytest.raises(StateEncodeError):
            GraphState({"bad": {1, 2}}, backend=backends())

    # -- shared storage --------------------------------------------------------------------

    async def test_handles_on_one_storage_see_each_others_writes(self, backends):
        one, two = GraphState(backend=backends()), GraphState(backend=backends())
        await one.set("k", "from one")
        assert await two.get("k") == "from one"
        await two.set("k", "from two")
        assert await one.get("k") == "from two"
        async with two.transaction() as tx:
            tx["t"] = 1
        assert await one.get("t") == 1
        await one.delete("k")
        assert not await two.has("k")

    # -- transactions ----------------------------------------------------------------------

    async def test_transaction_commits_on_exit(self, state):
        await state.set("n", 1)
        async with state.transaction() as tx:
            tx["n"] = tx["n"] + 1
            tx["new"] = {"a": 1}
            assert await state.get("n") == 1  # not committed yet
        assert await state.get_snapshot() == {"n": 2, "new": {"a": 1}}

    async def test_transaction_is_dict_like_and_sees_its_own_writes(self, state):
        await state.update({"a": 1, "b": 2, "gone": 3})
        async with state.transaction() as tx:
            assert tx.get("a") == 1 and tx.get("missing") is None and tx.get("missing", 0) == 0
            assert "a" in tx and "missing" not in tx and 1 not in tx
            del tx["gone"]
            assert "gone" not in tx
            with pytest.raises(KeyError):
                tx["gone"]
            with pytest.raises(KeyError):
                del tx["missing"]
            tx["c"] = 3
            tx["a"] = 10
            assert tx["a"] == 10 and tx["c"] == 3
            assert sorted(tx) == ["a", "b", "c"]
            assert len(tx) == 3
            assert dict(tx) == {"a": 10, "b": 2, "c": 3}
            assert sorted(tx.items()) == [("a", 10), ("b", 2), ("c", 3)]
            tx.setdefault("d", 4)
            assert tx.pop("b") == 2
        assert await state.get_snapshot() == {"a": 10, "c": 3, "d": 4}

    async def test_delete_then_set_again_in_a_transaction(self, state):
        await state.set("a", 1)
        async with state.transaction() as tx:
            del tx["a"]
            tx["a"] = 2
        assert await state.get("a") == 2

    async def test_in_place_mutations_are_committed(self, state):
        await state.set("items", [1])
        async with state.transaction() as tx:
            tx["items"].append(2)
            tx.setdefault("log", []).append("x")
        assert await state.get("items") == [1, 2]
        assert await state.get("log") == ["x"]

    async def test_raising_transaction_changes_nothing(self, state):
        await state.update({"n": 1, "keep": "me"})

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with state.transaction() as tx:
                tx["n"] = 100
                tx["new"] = 1
                del tx["keep"]
                raise Boom
        assert await state.get_snapshot() == {"n": 1, "keep": "me"}
        # and the lock was released
        await state.set("n", 2)
        async with state.transaction() as tx:
            tx["n"] += 1
        assert await state.get("n") == 3

    async def test_unencodable_assignment_fails_at_the_assignment(self, state):
        async with state.transaction() as tx:
            with pytest.raises(StateEncodeError, match="'bad'"):
                tx["bad"] = {1, 2}
            with pytest.raises(StateEncodeError):
                tx[3] = "non-str key"
            tx["good"] = 1
        assert await state.get_snapshot() == {"good": 1}

    async def test_value_mutated_into_unencodable_writes_nothing(self, state):
        await state.set("a", 1)
        with pytest.raises(StateEncodeError, match="'b'"):
            async with state.transaction() as tx:
                tx["a"] = 2
                tx["b"] = {"ok": []}
                tx["b"]["ok"].append({1, 2})
        assert await state.get_snapshot() == {"a": 1}
        async with state.transaction() as tx:  # lock released
            tx["a"] = 3
        assert await state.get("a") == 3

    async def test_empty_transaction(self, state):
        async with state.transaction() as tx:
            assert dict(tx) == {}
        async with state.transaction():
            pass
        assert await state.get_snapshot() == {}

    async def test_transaction_object_is_dead_after_the_block(self, state):
        async with state.transaction() as tx:
            tx["a"] = 1
        with pytest.raises(StateClosedError):
            tx["a"] = 2
        with pytest.raises(StateClosedError):
            tx.get("a")
        assert await state.get("a") == 1

    async def test_own_writes_inside_a_transaction_are_refused_not_deadlocked(self, backends):
        state = GraphState(backend=backends())
        other_handle = GraphState(backend=backends())
        async with asyncio.timeout(10):
            async with state.transaction() as tx:
                with pytest.raises(StateError, match="inside one of its own transactions"):
                    await state.set("a", 1)
                with pytest.raises(StateError, match="inside one of its own transactions"):
                    await other_handle.increment("a")
                with pytest.raises(StateError, match="nested"):
                    async with state.transaction():
                        pass
                assert await state.get("a") is None  # reads are fine
                tx["a"] = 2
        assert await state.get("a") == 2

    async def test_transactions_exclude_each_other(self, backends):
        states = [GraphState(backend=backends()) for _ in range(3)]

        async def bump(state: GraphState) -> None:
            for _ in range(10):
                async with state.transaction() as tx:
                    current = tx.get("n", 0)
                    await asyncio.sleep(0)  # let the others try to get in between
                    tx["n"] = current + 1

        async with asyncio.timeout(60):
            await asyncio.gather(*(bump(s) for s in states for _ in range(3)))
        assert await states[0].get("n") == 90

    async def test_plain_writes_wait_for_transactions(self, backends):
        tx_state, plain = GraphState(backend=backends()), GraphState(backend=backends())
        await tx_state.set("n", 0)

        async def transactional():
            for _ in range(10):
                async with tx_state.transaction() as tx:
                    current = tx["n"]
                    await asyncio.sleep(0.001)
                    tx["n"] = current + 1

        async def plain_increments():
            for _ in range(20):
                await plain.increment("n")
                await asyncio.sleep(0)

        async with asyncio.timeout(60):
            await asyncio.gather(transactional(), plain_increments())
        assert await plain.get("n") == 30

    async def test_cancelled_transaction_changes_nothing_and_releases(self, state):
        await state.set("n", 1)
        entered = asyncio.Event()

        async def stuck():
            async with state.transaction() as tx:
                tx["n"] = 99
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(stuck())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            assert await state.increment("n") == 2
