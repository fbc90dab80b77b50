"""The edge: JSON-RPC over HTTP and WebSocket in front of the Redis-backed services.

The only aiohttp server code of the project. `EdgeServer(EdgeConfig(...))` embeds it;
`spark-edge` (spark.cli.edge) runs it; `RpcNode.start_server()` runs it next to an
in-process worker (spark.runtime.server).
"""

from spark.runtime.edge.app import EdgeServer, make_app, run_edge
from spark.runtime.edge.config import EdgeConfig
from spark.runtime.edge.core import Edge
from spark.runtime.edge.metrics import EdgeMetrics

__all__ = ["Edge", "EdgeConfig", "EdgeMetrics", "EdgeServer", "make_app", "run_edge"]
