"""Upstream's exception names, for code written from its docs.

`except NodeExecutionError` around `graph.run()` catches what a node raised here: every
exception of this library (RPC errors, timeouts, connection failures) is a `SparkError`.
"""

from spark.errors import SparkError

NodeExecutionError = SparkError

__all__ = ["NodeExecutionError"]
