"""Times every entrypoint, counts failures, and tags log lines with the call id."""
from __future__ import annotations

import time

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler

from servicekit import logs, metrics


class Telemetry(DependencyProvider):
    def setup(self) -> None:
        logs.guard_payload_logs()
        metrics.serve(self.container.config.get("METRICS_ADDRESS", ""))
        self._started: dict = {}

    def worker_setup(self, worker_ctx) -> None:
        self._started[worker_ctx] = time.perf_counter()
        logs.bind(service=worker_ctx.service_name, call_id=worker_ctx.call_id)

    def worker_result(self, worker_ctx, result=None, exc_info=None) -> None:
        started = self._started.pop(worker_ctx, None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        service = worker_ctx.service_name
        entrypoint = worker_ctx.entrypoint
        if isinstance(entrypoint, Rpc):
            metrics.RPC_DURATION.labels(service, entrypoint.method_name).observe(elapsed)
        elif isinstance(entrypoint, EventHandler):
            metrics.EVENT_HANDLER_DURATION.labels(service, entrypoint.event_type).observe(elapsed)
        elif isinstance(entrypoint, HttpRequestHandler):
            route = entrypoint.url
            metrics.HTTP_DURATION.labels(service, route, entrypoint.method).observe(elapsed)
            status = getattr(result, "status_code", 500 if exc_info else 200)
            metrics.HTTP_RESPONSES.labels(service, route, f"{status // 100}xx").inc()
        if exc_info is not None and not isinstance(exc_info[1], entrypoint.expected_exceptions or ()):
            metrics.HANDLER_FAILURES.labels(service, entrypoint.method_name, exc_info[0].__name__).inc()

    def worker_teardown(self, worker_ctx) -> None:
        self._started.pop(worker_ctx, None)
        logs.clear()


class CallHeaders(DependencyProvider):
    """The AMQP headers that carry this worker's call id into the events it
    causes, so that a consumer's log lines name the call that started it."""

    def get_dependency(self, worker_ctx) -> dict:
        return {"nameko.call_id_stack": list(worker_ctx.call_id_stack)}
