"""The seed's hand-written error-handling nodes, as written (seed: "Error Handling in
Distributed Systems"). Shared by the unit tests (local stand-ins) and the integration tests
(real failing services), so both check the one copy of the user's code."""

from __future__ import annotations

import time

from spark.nodes import Node


# --- seed: Error Handling / Circuit Breaker Pattern ---
class CircuitBreakerProxy(Node):
    """Proxy with circuit breaker for failing services."""

    def __init__(self, remote_proxy, **kwargs):
        super().__init__(**kwargs)
        self.proxy = remote_proxy
        self.failure_count = 0
        self.circuit_open = False
        self.circuit_open_time = None
        self.threshold = 5
        self.reset_timeout = 60.0

    async def process(self, context):
        # Check if circuit should close
        if self.circuit_open:
            if time.time() - self.circuit_open_time > self.reset_timeout:
                self.circuit_open = False
                self.failure_count = 0
            else:
                return {"error": "Circuit breaker open", "success": False}

        # Try remote call
        try:
            result = await self.proxy.process(context)
            # Success - reset counter
            self.failure_count = 0
            return result

        except Exception as e:
            # Failure - increment counter
            self.failure_count += 1

            if self.failure_count >= self.threshold:
                # Open circuit
                self.circuit_open = True
                self.circuit_open_time = time.time()

            return {"error": str(e), "success": False}


# --- end seed ---


# --- seed: Error Handling / Fallback Services ---
class FallbackProxyNode(Node):
    """Proxy with fallback to alternate service."""

    def __init__(self, primary_proxy, fallback_proxy, **kwargs):
        super().__init__(**kwargs)
        self.primary = primary_proxy
        self.fallback = fallback_proxy

    async def process(self, context):
        try:
            # Try primary service
            result = await self.primary.process(context)
            return {"result": result, "service": "primary"}

        except Exception as e:
            # Primary failed - try fallback
            try:
                result = await self.fallback.process(context)
                return {"result": result, "service": "fallback", "primary_error": str(e)}

            except Exception as fallback_error:
                # Both failed
                return {
                    "error": "Both services failed",
                    "primary_error": str(e),
                    "fallback_error": str(fallback_error),
                    "success": False,
                }


# --- end seed ---
