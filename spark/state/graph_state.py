"""GraphState: a key-value state of JSON values, local or shared through a backend."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from spark.state.backend import StateBackend, StateTransactionHandle
from spark.state.codec import check_increment, check_key, decode, encode, encode_mapping
from spark.state.errors import StateError
from spark.state.memory_backend import MemoryBackend
from spark.state.transaction import StateTransaction

log = logging.getLogger(__name__)

# The lock scopes of the transactions open in this task: a plain write to one of them
# from inside the block would wait for the block itself.
_open_scopes: ContextVar[frozenset[Hashable]] = ContextVar(
    "spark_state_open_transactions", default=frozenset()
)


class GraphState:
    """Async key-value state; keys are str, values JSON (encoded with orjson).

    With no backend the state is a private MemoryBackend. With a shared backend (SQLite file,
    Redis namespace) every GraphState on it, in any process, sees the same keys, and nothing
    is cached locally.

    `initial_state` fills keys that are absent: on a fresh MemoryBackend that is all of them,
    right away; on a shared backend it is applied on the first awaited call (the constructor
    does no I/O, so it can run in a synchronous `__init__`) and never overwrites a key that
    another process already wrote.
    """

    def __init__(
        self,
        initial_state: Mapping[str, Any] | None = None,
        backend: StateBackend | None = None,
    ):
        self._backend: StateBackend = backend if backend is not None else MemoryBackend()
        self._pending: dict[str, bytes] | None = None
        if initial_state:
            encoded = encode_mapping(initial_state)
            if not self._backend.set_absent_nowait(encoded):
                self._pending = encoded

    @property
    def backend(self) -> StateBackend:
        return self._backend

    def __repr__(self) -> str:
        return f"GraphState(backend={self._backend!r})"

    def _refuse_inside_own_transaction(self, action: str) -> None:
        if self._backend.lock_scope in _open_scopes.get():
            raise StateError(
                f"cannot {action} on this state inside one of its own transactions (it would "
                "wait for the transaction to end); use the transaction object: tx[key] = value"
            )

    async def _ready(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._refuse_inside_own_transaction("apply initial_state")
        await self._backend.set_absent(pending)
        if self._pending is pending:
            self._pending = None

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        check_key(key)
        await self._ready()
        data = await self._backend.get(key)
        return default if data is None else decode(key, data)

    async def has(self, key: str) -> bool:
        check_key(key)
        await self._ready()
        return await self._backend.has(key)

    async def keys(self) -> list[str]:
        await self._ready()
        return await self._backend.keys()

    async def get_snapshot(self) -> dict[str, Any]:
        """A plain dict copy of every key and value (changing it changes nothing stored)."""
        await self._ready()
        return {key: decode(key, data) for key, data in (await self._backend.snapshot()).items()}

    # -- writes (each one atomic) -----------------------------------------------------------

    async def set(self, key: str, value: Any) -> None:
        data = encode(check_key(key), value)
        self._refuse_inside_own_transaction("set")
        await self._ready()
        await self._backend.write({key: data})

    async def update(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Set several keys in one atomic write (nothing is written if one cannot be encoded)."""
        encoded = encode_mapping({**(mapping or {}), **values})
        if not encoded:
            return
        self._refuse_inside_own_transaction("update")
        await self._ready()
        await self._backend.write(encoded)

    async def delete(self, key: str) -> bool:
        """Remove a key; True if it existed."""
        check_key(key)
        self._refuse_inside_own_transaction("delete")
        await self._ready()
        return await self._backend.write({}, [key]) > 0

    async def increment(self, key: str, by: int = 1) -> int:
        """Atomically add `by` to an integer (a missing key counts as 0); the new value.

        Counters are signed 64-bit. A key holding anything but an integer raises
        StateTypeError and is left unchanged.
        """
        check_key(key)
        check_increment(by)
        self._refuse_inside_own_transaction("increment")
        await self._ready()
        return await self._backend.increment(key, by)

    # -- transactions ----------------------------------------------------------------------

    def transaction(self) -> TransactionContext:
        """`async with state.transaction() as tx:` with `tx` a dict of the whole namespace.

        The block holds the namespace's lock: other transactions and writes (from any process
        sharing the backend) wait until it ends. On a normal exit every change is committed
        atomically; if the block raises, nothing is written. Keep blocks short, and do not
        call this state's own write methods inside (use `tx`).
        """
        return TransactionContext(self)


class TransactionContext:
    """The async context manager returned by `GraphState.transaction()`."""

    def __init__(self, state: GraphState):
        self._state = state
        self._handle: StateTransactionHandle | None = None
        self._tx: StateTransaction | None = None
        self._scope_token: Token[frozenset[Hashable]] | None = None

    async def __aenter__(self) -> StateTransaction:
        if self._handle is not None:
            raise StateError("a transaction context can be entered only once")
        state = self._state
        state._refuse_inside_own_transaction("start a nested transaction")
        await state._ready()
        self._handle = await state.backend.begin()
        self._tx = StateTransaction(self._handle.snapshot)
        self._scope_token = _open_scopes.set(_open_scopes.get() | {state.backend.lock_scope})
        return self._tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._handle is not None and self._tx is not None
        handle, tx = self._handle, self._tx
        tx._open = False
        self._close_scope()
        if exc_type is not None:
            await self._rollback_quietly(handle)
            return
        try:
            sets, deletes = tx._changes()
        except BaseException:
            await self._rollback_quietly(handle)
            raise
        await handle.commit(sets, deletes)

    def _close_scope(self) -> None:
        token, self._scope_token = self._scope_token, None
        scope = self._state.backend.lock_scope
        try:
            if token is not None:
                _open_scopes.reset(token)
        except ValueError:  # exited in another context than entered
            _open_scopes.set(_open_scopes.get() - {scope})

    @staticmethod
    async def _rollback_quietly(handle: StateTransactionHandle) -> None:
        # The block's own exception is the one to report; a lock that could not be released
        # (Redis unreachable) expires with its lease.
        try:
            await handle.rollback()
        except StateError:
            log.warning("GraphState transaction rollback failed", exc_info=True)
