"""Log output of every spark process: plain text (the default) or one JSON object per line.

`setup_logging(level, fmt)` is what the console scripts call (`--log-format json`, or
`SPARK_LOG_FORMAT=json`). Lines logged while a request is being served carry that request:
its service, method, request id and client id (from `spark.context.current_call`) and the
trace id (with OpenTelemetry); in text they are appended as `[service.method id=... client=...]`.

Workers log one line per answered request on the `spark.requests` logger (service, method,
request id, trace id, worker id, duration, outcome). It is on at INFO in JSON format, where a
log pipeline expects it, and at DEBUG in text format, where a terminal would drown in it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

from spark import tracing
from spark.context import current_call

FORMATS = ("text", "json")
ENV_FORMAT = "SPARK_LOG_FORMAT"
ENV_LEVEL = "SPARK_LOG_LEVEL"
TEXT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s%(spark_call)s"
#: The per-request logger (see the module docstring).
REQUESTS = "spark.requests"

#: LogRecord attributes that are not extra fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "spark_call",
    "taskName",
}


def _call_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    call = current_call.get()
    if call is not None:
        fields.update(
            service=call.service,
            method=call.method,
            request_id=call.request_id,
            client_id=call.client_id,
        )
    ids = tracing.current_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


class CallFilter(logging.Filter):
    """Adds `spark_call` (the request being served, for the text format) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "spark_call"):
            call = current_call.get()
            if call is None or getattr(record, "request_id", None) is not None:
                record.spark_call = ""
            else:
                record.spark_call = (
                    f" [{call.service}.{call.method} id={call.request_id} client={call.client_id}]"
                )
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, the request being served
    and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        doc.update(_call_fields(record))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def resolve_format(fmt: str | None) -> str:
    fmt = (fmt or os.environ.get(ENV_FORMAT) or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger for a spark process (replacing its handlers)."""
    fmt = resolve_format(fmt)
    handler = logging.StreamHandler()
    handler.addFilter(CallFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get(ENV_LEVEL) or "INFO").upper())
    requests = logging.getLogger(REQUESTS)
    requests.setLevel(logging.NOTSET if fmt == "json" else logging.WARNING)
    if fmt == "text" and root.level <= logging.DEBUG:
        requests.setLevel(logging.NOTSET)


def add_format_argument(parser: Any) -> None:
    """`--log-format` for a console script's argparse parser."""
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=None,
        help=f"text (default) or json: one object per line (also ${ENV_FORMAT})",
    )
