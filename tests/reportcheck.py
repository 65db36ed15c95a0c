"""Validation of reports against the schemas in ../shared/schemas: GitLab's (the newest version
there) and SARIF 2.1.0."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "shared" / "schemas"


@cache
def _validator() -> jsonschema.Draft7Validator:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in path.stem.rsplit("-", 1)[1].split("."))

    newest = max(SCHEMAS.glob("container-scanning-report-format-*.json"), key=version)
    schema = json.loads(newest.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def validate_gitlab_report(data: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    assert data["version"] == _validator().schema["self"]["version"]


@cache
def _sarif_validator() -> Any:
    schema = json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def validate_sarif(document: dict[str, Any]) -> None:
    errors = sorted(_sarif_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    assert document["version"] == "2.1.0"
