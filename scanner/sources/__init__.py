"""Image sources, one family: each turns what the user named into the image (its layers with diff
IDs and chain IDs) and a way for Clair to get each layer: bytes on our layer server (a Blob or a
Stream) or a URL Clair downloads itself (Remote). The pipeline does not tell them apart.

Users name sources as Grype and skopeo do: `docker:REF`, `registry:REF`, `docker-archive:PATH`,
`oci-archive:PATH`, `oci-dir:PATH`; a bare REF is the engine's image if it holds it, otherwise
the registry's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import DockerError, ImageNotFound, ScanError, UsageError
from ..models import Image

if TYPE_CHECKING:
    from ..archive import Blob
    from ..headstart import HeadStart
    from ..layerserver import Stream
    from . import registry
    from .engine import EngineSource

KINDS = ("docker", "registry", "docker-archive", "oci-archive", "oci-dir")
# `registry:5000/app` is a host and port, not the registry source.
_PORT_AFTER = re.compile(r"\d+(?:/|$)")


@dataclass(frozen=True)
class Remote:
    """A layer Clair downloads itself, with these request headers."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()


class LayerAccess(Protocol):
    def wait(self, index: int, timeout: float) -> Blob | Stream | Remote:
        """How Clair gets layer `index`, once it can."""
        ...

    def check(self) -> None:
        """Raise the acquisition's error, if it failed (a broken save explains Clair's refusal)."""
        ...


@dataclass(frozen=True)
class Target:
    """An image to scan, how to get at its layers (given a private temp dir), and a note for
    the user on where it came from when that was a choice."""

    image: Image
    layer_files: Callable[[str], AbstractContextManager[LayerAccess]]
    note: str = ""


Pending = tuple[str, "Target | ScanError"]
"""An image's name and its target, or the error that kept it from being one."""


@dataclass(frozen=True)
class Options:
    platform: str | None = None
    """os/arch[/variant] for multi-platform images."""
    relay: bool = False
    """Registry layers go through our layer server instead of Clair fetching them."""
    per_layer: bool = False
    """Send Clair every layer instead of one distilled layer (engine images and archives; a
    registry's layers are always sent as they are, since Clair downloads them itself)."""


def split(spec: str) -> tuple[str | None, str]:
    """(source kind or None for a bare reference, the rest)."""
    kind, colon, rest = spec.partition(":")
    if colon and kind in KINDS and not _PORT_AFTER.match(rest):
        return kind, rest
    return None, spec


def resolve(
    specs: list[str],
    options: Options,
    stack: ExitStack,
    head: HeadStart | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Pending]:
    """Targets for every spec, in order. References are checked before anything is asked of an
    engine or a registry; an image that cannot be found is an error for that image only."""
    from . import archive, registry
    from .engine import EngineSource

    parsed = [split(spec) for spec in specs]
    for kind, rest in parsed:
        _check(kind, rest)
    engine = EngineSource(environ, head, distill=not options.per_layer)
    registries = registry.Registries(options, environ, engine)
    stack.callback(registries.close)
    pending: list[Pending] = []
    for spec, (kind, rest) in zip(specs, parsed, strict=True):
        try:
            if kind == "docker":
                pending.append((rest, engine.target(rest)))
            elif kind == "registry":
                pending.append((rest, registries.target(rest)))
            elif kind is None:
                pending.append((rest, _bare(rest, engine, registries)))
            else:
                pending.extend(archive.targets(kind, rest, stack, options))
        except ScanError as exc:
            pending.append((rest or spec, exc))
    return pending


def _check(kind: str | None, rest: str) -> None:
    from .. import reference

    if kind in ("docker-archive", "oci-archive", "oci-dir"):
        if not rest:
            raise UsageError(f"{kind}: needs a path")
    elif kind == "docker" or kind is None:
        reference.check_engine_ref(rest)
    else:
        reference.parse(rest)


def _bare(ref: str, engine: EngineSource, registries: registry.Registries) -> Target:
    """The engine's image if it holds it, otherwise the registry's (the note says which)."""
    try:
        return engine.target(ref)
    except ImageNotFound:
        why = "not in the Docker engine"
    except DockerError as exc:
        why = f"not in a Docker engine ({exc.message})"
    try:
        target = registries.target(ref)
    except ScanError as exc:
        exc.message = f"{ref} is {why}; from its registry: {exc.message}"
        raise
    return Target(target.image, target.layer_files, f"{ref}: {why}; scanning it from its registry")
