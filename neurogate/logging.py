"""Process-wide logging: one line per record, with the identifiers passed in ``extra=``.

Logs carry UIDs, AE titles and job ids; callers never pass patient names or pixel data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Literal

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return f"{line} {extras}" if extras else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG; keep it to warnings unless asked.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
