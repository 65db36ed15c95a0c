"""The appliance: the clair-db and clair-local-scan containers, brought up, awaited, reused, removed.

Everything created carries the `io.clair-scan` label, so `clair-scan down` also finds what a killed
run left behind. A warm appliance (`clair-scan up`) is found again by its labels, which record the
ports it was given.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import requests

from .clair import ClairClient, Deadline
from .errors import BackendError, ClairError, UsageError, first_line
from .layerserver import route_address

log = logging.getLogger(__name__)

LABEL = "io.clair-scan"
RUN = "io.clair-scan.run"
ROLE = "io.clair-scan.role"
PORTS = "io.clair-scan.ports"
NETWORK = "io.clair-scan.network"
WARM = "warm"

DB_IMAGE = "arminc/clair-db:latest"
CLAIR_IMAGE = "arminc/clair-local-scan:latest"
# The credentials are those baked into arminc/clair-db; they are not secrets of the user.
DB_USER, DB_PASSWORD = "postgres", "password"

_CONFIG = """\
clair:
  database:
    type: pgsql
    options:
      source: host=postgres port={db} user={user} password={password} sslmode=disable statement_timeout=60000
      cachesize: 16384
  api:
    port: {api}
    healthport: {health}
    timeout: 900s
  updater:
    interval: 2h
  notifier:
    attempts: 3
    renotifyinterval: 2h
"""


@dataclass(frozen=True)
class Settings:
    db_image: str = DB_IMAGE
    clair_image: str = CLAIR_IMAGE
    pull: str = "missing"
    network: str | None = None
    """'host' or 'bridge'; None picks bridge when the engine has one."""
    db_port: int | None = None
    clair_port: int | None = None
    ready_timeout: float = 180.0
    ip: str | None = None
    bind: str | None = None


@dataclass(frozen=True)
class Backend:
    """How to reach a running appliance, and how it reaches us."""

    clair_url: str
    dsn: str
    layer_ip: str
    layer_bind: str
    run: str
    network: str


class Progress:
    def status(self, name: str, text: str) -> None:
        log.info("%s: %s", name, text)

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        """Bytes of long work (a pull's layer, a bundle): `done` of `total` (None: not known)."""


def _docker_host() -> str | None:
    value = os.environ.get("DOCKER_HOST", "")
    if value.startswith(("tcp://", "http://", "https://")):
        return urlsplit(value).hostname
    return None


def service_host() -> str:
    """Where published ports of the engine's containers are reached: under docker-in-docker
    (DOCKER_HOST=tcp://docker:2375) that is the daemon's host, otherwise this machine."""
    return _docker_host() or "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dsn(host: str, port: int) -> str:
    return f"host={host} port={port} user={DB_USER} password={DB_PASSWORD} dbname=postgres connect_timeout=3"


def _labels(run: str, role: str, **extra: str) -> dict[str, str]:
    return {LABEL: "1", RUN: run, ROLE: role, **extra}


def choose_network(client: Any, requested: str | None) -> str:
    if requested in ("host", "bridge"):
        return requested
    if requested is not None:
        raise UsageError(f"unknown --network {requested!r} (expected host or bridge)")
    try:
        return "bridge" if client.networks.list(names=["bridge"]) else "host"
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot list Docker networks: {first_line(exc)}") from None


def _ensure_image(client: Any, ref: str, policy: str, progress: Progress) -> None:
    try:
        client.images.get(ref)
        present = True
    except docker.errors.ImageNotFound:
        present = False
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot inspect {ref}: {first_line(exc)}") from None
    if policy == "never" and not present:
        raise UsageError(
            f"backend image {ref} is not in the Docker engine and --pull never forbids pulling it",
            hint="load it with `clair-scan bundle load FILE` or allow --pull missing",
        )
    if policy == "always" or (policy == "missing" and not present):
        progress.status("backend", f"pulling {ref}")
        try:
            _pull(client, ref, progress)
        except (docker.errors.DockerException, requests.RequestException) as exc:  # the stream may break
            raise _pull_failed(ref, first_line(exc)) from None


def _pull_failed(ref: str, why: str) -> BackendError:
    return BackendError(
        f"cannot pull {ref}: {why}",
        hint="on an offline host, load the images with `clair-scan bundle load FILE`",
    )


def _pull(client: Any, ref: str, progress: Progress) -> None:
    """`docker pull`, showing each layer's download in bytes as the engine reports it (the
    events `docker pull` draws its bars from). A layer is done once downloaded; extracting it
    takes the engine a fraction of that time."""
    sizes: dict[str, int] = {}
    for event in client.api.pull(ref, stream=True, decode=True):
        if "error" in event:  # the engine reports a failed pull in the stream, after its 200
            raise _pull_failed(ref, str(event.get("error") or "").strip() or "the engine gave no reason")
        layer, status = str(event.get("id") or ""), str(event.get("status") or "")
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            sizes[layer] = int(detail["total"])
            progress.transfer(f"pulling {ref}", layer, int(detail.get("current") or 0), sizes[layer])
        elif status == "Extracting" and detail.get("total") and layer not in sizes:
            # A small or quick download may come with no Downloading event: its extraction
            # counts the same compressed bytes.
            sizes[layer] = int(detail["total"])
            progress.transfer(f"pulling {ref}", layer, sizes[layer], sizes[layer])
        elif status in ("Download complete", "Pull complete") and layer in sizes:
            progress.transfer(f"pulling {ref}", layer, sizes[layer], sizes[layer])


def _tail(container: Any, lines: int = 15) -> str:
    try:
        text = container.logs(tail=lines).decode("utf-8", "replace").rstrip()
    except docker.errors.DockerException:
        return ""
    name = container.name
    return "\n".join(f"  {name}| {line}" for line in text.splitlines())


def _logs(containers: list[Any]) -> str:
    return "\n".join(t for t in (_tail(c) for c in containers) if t)


def _check_running(containers: list[Any]) -> None:
    for container in containers:
        try:
            container.reload()
        except docker.errors.NotFound:
            raise BackendError(f"container {container.name} disappeared") from None
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise BackendError(
                f"container {container.name} exited with code {code} during start-up",
                detail=_logs(containers),
            )


def _wait(
    what: str,
    check: Callable[[], str | None],
    containers: list[Any],
    deadline: float,
    timeout: float,
    progress: Progress,
) -> None:
    """Poll `check` (None means ready, else why not) with exponential backoff until the deadline."""
    delay, attempt = 0.2, 0
    while True:
        attempt += 1
        problem = check()
        if problem is None:
            return
        _check_running(containers)
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendError(
                f"{what} was not ready after {timeout:g} s: {problem}",
                hint="raise --ready-timeout on slow hosts",
                detail=_logs(containers),
            )
        progress.status("backend", f"waiting for {what}: {problem} (attempt {attempt})")
        time.sleep(min(delay, left))
        delay = min(delay * 2, 3.0)


def db_problem(dsn: str) -> str | None:
    """None once PostgreSQL accepts connections and holds vulnerability data."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*) FROM vulnerability WHERE deleted_at IS NULL").fetchone()
    except psycopg.errors.UndefinedTable:
        return "no vulnerability table yet"
    except psycopg.Error as exc:
        log.debug("database not ready: %s", first_line(exc))
        return "not accepting connections"
    if not row or not row[0]:
        return "no vulnerability data yet"
    return None


def clair_problem(url: str) -> str | None:
    """None once Clair's API answers with at least one namespace. Asked as the scan asks it (the
    same client, which ignores proxy variables: a proxy cannot reach the appliance's ports)."""
    client = ClairClient(url, retries=0)
    try:
        namespaces = client.namespaces(Deadline(3))
    except ClairError as exc:
        return exc.message
    finally:
        client.close()
    return None if namespaces else "no namespaces yet"


def _put_config(container: Any, text: str) -> None:
    """Write /config/config.yaml into the created container; unlike a bind mount this also works
    when the engine runs on another host (docker-in-docker)."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("config.yaml")
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    container.put_archive("/config", buffer.getvalue())


def _published(container: Any, port: str) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(port) or []
    if not bindings:
        raise BackendError(f"container {container.name} publishes no port for {port}")
    return int(bindings[0]["HostPort"])


def start(client: Any, settings: Settings, progress: Progress, warm: bool = False) -> Backend:
    """Bring the appliance up and wait until it is really ready. On any failure or interrupt,
    whatever was created is removed before the error propagates."""
    mode = choose_network(client, settings.network)
    for ref in (settings.db_image, settings.clair_image):
        _ensure_image(client, ref, settings.pull, progress)
    run = WARM if warm else secrets.token_hex(4)
    suffix = "" if warm else f"-{run}"
    host = service_host()
    remote = _docker_host() is not None
    deadline = time.monotonic() + settings.ready_timeout
    containers: list[Any] = []
    try:
        if mode == "host":
            db_port = settings.db_port or (5432 if remote else _free_port())
            api_port = settings.clair_port or (6060 if remote else _free_port())
            health_port = api_port + 1 if settings.clair_port or remote else _free_port()
            network = "host"
            listen = "*" if remote else "127.0.0.1"
            ports = json.dumps({"api": api_port, "health": health_port, "db": db_port})
            db = client.containers.create(
                settings.db_image,
                command=["postgres", "-p", str(db_port), "-c", f"listen_addresses={listen}"],
                name=f"clair-scan-db{suffix}",
                network_mode="host",
                labels=_labels(run, "db", **{NETWORK: network, PORTS: ports}),
            )
        else:
            network = f"clair-scan{suffix}"
            client.networks.create(network, driver="bridge", labels=_labels(run, "network"))
            publish = "0.0.0.0" if remote else "127.0.0.1"
            endpoint = client.api.create_endpoint_config(aliases=["postgres"])
            db = client.containers.create(
                settings.db_image,
                name=f"clair-scan-db{suffix}",
                network=network,
                networking_config={network: endpoint},
                ports={"5432/tcp": (publish, None)},
                labels=_labels(run, "db", **{NETWORK: network}),
            )
        containers.append(db)
        progress.status("backend", f"starting {settings.db_image}")
        db.start()
        if mode == "bridge":
            db_port = _published(db, "5432/tcp")
        dsn = _dsn(host, db_port)
        _wait("PostgreSQL", lambda: db_problem(dsn), containers, deadline, settings.ready_timeout, progress)

        if mode == "host":
            clair = client.containers.create(
                settings.clair_image,
                name=f"clair-scan-clair{suffix}",
                network_mode="host",
                extra_hosts={"postgres": "127.0.0.1"},
                labels=_labels(run, "clair", **{NETWORK: network, PORTS: ports}),
            )
            containers.append(clair)
            config = _CONFIG.format(
                db=db_port, api=api_port, health=health_port, user=DB_USER, password=DB_PASSWORD
            )
            _put_config(clair, config)
        else:
            clair = client.containers.create(
                settings.clair_image,
                name=f"clair-scan-clair{suffix}",
                network=network,
                ports={"6060/tcp": (publish, None), "6061/tcp": (publish, None)},
                labels=_labels(run, "clair", **{NETWORK: network}),
            )
            containers.append(clair)
        progress.status("backend", f"starting {settings.clair_image}")
        clair.start()
        if mode == "bridge":
            api_port = _published(clair, "6060/tcp")
            health_port = _published(clair, "6061/tcp")
        url = f"http://{host}:{api_port}"
        _wait("Clair", lambda: clair_problem(url), containers, deadline, settings.ready_timeout, progress)
        return _backend(client, settings, run, network, url, dsn)
    except BaseException:
        remove(client, run)
        raise


def _layer_address(settings: Settings, network: str, client: Any) -> tuple[str, str]:
    """(address Clair downloads layers from, address our layer server listens on)."""
    if settings.ip:
        return settings.ip, settings.bind or settings.ip
    daemon = _docker_host()
    if daemon is not None:
        # docker-in-docker: the address of this job that routes to the daemon (`hostname -i`).
        ip = route_address(daemon)
    elif network == "host":
        ip = "127.0.0.1"
    else:
        # Containers on a bridge reach the host through the bridge's gateway address.
        try:
            ipam = client.networks.get(network).attrs["IPAM"]["Config"]
            ip = next(c["Gateway"] for c in ipam if c.get("Gateway"))
        except (docker.errors.DockerException, StopIteration, KeyError) as exc:
            raise BackendError(
                f"cannot find the gateway of network {network}: {exc}", hint="pass --ip"
            ) from None
    return ip, settings.bind or ip


def _backend(client: Any, settings: Settings, run: str, network: str, url: str, dsn: str) -> Backend:
    ip, bind = _layer_address(settings, network, client)
    return Backend(clair_url=url, dsn=dsn, layer_ip=ip, layer_bind=bind, run=run, network=network)


def _running(client: Any, label: str) -> list[Any]:
    try:
        return list(client.containers.list(all=True, filters={"label": label}))
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot list containers: {first_line(exc)}") from None


def find_warm(client: Any, settings: Settings) -> Backend | None:
    """The appliance `clair-scan up` left running, if there is one."""
    roles = {c.labels.get(ROLE): c for c in _running(client, f"{RUN}={WARM}")}
    db, clair = roles.get("db"), roles.get("clair")
    if db is None or clair is None:
        return None
    if db.status != "running" or clair.status != "running":
        raise BackendError(
            "the warm appliance is not running", hint="restart it with `clair-scan down && clair-scan up`"
        )
    network = clair.labels.get(NETWORK, "host")
    host = service_host()
    if network == "host":
        ports = json.loads(clair.labels[PORTS])
        api_port, db_port = int(ports["api"]), int(ports["db"])
    else:
        api_port, db_port = _published(clair, "6060/tcp"), _published(db, "5432/tcp")
    url = f"http://{host}:{api_port}"
    problem = clair_problem(url)
    if problem is not None:
        raise BackendError(
            f"the warm appliance's Clair at {url} is not usable: {problem}",
            hint="restart it with `clair-scan down && clair-scan up`",
        )
    return _backend(client, settings, WARM, network, url, _dsn(host, db_port))


def remove(client: Any, run: str | None = None) -> int:
    """Remove the containers (with their anonymous volumes) and networks of one run, or of all
    runs. Returns how many objects were removed."""
    label = f"{RUN}={run}" if run else LABEL
    removed = 0
    for container in _running(client, label):
        try:
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot remove container {container.name}: {first_line(exc)}") from None
    try:
        networks = client.networks.list(filters={"label": label})
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot list networks: {first_line(exc)}") from None
    for network in networks:
        try:
            network.remove()
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot remove network {network.name}: {first_line(exc)}") from None
    return removed


@contextmanager
def appliance(client: Any, settings: Settings, progress: Progress, keep: bool = False) -> Iterator[Backend]:
    """A ready appliance for one scan: the warm one if `clair-scan up` left one, else a fresh one
    that is removed afterwards, whatever happened (unless `keep` turns it into the warm one)."""
    warm = find_warm(client, settings)
    if warm is not None:
        progress.status("backend", f"using the running appliance at {warm.clair_url}")
        yield warm
        return
    backend = start(client, settings, progress, warm=keep)
    try:
        yield backend
    finally:
        if not keep:
            remove(client, backend.run)


@dataclass(frozen=True)
class Status:
    containers: tuple[tuple[str, str, str], ...]
    """(name, image, state) of every container clair-scan created."""
    clair_url: str | None = None
    clair_problem: str | None = None
    vulnerabilities: tuple[tuple[str, int], ...] = ()
    """(namespace, vulnerability count) from Clair's database."""
    updated: datetime | None = None
    """When Clair last updated its vulnerability data; None if its database does not say."""
    db_problem: str | None = None


def status(client: Any, settings: Settings) -> Status:
    containers = tuple(
        (c.name, (c.image.tags or [c.image.short_id])[0], c.status) for c in _running(client, LABEL)
    )
    try:
        warm = find_warm(client, settings)
    except BackendError as exc:
        return Status(containers, clair_problem=exc.message)
    if warm is None:
        return Status(containers)
    counts, updated, problem = database_facts(warm.dsn)
    return Status(containers, warm.clair_url, clair_problem(warm.clair_url), counts, updated, problem)


def database_facts(dsn: str) -> tuple[tuple[tuple[str, int], ...], datetime | None, str | None]:
    """Vulnerability counts per namespace and the time of the last update, from Clair's own
    tables (`keyvalue` row `updater/last` holds Unix seconds)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT n.name, count(v.id) FROM namespace n"
                " LEFT JOIN vulnerability v ON v.namespace_id = n.id AND v.deleted_at IS NULL"
                " GROUP BY n.name ORDER BY n.name"
            ).fetchall()
            last = conn.execute("SELECT value FROM keyvalue WHERE key = 'updater/last'").fetchone()
    except psycopg.Error as exc:
        return (), None, first_line(exc)
    updated = None
    if last and str(last[0]).strip().isdigit():
        updated = datetime.fromtimestamp(int(str(last[0]).strip()), timezone.utc)
    return tuple((str(n), int(c)) for n, c in rows), updated, None


def bundle_save(client: Any, path: str, refs: list[str], progress: Progress | None = None) -> None:
    """Both backend images in one `docker save` tarball, for hosts without a registry."""
    progress = progress or Progress()
    for ref in refs:
        _ensure_image(client, ref, "missing", progress)
    # The engine does not say how long the tarball will be: its images' sizes come close.
    try:
        expected: int | None = sum(int(client.images.get(ref).attrs.get("Size") or 0) for ref in refs)
    except docker.errors.DockerException:
        expected = None
    what = f"writing {path}"
    api = client.api
    url = f"{api.base_url}/v{api.api_version}/images/get"
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        with api.get(url, params={"names": refs}, stream=True) as response:
            if response.status_code != 200:
                raise BackendError(f"docker save failed: {response.text.strip()[:200]}")
            written = 0
            with open(tmp, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
                    progress.transfer(what, "", written, max(expected or 0, written) or None)
        progress.transfer(what, "", written, written)
        os.replace(tmp, path)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Reading:
    """A file handed to the engine, telling `progress` how much of it was read. Its __len__
    lets requests send a Content-Length rather than chunks."""

    def __init__(self, handle: Any, size: int, progress: Progress, what: str) -> None:
        self._handle, self._size, self._progress, self._what = handle, size, progress, what
        self._done = self._shown = 0

    def __len__(self) -> int:
        return self._size - self._done

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._handle.read(size)
        self._done += len(data)
        # The HTTP client reads 16 KiB at a time: tell once per MiB, and at the end.
        if self._done - self._shown >= 1 << 20 or self._done >= self._size:
            self._shown = self._done
            self._progress.transfer(self._what, "", self._done, self._size)
        return data


def bundle_load(client: Any, path: str, progress: Progress | None = None) -> list[str]:
    """Load a bundle (any `docker save` tarball) into the engine; returns the image tags."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            images = client.images.load(_Reading(handle, size, progress or Progress(), f"reading {path}"))
    except FileNotFoundError:
        raise UsageError(f"bundle not found: {path}") from None
    except docker.errors.DockerException as exc:
        raise UsageError(f"cannot load {path}: {first_line(exc)}") from None
    return [tag for image in images for tag in image.tags]
