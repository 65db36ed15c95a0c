"""The whitelist stage: which findings are approved, and why.

Reads clair-scanner's YAML files unchanged:

    generalwhitelist:            # applies to every image
      CVE-2017-6055: XML         # value: a note naming the package; matching is by ID only
    images:
      ubuntu:                    # the image name without its tag
        CVE-2017-5230: XSX

and an extended entry form that also restricts the package, says why, and can expire:

      CVE-2019-1543: {package: openssl, reason: "no TLS in this image", expires: 2027-01-31}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import Any

from .errors import FileSystemError, UsageError
from .models import Analysis, Finding, ImageResult, Severity

_TOP_KEYS = {"generalwhitelist", "images"}
_ENTRY_KEYS = {"package", "reason", "expires"}


@dataclass(frozen=True)
class Entry:
    vulnerability: str
    image: str | None
    """None for the general whitelist."""
    package: str | None = None
    """Only the extended form restricts the package; clair-scanner's value is just a note."""
    note: str = ""
    reason: str = ""
    expires: date | None = None

    @property
    def scope(self) -> str:
        return f"image {self.image}" if self.image else "general"

    def describe(self) -> str:
        what = f"{self.vulnerability} ({self.package})" if self.package else self.vulnerability
        return f"{what}, {self.scope}"


@dataclass(frozen=True)
class Whitelist:
    source: str
    entries: tuple[Entry, ...] = ()


def load(path: str) -> Whitelist:
    import yaml  # only scans with a whitelist pay for it

    class Loader(yaml.SafeLoader):
        def construct_yaml_timestamp(self, node: Any) -> Any:
            # PyYAML builds dates as it parses: `expires: 2027-02-30` fails in datetime.date,
            # with no word of where. Said as YAML's other errors are, with the line.
            try:
                return super().construct_yaml_timestamp(node)
            except (ValueError, OverflowError) as exc:
                problem = f"{node.value!r} is not a date ({exc})"
                raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_timestamp)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=Loader)  # a SafeLoader
    except FileNotFoundError:
        raise UsageError(f"whitelist not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"whitelist is a directory: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"malformed whitelist {path}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UsageError(f"malformed whitelist {path}: not UTF-8 text") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # whatever else PyYAML lets through
        raise UsageError(f"malformed whitelist {path}: {exc}") from None
    except OSError as exc:
        raise FileSystemError(f"cannot read whitelist {path}: {exc.strerror or exc}") from None
    try:
        return Whitelist(path, tuple(_entries(data)))
    except ValueError as exc:
        raise UsageError(f"malformed whitelist {path}: {exc}") from None


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping, not {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _entries(data: Any) -> list[Entry]:
    top = _mapping(data, "the file")
    unknown = set(top) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (expected generalwhitelist or images)")
    entries = [
        _entry(k, v, None) for k, v in _mapping(top.get("generalwhitelist"), "generalwhitelist").items()
    ]
    for image, vulns in _mapping(top.get("images"), "images").items():
        entries += [_entry(k, v, image) for k, v in _mapping(vulns, f"images.{image}").items()]
    return entries


def _entry(vulnerability: str, value: Any, image: str | None) -> Entry:
    if value is None or isinstance(value, (str, int, float)):
        return Entry(vulnerability, image, note="" if value is None else str(value))
    fields = _mapping(value, vulnerability)
    unknown = set(fields) - _ENTRY_KEYS
    if unknown:
        raise ValueError(
            f"{vulnerability}: unknown field {sorted(unknown)[0]!r} (expected package, reason, expires)"
        )
    expires = fields.get("expires")
    if isinstance(expires, str):
        try:
            expires = date.fromisoformat(expires)
        except ValueError:
            raise ValueError(f"{vulnerability}: expires must be a date like 2027-01-31") from None
    if expires is not None and not isinstance(expires, date):
        raise ValueError(f"{vulnerability}: expires must be a date like 2027-01-31")
    package = fields.get("package")
    return Entry(
        vulnerability,
        image,
        package=str(package) if package else None,
        reason=str(fields.get("reason") or ""),
        expires=expires,
    )


def image_keys(name: str) -> set[str]:
    """Names a whitelist `images` key may use for an image: clair-scanner's (everything before the
    first colon), and the repository without tag or digest, which also works with registry ports."""
    repository = name.split("@", 1)[0]
    slash = repository.rfind("/")
    colon = repository.rfind(":")
    if colon > slash:
        repository = repository[:colon]
    return {name.split(":", 1)[0], repository}


def apply(
    analysis: Analysis,
    whitelist: Whitelist | None,
    threshold: Severity,
    ignore_unfixed: bool = False,
    today: date | None = None,
) -> ImageResult:
    """Mark approved findings as ignored with their reason; report expired and unused entries."""
    today = today or date.today()
    keys = image_keys(analysis.image.name)
    entries = [e for e in (whitelist.entries if whitelist else ()) if e.image is None or e.image in keys]
    live = [e for e in entries if e.expires is None or e.expires >= today]
    warnings = [
        f"whitelist entry {e.describe()} expired on {e.expires}; it no longer applies"
        for e in entries
        if e.expires is not None and e.expires < today
    ]
    used: set[Entry] = set()
    findings: list[Finding] = []
    for finding in analysis.findings:
        entry = next((e for e in live if _matches(e, finding)), None)
        if entry is not None:
            used.add(entry)
            assert whitelist is not None
            why = entry.reason or entry.note or "no reason given"
            finding = dataclasses.replace(
                finding, ignored=f"whitelisted ({entry.scope}, {whitelist.source}): {why}"
            )
        elif ignore_unfixed and finding.fixed is None:
            finding = dataclasses.replace(finding, ignored="no fix available (--ignore-unfixed)")
        findings.append(finding)
    warnings += [
        f"whitelist entry {e.describe()} matched nothing in {analysis.image.name}"
        for e in live
        if e not in used
    ]
    return ImageResult(analysis, tuple(findings), threshold, tuple(warnings))


def _matches(entry: Entry, finding: Finding) -> bool:
    return entry.vulnerability == finding.vulnerability and entry.package in (None, finding.package)
