"""Structured logs: one JSON object per line, with the volume and consumer in each.

Use :func:`event` rather than formatting strings, so that every line carries the
same fields and tools can filter on them. Values named like secrets are replaced
before they are written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mount_core.statedir import StateDir

_SECRET_WORDS = ("secret", "token", "password", "credential", "keytab")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of any field whose name suggests a secret."""
    return {
        k: "<redacted>" if any(w in k.lower() for w in _SECRET_WORDS) else v
        for k, v in fields.items()
    }


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line: time, level, logger, message, volume, consumer, extras."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "volume": extra.pop("volume", None),
            "consumer": extra.pop("consumer", None),
        }
        line.update(redact(extra))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "INFO", stream: IO[str] | None = None, path: str | None = None) -> None:
    """Send hepvol's logs, as JSON lines, to ``path`` or ``stream`` (stderr by default)."""
    handler: logging.Handler
    handler = logging.FileHandler(path) if path else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("hepvol")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


#: A log file past this size is moved to ``<name>.log.1`` (one previous file kept).
ROTATE_BYTES = 8 << 20


def to_state_dir(state: StateDir, name: str, level: str = "INFO") -> str:
    """Send hepvol's logs to ``<state>/logs/<name>.log``, for processes without a stderr.

    The state dir and its ``logs/`` are checked before the file is opened (in a
    directory others can write, a planted ``logs`` symlink would have root append
    to a file of their choosing). Every call appends a few lines: past
    :data:`ROTATE_BYTES` the file is moved to ``<name>.log.1`` first, so one
    previous file is kept and nothing grows forever. Returns the log's path.
    """
    path = os.path.join(state.ensure().private("logs"), f"{name}.log")
    with contextlib.suppress(OSError):
        if os.stat(path).st_size > ROTATE_BYTES:
            os.replace(path, path + ".1")
    configure(level, path=path)
    return path


def event(
    logger: logging.Logger,
    message: str,
    *,
    volume: str | None = None,
    consumer: str | None = None,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log one structured line."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"volume": volume, "consumer": consumer, **fields})
