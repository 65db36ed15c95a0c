"""The engine source: an image in the Docker engine (or Podman's Docker-compatible socket), its
layers and chain IDs from the image config, and its export: the source asks for `docker save`
and hands the archive reader the one stream (see archive.stream_save)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import dockerapi
from ..errors import DockerError, ImageNotFound, ScanError, UsageError, first_line
from ..models import Image, Layer
from ..names import chain_ids, plain_docker_endpoint
from ..threads import start_daemon

if TYPE_CHECKING:
    from ..archive import LayerFiles, SocketBody
    from ..dockerapi import SaveRequest, Sink
    from ..headstart import HeadStart
    from . import Target

log = logging.getLogger(__name__)

# The docker SDK's default: an engine that takes longer to answer one request is not answering.
TIMEOUT = 60.0


def connect(environ: Mapping[str, str] | None = None) -> Any:
    """A docker SDK client from the environment (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)."""
    import docker
    import requests

    environ = dict(os.environ if environ is None else environ)
    try:
        # Negotiating the API version is a request: it proves the engine answers.
        client = docker.from_env(environment=environ)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _unreachable(environ, exc) from None
    return client


def _unreachable(environ: Mapping[str, str], exc: BaseException) -> DockerError:
    where = environ.get("DOCKER_HOST") or "the local socket"
    return DockerError(
        f"cannot reach the Docker engine at {where}: {first_line(exc)}",
        hint="is the Docker daemon running and is DOCKER_HOST right?",
    )


class Engine:
    """The engine the scan reads images from, as the docker SDK's from_env() finds it. One reached
    without TLS or ssh is asked with the standard library (see dockerapi.py); only the others load
    the docker SDK, on first use."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self.address = plain_docker_endpoint(self._environ)
        self._client: Any = None

    def check(self) -> None:
        """Raise DockerError unless the engine answers: then no image can be scanned."""
        if self.address is None:
            self.client()  # negotiating the API version asks the engine
        elif self.get("/_ping")[0] != 200:
            raise _unreachable(self._environ, ConnectionError("it does not answer /_ping"))

    def client(self) -> Any:
        if self._client is None:
            self._client = connect(self._environ)
        return self._client

    def get(self, path: str) -> tuple[int, bytes]:
        """GET an API path: (status, body)."""
        if self.address is not None:
            try:
                return dockerapi.get(self.address, path, time.monotonic() + TIMEOUT)
            except OSError as exc:
                raise _unreachable(self._environ, exc) from None
        import requests

        api = self.client().api
        try:
            response = api.get(f"{api.base_url}/v{api.api_version}{path}", timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise _unreachable(self._environ, exc) from None
        return response.status_code, response.content

    def request(
        self, method: str, path: str, body: Any = None, sink: Sink | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Any API call, `body` sent as JSON: (status, headers by lower-cased name, body). A 200's
        body goes into `sink` if one is given."""
        payload = None if body is None else json.dumps(body).encode()
        if self.address is not None:
            try:
                deadline = time.monotonic() + TIMEOUT
                return dockerapi.request(self.address, method, path, deadline, payload, sink)
            except OSError as exc:
                raise _unreachable(self._environ, exc) from None
        import requests

        api = self.client().api
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        url = f"{api.base_url}/v{api.api_version}{path}"
        try:
            response = api.request(
                method, url, data=payload, headers=headers, timeout=TIMEOUT, stream=sink is not None
            )
            found = {name.lower(): value for name, value in response.headers.items()}
            if sink is not None and response.status_code == 200:
                for chunk in response.iter_content(1 << 20):
                    sink.write(chunk)
                return response.status_code, found, b""
        except requests.RequestException as exc:
            raise _unreachable(self._environ, exc) from None
        return response.status_code, found, response.content

    def send_save(self, image: Image) -> SaveRequest | None:
        """The save asked for on a connection of its own (dockerapi.send_save), so that it can be
        spliced into the spool; None for an engine the docker SDK reaches (see save_chunks)."""
        if self.address is None:
            return None
        try:
            return dockerapi.send_save(self.address, image.id, TIMEOUT)
        except OSError as exc:
            raise _save_failed(image, exc) from None

    def save_chunks(self, image: Image) -> Iterable[bytes]:
        """The save as the docker SDK streams it (chunked, decoded in Python)."""
        import docker
        import requests

        from ..archive import CHUNK

        try:
            chunks: Iterable[bytes] = self.client().api.get_image(image.id, chunk_size=CHUNK)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise _save_failed(image, exc) from None
        return chunks


def inspect(engine: Engine, ref: str) -> Image:
    """The image's layers from its config: no export needed to know what Clair should hold."""
    attrs = _image_json(engine, ref, f"/images/{quote(ref, safe='/:')}/json")
    history = _image_json(engine, ref, f"/images/{quote(attrs['Id'], safe=':')}/history")
    diff_ids = list(attrs.get("RootFS", {}).get("Layers") or [])
    if not diff_ids:
        raise UsageError(f"image {ref} has no layers to scan")
    created_by = created_by_from_history(history, len(diff_ids))
    layers = tuple(
        Layer(i, d, c, created_by[i])
        for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True))
    )
    return Image(name=ref, id=attrs["Id"], layers=layers, digests=tuple(attrs.get("RepoDigests") or ()))


def _image_json(engine: Engine, ref: str, path: str) -> Any:
    status, body = engine.get(path)
    if status == 404:
        raise ImageNotFound(
            f"image not found: {ref}",
            hint="build or pull it first, or scan it with registry:REF or docker-archive:FILE",
        )
    if 400 <= status < 500:
        raise UsageError(f"cannot use image {ref!r}: {dockerapi.message(body)}")
    if status != 200:
        raise DockerError(f"Docker could not inspect {ref}: {status} {dockerapi.message(body)}")
    try:
        return json.loads(body)
    except ValueError:
        raise DockerError(f"Docker answered the inspection of {ref} with a body that is not JSON") from None


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
    engine: Engine, image: Image, workdir: str, started: SaveRequest | None = None
) -> Iterator[LayerFiles]:
    """Stream `docker save` of the image into a spool file in `workdir`, in the background. The
    yielded LayerFiles hands out each layer as soon as its bytes are on disk. A save the head
    start already asked for is used if it is of this very image (the tag may have moved since)."""
    from ..archive import LayerFiles, stream_save

    files = LayerFiles(len(image.layers))
    stop = threading.Event()
    spool = os.path.join(workdir, image.id.replace(":", "-") + ".tar")
    if started is not None and started.image_id == image.id:
        log.debug("docker save of %s: using the head start's request", image.name)
        request: SaveRequest | None = started
    else:
        request = engine.send_save(image)

    def run() -> None:
        try:
            source: Iterable[bytes] | SocketBody
            source = request.body() if request is not None else engine.save_chunks(image)
        except ScanError as exc:
            files.finish(exc)
            return
        except OSError as exc:
            files.finish(_save_failed(image, exc))
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


def _save_failed(image: Image, exc: BaseException) -> DockerError:
    return DockerError(f"docker save of {image.name} failed: {first_line(exc)}")


class EngineSource:
    """`docker:REF`: images in the engine. The engine is asked once whether it answers, on first
    use; the first image's export may already be under way (see headstart)."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, head: HeadStart | None = None, distill: bool = False
    ) -> None:
        self._environ = environ
        self._head = head
        self._distill = distill
        self._engine: Engine | None = None
        self._error: DockerError | None = None

    def engine(self) -> Engine:
        if self._error is not None:
            raise self._error
        if self._engine is None:
            engine = Engine(self._environ)
            try:
                engine.check()
            except DockerError as exc:
                self._error = exc
                raise
            self._engine = engine
        return self._engine

    def platform(self) -> str | None:
        """The engine's os/arch, when an engine already answered this run."""
        if self._engine is None:
            return None
        status, body = self._engine.get("/version")
        try:
            facts = json.loads(body) if status == 200 else {}
            return f"{facts['Os']}/{_GOARCH.get(facts['Arch'], facts['Arch'])}"
        except (ValueError, KeyError, TypeError):
            return None

    def target(self, ref: str) -> Target:
        from . import Target

        engine = self.engine()
        img = inspect(engine, ref)
        if self._distill:
            from . import distill

            # Nothing is created before the scan finds that Clair lacks the distilled layer: a
            # rescan creates no container.
            def distilled(workdir: str) -> contextlib.AbstractContextManager[LayerFiles]:
                return distill.from_engine(engine, img, workdir)

            return Target(distill.distilled(img), distilled)
        started = None
        if self._head is not None and self._head.ref == ref:
            started, self._head = self._head.save, None  # its one response serves one export

        def export(workdir: str) -> contextlib.AbstractContextManager[LayerFiles]:
            return exported(engine, img, workdir, started)

        return Target(img, export)


# The engine reports Go's names already; this maps the odd ones older engines used.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
