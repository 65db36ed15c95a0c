"""The values passed between pipeline stages. All frozen; behaviour on them stays small and pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum


class Severity(IntEnum):
    """Clair v2's severities, lowest first, so comparisons follow their order."""

    UNKNOWN = 0
    NEGLIGIBLE = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    DEFCON1 = 6

    @property
    def label(self) -> str:
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of {names})") from None


@dataclass(frozen=True)
class Layer:
    index: int
    diff_id: str
    chain_id: str
    created_by: str = ""
    digest: str = ""
    """The digest of the bytes served for this layer when they are not the tar's (a compressed
    blob); Clair v4 checks what it downloads against it."""


@dataclass(frozen=True)
class Image:
    name: str
    """What the user called it (a tag, an ID, or an archive's repo tag); whitelists match on it."""
    id: str
    layers: tuple[Layer, ...]
    digests: tuple[str, ...] = ()
    distilled: bool = False
    """Scanned as one layer of the files Clair reads (see distill.py): findings name no layer."""

    @property
    def top(self) -> Layer:
        return self.layers[-1]


@dataclass(frozen=True)
class Cvss:
    version: str
    score: float
    vector: str


@dataclass(frozen=True)
class Package:
    """One installed package as Clair lists it (a "feature"); `namespace` is its distro, e.g. debian:12."""

    name: str
    version: str
    namespace: str = ""
    version_format: str = ""


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one package. `ignored` says why it does not count, when it does not."""

    vulnerability: str
    package: str
    installed: str
    fixed: str | None
    severity: Severity
    namespace: str
    link: str = ""
    description: str = ""
    cvss: tuple[Cvss, ...] = ()
    layer: Layer | None = None
    ignored: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What Clair said about an image, before any policy is applied."""

    image: Image
    namespace: str
    packages: int
    findings: tuple[Finding, ...]
    started: datetime
    finished: datetime
    layers_sent: int = 0
    features: tuple[Package, ...] = ()
    """Every package in the image (the SBOM's components); `packages` is their count."""
    data_updated: datetime | None = None
    """When Clair's vulnerability data was last updated, where known."""


@dataclass(frozen=True)
class ImageResult:
    """An analysis with the whitelist and threshold applied: the input of every report."""

    analysis: Analysis
    findings: tuple[Finding, ...]
    threshold: Severity
    warnings: tuple[str, ...] = field(default=())

    @property
    def image(self) -> Image:
        return self.analysis.image

    @property
    def unapproved(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.ignored is None and f.severity >= self.threshold)

    @property
    def ignored(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.ignored is not None)

    @property
    def below_threshold(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.ignored is None and f.severity < self.threshold)
