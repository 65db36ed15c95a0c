"""The findings table as plain text in a file; on stdout the terminal prints it (scanner/terminal.py
is the table's home)."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import ImageResult
from . import Format


def _render(results: Sequence[ImageResult]) -> bytes:
    from ..terminal import table_text

    return table_text(results).encode()


FORMAT = Format("table", "clair-scan.txt", combines=True, render=_render)
