"""Exceptions raised by GraphState and its backends (all are `SparkError`s)."""

from __future__ import annotations

from spark.errors import RpcConnectionError, SparkError


class StateError(SparkError):
    """Base of every GraphState error."""


class StateEncodeError(StateError, TypeError):
    """A key is not a str or a value cannot be encoded as JSON; nothing was written."""


class StateDecodeError(StateError, ValueError):
    """A stored value is not valid JSON (written by something other than GraphState)."""


class StateTypeError(StateError, TypeError):
    """An operation met a value of the wrong type (e.g. `increment` on a non-integer)."""


class StateLockTimeout(StateError, TimeoutError):
    """A transaction held the namespace longer than this caller was willing to wait."""


class StateConflictError(StateError):
    """A transaction lost its lease before committing (it outlived `lease`); nothing applied."""


class StateClosedError(StateError):
    """The transaction is over; its object can no longer be read or written."""


class StateConnectionError(StateError, RpcConnectionError):
    """The shared backend (Redis) could not be reached."""
