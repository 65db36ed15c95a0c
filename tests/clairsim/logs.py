"""Clair's log format (pkg/formatter): one JSON object per line, keys sorted, on stdout.

Every line has `Event` (the message), `Level`, `Time` (local, `YYYY-MM-DD HH:MM:SS.micro`) and
`Location` (`file:line` of the caller; ours are Python files) plus the event's fields. Go durations
in fields are integers of nanoseconds, as encoding/json writes a time.Duration.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
from typing import IO, Any

from . import gojson

LEVELS = ("debug", "info", "warning", "error", "fatal", "panic")


def duration_ns(seconds: float) -> int:
    return round(seconds * 1e9)


class Logger:
    def __init__(self, stream: IO[str] | None = sys.stdout, level: str = "info", keep: bool = True) -> None:
        level = level.lower()
        if level == "warn":
            level = "warning"
        if level not in LEVELS:
            raise ValueError(f"not a valid logrus Level: {level!r}")
        self.stream = stream
        self.threshold = LEVELS.index(level)
        self.keep = keep
        self.records: list[dict[str, Any]] = []  # every line written, parsed back; for tests
        self._lock = threading.Lock()

    def log(self, level: str, event: str, fields: dict[str, Any] | None = None) -> None:
        if LEVELS.index(level) < self.threshold:
            return
        frame = sys._getframe(1)
        while frame.f_back is not None and os.path.basename(frame.f_code.co_filename) == "logs.py":
            frame = frame.f_back
        data: dict[str, Any] = {}
        for key, value in (fields or {}).items():
            data[key] = str(value) if isinstance(value, BaseException) else value
        now = datetime.datetime.now()
        data["Location"] = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        data["Time"] = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        data["Event"] = event
        data["Level"] = level
        record = {key: data[key] for key in sorted(data)}
        line = gojson.dumps(record) + "\n"
        with self._lock:
            if self.keep:
                self.records.append(record)
            if self.stream is not None:
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # a closed stdout must not break request handling

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, fields)

    def fatal(self, event: str, **fields: Any) -> None:
        self.log("fatal", event, fields)

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [record for record in self.records if record["Event"] == event]
