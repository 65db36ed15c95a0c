"""Media types and platforms shared by every source that reads OCI or Docker manifests: registries,
OCI layouts on disk, and OCI archives."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEXES = (DOCKER_LIST, OCI_INDEX)
MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)

DEFAULT = "linux/amd64"


def parse(text: str) -> tuple[str, str, str | None]:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(
            f"invalid --platform {text!r}: expected os/arch or os/arch/variant, e.g. linux/arm64"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def describe(platform: dict[str, Any]) -> str:
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def choose(index: dict[str, Any], wanted: str | None, name: str) -> dict[str, Any]:
    """The descriptor of the manifest for the platform in a manifest list or OCI index."""
    os_name, arch, variant = parse(wanted or DEFAULT)
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    images = [m for m in entries if isinstance(m.get("platform"), dict)]
    matches = [
        m
        for m in images
        if m["platform"].get("os") == os_name
        and m["platform"].get("architecture") == arch
        and (variant is None or m["platform"].get("variant") == variant)
    ]
    real = [m for m in images if m["platform"].get("os") != "unknown"]  # not attestations
    if not matches and wanted is None and len(real) == 1:
        return real[0]  # one image only: no choice to make
    if not matches and not images and len(entries) == 1:
        return entries[0]  # a single manifest without platform facts (as `docker save` writes)
    if not matches:
        offered = sorted({describe(m["platform"]) for m in real})
        raise UsageError(
            f"{name} has no image for {wanted or DEFAULT}; it has: {', '.join(offered) or 'none'}",
            hint="choose one with --platform",
        )
    # Without a variant asked for, the plainest entry wins (arm64 lists v8 and sometimes none).
    matches.sort(key=lambda m: bool(m["platform"].get("variant")))
    return matches[0]


def check_layer_type(media_type: str, name: str, index: int) -> None:
    """Clair v2 reads tar, gzip, bzip2 and xz (CLAIR_V2_API.md): anything else fails here."""
    if "zstd" in media_type:
        raise UsageError(
            f"layer {index + 1} of {name} is zstd-compressed ({media_type}), which Clair v2 cannot read",
            hint="rebuild or copy the image with gzip layers",
        )
    if "foreign" in media_type or "nondistributable" in media_type:
        raise UsageError(
            f"layer {index + 1} of {name} is a foreign layer ({media_type}), which Clair cannot scan"
        )
