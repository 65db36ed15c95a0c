"""The report stage's old home: the GitLab report and the JSON result model now live in
scanner/formats; these names stay for callers and scripts that import them from here."""

from __future__ import annotations

import json
from typing import Any

from .formats import report_paths, write_all
from .formats.gitlab import GITLAB_SEVERITY, SCHEMA_VERSION, gitlab_report
from .formats.json import result_json

__all__ = [
    "GITLAB_SEVERITY",
    "SCHEMA_VERSION",
    "gitlab_report",
    "report_paths",
    "result_json",
    "write_atomic",
]


def write_atomic(path: str, data: dict[str, Any]) -> None:
    """Readers see the old file or the whole new one, never a partial report."""
    write_all([(path, (json.dumps(data, indent=2) + "\n").encode())])
