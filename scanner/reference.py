"""Image references, checked by the grammar of the distribution project's `reference` package
before anything is asked of an engine or a registry: a CI variable that was never set, a URL
pasted where a name belongs, or a doubled slash fail as a usage error naming what is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

DOCKER_HUB = "docker.io"
_HUB_API = "registry-1.docker.io"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}")
NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    domain: str
    """As written, or docker.io when the name has none."""
    path: str
    """The repository: `library/` is added to a one-part Docker Hub name."""
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the registry's API is: Docker Hub's is not at docker.io."""
        return _HUB_API if self.domain in (DOCKER_HUB, "index.docker.io") else self.domain

    @property
    def selector(self) -> str:
        """What the manifest is asked for by: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.domain}/{self.path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _fail(text: str, why: str) -> UsageError:
    shown = text if text.isprintable() else text.encode("unicode_escape").decode()
    return UsageError(f"invalid image reference {shown!r}: {why}")


def parse(text: str) -> Reference:
    """A reference as `docker pull` reads it; UsageError saying what is wrong otherwise."""
    if not text.strip():
        return _empty()
    if "://" in text:
        raise _fail(text, "a reference has no scheme; remove everything up to '://'")
    if text != text.strip() or any(c.isspace() for c in text):
        raise _fail(text, "it contains whitespace")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise _fail(text, f"{digest!r} is not a digest (algorithm:hex)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _fail(text, f"{tag!r} is not a valid tag")
    if not rest:
        raise _fail(text, "the repository name is missing")
    if len(rest) > NAME_MAX:
        raise _fail(text, f"the name is longer than {NAME_MAX} characters")
    first, _, remainder = rest.partition("/")
    # As in `docker pull`: the first part names a registry if it looks like a host.
    if remainder and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN.fullmatch(domain):
            raise _fail(text, f"{domain!r} is not a registry host")
    else:
        domain, path = DOCKER_HUB, rest
    for component in path.split("/"):
        if not component:
            raise _fail(text, "it has an empty path component ('//' or a trailing '/')")
        if not _COMPONENT.fullmatch(component):
            raise _fail(
                text,
                f"{component!r} is not a valid repository name component "
                "(lowercase letters, digits, and . _ - between them)",
            )
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return Reference(domain, path, tag if tag or digest else "latest", digest or None)


def _empty() -> Reference:
    raise UsageError(
        "invalid image reference '': it is empty", hint="is the variable that should hold the image set?"
    )


def check_engine_ref(text: str) -> None:
    """A name the engine can look up: a reference, or an image ID (full, or `sha256:`-prefixed)."""
    if _IMAGE_ID.fullmatch(text):
        return
    parse(text)
