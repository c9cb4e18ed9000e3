"""Process-wide logging: one line per record, with the identifiers passed in ``extra=``.

Logs carry UIDs, AE titles and job ids; callers never pass patient names or pixel data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Literal

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


# Extras that are not identifiers: uvicorn's copy of its message with ANSI colour codes.
_NOT_EXTRAS = frozenset({"color_message"})
# Lines a library writes at INFO on every start that tell an operator nothing.
_ROUTINE = {
    "alembic.runtime.migration": ("Context impl ", "Will assume "),
}
# Loggers kept to warnings: alembic's plugin set-up at every start, highdicom's "copy
# attributes of module" (nine per result object).
_CHATTY = ("alembic.runtime.plugins", "highdicom", "pynetdicom", "kafka")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k not in _NOT_EXTRAS and not k.startswith("_")
    }


class _DropRoutine(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._prefixes))


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
    # pynetdicom logs every PDU at INFO/DEBUG; keep it and the others to warnings unless asked.
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name, prefixes in _ROUTINE.items():
        routine = logging.getLogger(name)
        routine.filters[:] = [f for f in routine.filters if not isinstance(f, _DropRoutine)]
        if root.level > logging.DEBUG:
            routine.addFilter(_DropRoutine(prefixes))
    # TensorFlow's C++ INFO lines (CPU instructions banner) go straight to stderr, unformatted;
    # its warnings and errors stay. Read when TensorFlow is imported, after this. (TF 2.21
    # prints its oneDNN notice regardless; only TF_ENABLE_ONEDNN_OPTS=0, another computation
    # path, removes it.)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
