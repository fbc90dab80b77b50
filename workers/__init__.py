"""Deployable example services: the seed's RPC nodes with their state in Redis.

Serve any of them with `spark-worker workers.<module>:<Class>`; the service name is the
class name without `RpcNode`, in kebab case:

- `workers.customer:CustomerRpcNode` -> `customer`: get_customer, update_customer, seed
- `workers.order:OrderRpcNode` -> `order`: create_order, get_order, cancel_order
- `workers.inventory:InventoryRpcNode` -> `inventory`: check_availability,
  reserve_inventory, release_inventory, get_stock, seed
- `workers.data_processing:DataProcessingRpcNode` -> `data-processing`: transform_data,
  aggregate_data
- `workers.ml_inference:MLInferenceRpcNode` -> `ml-inference`: predict, list_models
- `workers.cache:CacheRpcNode` -> `cache`: get, set, delete
- `workers.logging_service:LoggingRpcNode` -> `logging`: log, flush, tail, stats
- `workers.analytics:AnalyticsRpcNode` -> `analytics`: compute_analytics, job_status

No service keeps state in process memory beyond a request (the logging service's buffer
is the one deliberate exception, flushed by size, by timer and at shutdown), so every pool
can run as many replicas as it needs. Each reaches Redis through the broker URL of the
worker serving it (`self.runtime.url`), so the embedded `memory://` broker works too.

The module is `workers.logging_service`, not `workers.logging`: a submodule named
`logging` would shadow the standard library for code run from inside the package.
"""
