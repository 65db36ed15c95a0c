"""The image stage: an image in the Docker engine, its layers and chain IDs, and its export."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests

from .errors import DockerError, ScanError, UsageError, first_line
from .models import Image, Layer
from .names import chain_ids, plain_docker_endpoint
from .threads import start_daemon

if TYPE_CHECKING:
    from .archive import LayerFiles, SocketBody
    from .headstart import SaveRequest

log = logging.getLogger(__name__)

# Connecting to a local engine takes microseconds; one that takes this long is not answering.
CONNECT_TIMEOUT = 30.0


def connect() -> Any:
    """A docker SDK client from the environment (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)."""
    try:
        # Negotiating the API version is a request: it proves the engine answers.
        client = docker.from_env()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        raise DockerError(
            f"cannot reach the Docker engine at {where}: {first_line(exc)}",
            hint="is the Docker daemon running and is DOCKER_HOST right?",
        ) from None
    return client


def inspect(client: Any, ref: str) -> Image:
    """The image's layers from its config: no export needed to know what Clair should hold."""
    try:
        attrs = client.api.inspect_image(ref)
        history = client.api.history(attrs["Id"])
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"image not found: {ref}", hint="build or pull it first, or scan a tarball with --archive"
        ) from None
    except docker.errors.APIError as exc:
        if exc.status_code is not None and 400 <= exc.status_code < 500:
            raise UsageError(f"cannot use image {ref!r}: {first_line(exc)}") from None
        raise DockerError(f"Docker could not inspect {ref}: {first_line(exc)}") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise DockerError(f"Docker could not inspect {ref}: {first_line(exc)}") from None
    diff_ids = list(attrs.get("RootFS", {}).get("Layers") or [])
    if not diff_ids:
        raise UsageError(f"image {ref} has no layers to scan")
    created_by = created_by_from_history(history, len(diff_ids))
    layers = tuple(
        Layer(i, d, c, created_by[i])
        for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True))
    )
    return Image(name=ref, id=attrs["Id"], layers=layers, digests=tuple(attrs.get("RepoDigests") or ()))


def created_by_from_history(history: list[dict[str, Any]], count: int) -> list[str]:
    """Map the engine's history (newest first, no empty-layer flag) onto layers: steps that made a
    layer are the ones with a size; if that does not add up, give up rather than mislabel."""
    steps = list(reversed(history))
    sized = [h for h in steps if int(h.get("Size") or 0) > 0]
    for candidate in (sized, steps):
        if len(candidate) == count:
            return [str(h.get("CreatedBy") or "") for h in candidate]
    return [""] * count


@contextmanager
def exported(
    client: Any, image: Image, workdir: str, started: SaveRequest | None = None
) -> Iterator[LayerFiles]:
    """Stream `docker save` of the image into a spool file in `workdir`, in the background. The
    yielded LayerFiles hands out each layer as soon as its bytes are on disk. A save the head
    start already asked for is used if it is of this very image (the tag may have moved since)."""
    from .archive import CHUNK, LayerFiles, stream_save

    files = LayerFiles(len(image.layers))
    stop = threading.Event()
    spool = os.path.join(workdir, image.id.replace(":", "-") + ".tar")
    if started is not None and started.image_id == image.id:
        log.debug("docker save of %s: using the head start's request", image.name)
        request: SaveRequest | None = started
    else:
        request = _send_save(image)

    def run() -> None:
        try:
            if request is not None:
                source: Iterable[bytes] | SocketBody = request.body()
            else:
                source = client.api.get_image(image.id, chunk_size=CHUNK)
        except ScanError as exc:
            files.finish(exc)
            return
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            files.finish(DockerError(f"docker save of {image.name} failed: {first_line(exc)}"))
            return
        stream_save(source, image, spool, files, stop)

    thread = start_daemon(run, "docker-save")
    try:
        yield files
    finally:
        stop.set()
        if request is not None:
            request.close()  # unblocks the thread if it still waits for the engine
        # The thread notices `stop` at its next chunk; a stalled engine must not hold up cleanup.
        thread.join(timeout=1.0)
        # Scanning several images, each spool goes as soon as its image is done.
        with contextlib.suppress(OSError):
            os.unlink(spool)


def _send_save(image: Image) -> SaveRequest | None:
    """The save asked for on a connection of its own (headstart.send_save), so that it can be
    spliced into the spool; None for an engine behind TLS or ssh, which the docker SDK reaches."""
    from .headstart import send_save

    engine = plain_docker_endpoint(dict(os.environ))
    if engine is None:
        return None
    try:
        return send_save(engine, image.id, CONNECT_TIMEOUT)
    except OSError as exc:
        raise DockerError(f"docker save of {image.name} failed: {first_line(exc)}") from None
