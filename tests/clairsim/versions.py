"""Package version parsing and comparison as Clair v2.1.8 does it (ext/versionfmt/{dpkg,rpm}).

Clair validates versions byte by byte (a Go `rune(str[i])`), so non-ASCII bytes count as letters
when their Latin-1 code point is one. Two sentinels exist: MIN_VERSION sorts before everything and
MAX_VERSION after everything; a fix at MAX_VERSION means "not fixed", and the API shows it as
"None" in fix lists and drops it from `FixedBy`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

MIN_VERSION = "#MINV#"
MAX_VERSION = "#MAXV#"

DPKG = "dpkg"
RPM = "rpm"
FORMATS = (DPKG, RPM)


class VersionError(ValueError):
    """A version that the format's parser rejects (Clair's `versionfmt.ErrInvalidVersion`)."""


class UnknownFormatError(ValueError):
    """Clair's `versionfmt.ErrUnknownVersionFormat`."""

    def __init__(self) -> None:
        super().__init__("unknown version format")


# Go's strconv.Atoi accepts an optional sign and ASCII digits only.
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
# Go's strings.TrimSpace trims Unicode white space; these are the ASCII ones that matter here.
_SPACE = " \t\n\r\v\f\x85\xa0"


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd"


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def _bytes_as_runes(text: str) -> str:
    """Clair iterates over bytes and turns each into a rune: reproduce that on a UTF-8 string."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


@dataclass(frozen=True)
class _Parsed:
    epoch: int
    version: str
    revision: str


_MIN = _Parsed(0, MIN_VERSION, "")
_MAX = _Parsed(0, MAX_VERSION, "")


def _parse(text: str, *, revision_from_last_dash: bool, revision_symbols: str) -> _Parsed:
    text = text.strip(_SPACE)
    if not text:
        raise VersionError("Version string is empty")
    if text == MAX_VERSION:
        return _MAX
    if text == MIN_VERSION:
        return _MIN
    epoch = 0
    colon = text.find(":")
    if colon > -1:
        if not _GO_INT.match(text[:colon]):
            raise VersionError("epoch in version is not a number")
        epoch = int(text[:colon])
        if epoch < 0:
            raise VersionError("epoch in version is negative")
    dash = text.rfind("-") if revision_from_last_dash else text.find("-")
    if dash > -1:
        upstream, revision = text[colon + 1 : dash], text[dash + 1 :]
    else:
        upstream, revision = text[colon + 1 :], ""
    if not upstream:
        raise VersionError("No version")
    for ch in _bytes_as_runes(upstream):
        if not (_is_digit(ch) or _is_letter(ch) or ch in ".-+~:_"):
            raise VersionError("invalid character in version")
    for ch in _bytes_as_runes(revision):
        if not (_is_digit(ch) or _is_letter(ch) or ch in revision_symbols):
            raise VersionError("invalid character in revision")
    return _Parsed(epoch, upstream, revision)


# --- dpkg -------------------------------------------------------------------------------------


def _parse_dpkg(text: str) -> _Parsed:
    # In Debian the revision follows the last dash; ':' is not allowed in it.
    return _parse(text, revision_from_last_dash=True, revision_symbols=".+~_")


def _dpkg_order(ch: str) -> int:
    """Sort weight of a non-digit: '~' before everything, letters before other symbols."""
    if _is_digit(ch):
        return 0
    if _is_letter(ch):
        return ord(ch)
    if ch == "~":
        return -1
    return ord(ch) + 256


def _dpkg_verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (by weight) and digit runs (numerically)."""
    a, b = _bytes_as_runes(a), _bytes_as_runes(b)
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not _is_digit(a[i])) or (j < len(b) and not _is_digit(b[j])):
            ac = _dpkg_order(a[i]) if i < len(a) else 0
            bc = _dpkg_order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and _is_digit(a[i]) and j < len(b) and _is_digit(b[j]):
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and _is_digit(a[i]):
            return 1
        if j < len(b) and _is_digit(b[j]):
            return -1
        if first_diff:
            return first_diff
    return 0


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _compare_parsed(v1: _Parsed, v2: _Parsed, segment_cmp: Callable[[str, str], int]) -> int:
    if v1 == v2:
        return 0
    if v1 == _MIN or v2 == _MAX:
        return -1
    if v2 == _MIN or v1 == _MAX:
        return 1
    if v1.epoch != v2.epoch:
        return 1 if v1.epoch > v2.epoch else -1
    result = _sign(segment_cmp(v1.version, v2.version))
    if result:
        return result
    return _sign(segment_cmp(v1.revision, v2.revision))


def dpkg_compare(a: str, b: str) -> int:
    return _compare_parsed(_parse_dpkg(a), _parse_dpkg(b), _dpkg_verrevcmp)


# --- rpm --------------------------------------------------------------------------------------


_RPM_SEGMENT = re.compile(r"[a-zA-Z]+|[0-9]+|~")


def _parse_rpm(text: str) -> _Parsed:
    # Clair's rpm parser splits version and release at the FIRST dash and allows ':' in both.
    return _parse(text, revision_from_last_dash=False, revision_symbols=".-+~:_")


def _rpm_vercmp(a: str, b: str) -> int:
    """rpmvercmp over alphabetic / numeric / tilde segments, as Clair's port of it does."""
    if a == b:
        return 0
    segs_a, segs_b = _RPM_SEGMENT.findall(a), _RPM_SEGMENT.findall(b)
    common = min(len(segs_a), len(segs_b))
    for x, y in zip(segs_a[:common], segs_b[:common]):
        if x[0] == "~" or y[0] == "~":
            if x[0] == y[0]:
                continue
            return -1 if x[0] == "~" else 1
        if _is_number(x[0]):
            if not _is_number(y[0]):
                return 1  # numbers sort after letters
            x, y = x.lstrip("0"), y.lstrip("0")
            if len(x) != len(y):
                return 1 if len(x) > len(y) else -1
        elif _is_number(y[0]):
            return -1
        if x != y:
            return -1 if x < y else 1
    if len(segs_a) == len(segs_b):
        return 0
    if len(segs_a) > common and segs_a[common][0] == "~":
        return -1
    if len(segs_b) > common and segs_b[common][0] == "~":
        return 1
    return 1 if len(segs_a) > len(segs_b) else -1


def rpm_compare(a: str, b: str) -> int:
    return _compare_parsed(_parse_rpm(a), _parse_rpm(b), _rpm_vercmp)


# --- by format name ---------------------------------------------------------------------------


def valid(version_format: str, version: str) -> None:
    """Raise UnknownFormatError or VersionError like Clair's `versionfmt.Valid`."""
    if version_format == DPKG:
        _parse_dpkg(version)
    elif version_format == RPM:
        _parse_rpm(version)
    else:
        raise UnknownFormatError()


def is_valid(version_format: str, version: str) -> bool:
    try:
        valid(version_format, version)
    except ValueError:
        return False
    return True


def compare(version_format: str, a: str, b: str) -> int:
    """-1, 0 or 1 like Clair's `versionfmt.Compare`; raises on an unknown format or bad version."""
    if version_format == DPKG:
        return dpkg_compare(a, b)
    if version_format == RPM:
        return rpm_compare(a, b)
    raise UnknownFormatError()


_RPM_NAMESPACE_PREFIXES = ("rhel", "centos", "fedora", "amzn", "scientific", "ol", "oracle")


def format_for_namespace(name: str, version_format: str | None) -> str:
    """The format to compare with: the namespace's own, else guessed from its name.

    A namespace created through POST /v1/namespaces/.../vulnerabilities gets an empty
    version_format in Clair; its migration 00006 used this same name rule to fill old rows.
    """
    if version_format:
        return version_format
    return RPM if name.startswith(_RPM_NAMESPACE_PREFIXES) else DPKG
