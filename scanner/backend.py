"""The appliance: the clair-db and clair-local-scan containers, brought up, awaited, reused, removed.

Two flavours share everything here but what a `Flavour` names: Clair v2 (arminc/clair-db,
arminc/clair-local-scan) and Clair v4 (their -v4 pair, CLAIR_V4_API.md), each with a config of
ours, its own readiness probe and its own way to tell the data's age. Their warm appliances have
names of their own and may run side by side.

Everything created carries the `io.clair-scan` label, so `clair-scan down` also finds what a killed
run left behind, and the ID of the run that created it (`io.clair-scan.owner`): a run cleans up only
what it created itself, never the appliance another run started at the same moment. A warm
appliance (`clair-scan up`) is found again by its labels, which record the ports it was given and
how often Clair updates its data.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import signal
import socket
import tarfile
import threading
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

from .clair import ClairClient, Deadline, json_object
from .errors import BackendError, ClairError, UsageError, first_line
from .layerserver import route_address
from .threads import start_daemon

log = logging.getLogger(__name__)

LABEL = "io.clair-scan"
RUN = "io.clair-scan.run"
ROLE = "io.clair-scan.role"
PORTS = "io.clair-scan.ports"
CREATOR = "io.clair-scan.creator"
"""host/pid of the process that created it: an appliance half made by a run that is gone is not
waited for."""
NETWORK = "io.clair-scan.network"
OWNER = "io.clair-scan.owner"
UPDATES = "io.clair-scan.update-interval"
"""Seconds between Clair's vulnerability updates in a warm appliance; 0: never."""
WARM = "warm"
# Clair's own default, and what `up --update` asks for: arminc/clair-db is rebuilt daily, so the
# first update starts as soon as Clair does.
DEFAULT_UPDATE_INTERVAL = 7200.0

API = "io.clair-scan.api"
"""v2 or v4: which Clair the appliance runs (none: an older clair-scan's, v2)."""

DB_IMAGE = "arminc/clair-db:latest"
CLAIR_IMAGE = "arminc/clair-local-scan:latest"
DB_IMAGE_V4 = "arminc/clair-db-v4:latest"
CLAIR_IMAGE_V4 = "arminc/clair-local-scan-v4:latest"
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
    interval: {interval}
  notifier:
    attempts: 3
    renotifyinterval: 2h
"""


@dataclass(frozen=True)
class Settings:
    api: str = "v2"
    """Which Clair the appliance runs: v2 (arminc/clair-local-scan) or v4 (…-v4)."""
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
    update_interval: float = 0.0
    """Seconds between Clair's vulnerability updates; 0 (a scan's own appliance, and `up` unless
    asked) never updates: a fresh appliance would otherwise start a full network update that
    competes with the scan for CPU and writes to the database the scan reads."""


def clair_config(db: int, api: int, health: int, update_interval: float) -> str:
    """The appliance's Clair config; `interval: 0` disables Clair v2's updater."""
    interval = f"{round(update_interval)}s" if update_interval > 0 else "0"
    return _CONFIG.format(
        db=db, api=api, health=health, user=DB_USER, password=DB_PASSWORD, interval=interval
    )


@dataclass(frozen=True)
class Backend:
    """How to reach a running appliance, and how it reaches us."""

    clair_url: str
    dsn: str
    layer_ip: str
    layer_bind: str
    run: str
    owner: str
    """The ID of the run that created it: that run's cleanup removes what carries it."""
    network: str
    update_interval: float | None = None
    """Seconds between Clair's vulnerability updates (0: never); None if the appliance does not
    say (one started by an older clair-scan)."""
    api: str = "v2"
    health_url: str = ""
    """Clair's health (v2) or introspection (v4) port."""


class Progress:
    def status(self, name: str, text: str) -> None:
        log.info("%s: %s", name, text)

    def warn(self, text: str) -> None:
        """One line the user must see even where progress is hidden (a cleanup that is slow to end)."""
        log.warning("%s", text)

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        """Bytes of long work (a pull's layer, a bundle): `done` of `total` (None: not known)."""


class Conflict(BackendError):
    """Another run created an object of that name first: two `up`s at the same moment."""


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


def _labels(run: str, owner: str, role: str, **extra: str) -> dict[str, str]:
    creator = f"{socket.gethostname()}/{os.getpid()}"
    return {LABEL: "1", RUN: run, OWNER: owner, ROLE: role, CREATOR: creator, **extra}


def _creator_gone(container: Any) -> bool:
    """Whether the process that created the container has ended; only known on the same host."""
    host, _, pid = container.labels.get(CREATOR, "").rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        return False
    return False


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the engine has answered: a create cut short on our side may
    still complete in the engine, and the cleanup must then find the object it made."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _create(what: str, name: str, create: Callable[[], Any]) -> Any:
    """Create a container or network named `name`; a name another run took first is a Conflict."""
    with _signals_held():
        try:
            return create()
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise Conflict(f"{what} {name} already exists") from None
            raise BackendError(f"cannot create {what} {name}: {first_line(exc)}") from None
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot create {what} {name}: {first_line(exc)}") from None


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


# Clair v4 (CLAIR_V4_API.md). As arminc ships it, Clair 4.7.4's RHEL repository scanner downloads
# Red Hat's repository-to-CPE mapping at start; offline that fails, and every index then fails
# with 500, Alpine and Debian images too (§2.1). Local mapping files stop the download: stubs with
# no entries cost only RHEL CPE detection, which the arminc data does not serve offline anyway.
REPO2CPE = "repository-to-cpe.json"
NAME2REPOS = "container-name-repos-map.json"
_EMPTY_MAPPING = '{"data": {}}\n'
V4_DEFAULT_UPDATE_INTERVAL = 6 * 3600.0
"""Clair v4's own `matcher.period`, what `up --update --backend v4` asks for."""
_NO_SUCH_MANIFEST = "sha256:" + "0" * 64


def clair_config_v4(db: int, api: int, introspection: int, update_interval: float) -> dict[str, str]:
    """The v4 appliance's files under /config: Clair's config and the scanners' local mapping
    files. The three services share arminc's database (the connstring is arminc's, with our
    port); migrations stay on, as arminc has them. Updaters are off (`disable_updaters`) unless
    asked for; then `period` is the interval. No `airgap`: the mapping files are what an offline
    index needs (airgap does not help, §2.1), and airgap would refuse a layer server on a
    public --ip."""
    connstring = (
        f"host=postgres port={db} user={DB_USER} password={DB_PASSWORD}"
        " sslmode=disable statement_timeout=60000"
    )
    matcher: dict[str, Any] = {"connstring": connstring, "migrations": True}
    if update_interval > 0:
        matcher["period"] = f"{round(update_interval)}s"
    else:
        matcher["disable_updaters"] = True
    config = {
        "http_listen_addr": f":{api}",
        "introspection_addr": f":{introspection}",
        "log_level": "info",
        "indexer": {
            "connstring": connstring,
            "migrations": True,
            "scanner": {
                "repo": {
                    "rhel-repository-scanner": {
                        "repo2cpe_mapping_file": f"/config/{REPO2CPE}",
                        "disable_api": True,
                    }
                },
                "package": {
                    "rhel_containerscanner": {"name2repos_mapping_file": f"/config/{NAME2REPOS}"},
                    "java": {"disable_api": True},  # Maven search RPCs would time out offline
                },
            },
        },
        "matcher": matcher,
        "notifier": {"connstring": connstring, "migrations": True},
    }
    import yaml

    text = yaml.safe_dump(config, sort_keys=False)
    return {"config.yaml": text, REPO2CPE: _EMPTY_MAPPING, NAME2REPOS: _EMPTY_MAPPING}


def pg_problem(dsn: str) -> str | None:
    """None once PostgreSQL accepts connections: Clair v4 exits at once when it cannot connect,
    and migrates the schema itself, so the data is asked of Clair (`clair_v4_problem`)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        log.debug("database not ready: %s", first_line(exc))
        return "not accepting connections"
    return None


def clair_v4_problem(url: str, introspection: str) -> str | None:
    """None once Clair v4 says it is ready on its introspection port (services built, API bound)
    and its matcher holds vulnerability data: it answers 202 to any vulnerability report while
    its vulnerability table is empty, before looking the manifest up, and 404 for an unknown
    manifest once it holds data (§4.1)."""
    deadline = Deadline(3)
    probe = ClairClient(introspection, retries=0)
    try:
        ready = probe.call("GET", "/readyz", deadline, ok=(200, 503))
    except ClairError as exc:
        return exc.message
    finally:
        probe.close()
    if ready.status != 200:
        return "/readyz answers 503"
    client = ClairClient(url, retries=0)
    try:
        answer = client.call(
            "GET", f"/matcher/api/v1/vulnerability_report/{_NO_SUCH_MANIFEST}", deadline, ok=(202, 404)
        )
    except ClairError as exc:
        return exc.message
    finally:
        client.close()
    return "no vulnerability data yet" if answer.status == 202 else None


def _rfc3339(text: str) -> datetime | None:
    """Go's RFC 3339 times (nanoseconds, `Z`), which datetime.fromisoformat reads only from 3.11 on."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        return None
    stamp, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    return datetime.fromisoformat(f"{stamp}.{micro}{'+00:00' if zone == 'Z' else zone}").astimezone(
        timezone.utc
    )


def update_operation_facts(url: str) -> DataFacts:
    """When each updater last brought vulnerability data, from the matcher's update operations
    (`internal/update_operation`, §4.3); the data's age is that of the newest."""
    client = ClairClient(url, retries=1)
    try:
        answer = client.call(
            "GET",
            "/matcher/api/v1/internal/update_operation?kind=vulnerability&latest=true",
            Deadline(10),
            ok=(200,),
        )
        operations = json_object(answer)
    except ClairError as exc:
        return DataFacts(updating=None, problem=exc.message)
    finally:
        client.close()
    updaters: list[tuple[str, datetime]] = []
    for name, listed in sorted(operations.items()):
        dates = [_rfc3339(str(op.get("date", ""))) for op in listed or [] if isinstance(op, dict)]
        known = [d for d in dates if d is not None]
        if known:
            updaters.append((str(name), max(known)))
    updated = max((d for _, d in updaters), default=None)
    return DataFacts(updated=updated, updating=None, updaters=tuple(updaters))


def _put_config(container: Any, files: dict[str, str]) -> None:
    """Write the files (config.yaml and what it names) into /config of the created container;
    unlike a bind mount this also works when the engine runs on another host (docker-in-docker)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    try:
        container.put_archive("/config", buffer.getvalue())
    except docker.errors.DockerException as exc:
        raise BackendError(
            f"cannot write Clair's config into {container.name}: {first_line(exc)}",
            hint="is --clair-image a Clair image (it has a /config directory)?",
        ) from None


def _published(container: Any, port: str) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(port) or []
    if not bindings:
        raise BackendError(f"container {container.name} publishes no port for {port}")
    return int(bindings[0]["HostPort"])


def start(client: Any, settings: Settings, progress: Progress, warm: bool = False) -> Backend:
    """Bring the appliance up and wait until it is really ready. On any failure or interrupt,
    whatever this run created is removed before the error propagates; nothing else is. A warm
    appliance another run is creating at the same moment raises Conflict (see `ensure_warm`)."""
    flavour = FLAVOURS[settings.api]
    mode = choose_network(client, settings.network)
    for ref in (settings.db_image, settings.clair_image):
        _ensure_image(client, ref, settings.pull, progress)
    owner = secrets.token_hex(6)
    run = flavour.warm if warm else owner[:8]
    suffix = "" if warm else f"-{run}"
    host = service_host()
    remote = _docker_host() is not None
    deadline = time.monotonic() + settings.ready_timeout
    containers: list[Any] = []
    updates = {UPDATES: f"{settings.update_interval:g}"}
    db_name, clair_name = f"{flavour.prefix}-db{suffix}", f"{flavour.prefix}-clair{suffix}"
    api = {API: flavour.api}
    try:
        if mode == "host":
            db_port = settings.db_port or (5432 if remote else _free_port())
            api_port = settings.clair_port or (6060 if remote else _free_port())
            health_port = api_port + 1 if settings.clair_port or remote else _free_port()
            network = "host"
            listen = "*" if remote else "127.0.0.1"
            ports = json.dumps({"api": api_port, "health": health_port, "db": db_port})
            db = _create(
                "container",
                db_name,
                lambda: client.containers.create(
                    settings.db_image,
                    command=["postgres", "-p", str(db_port), "-c", f"listen_addresses={listen}"],
                    name=db_name,
                    network_mode="host",
                    labels=_labels(run, owner, "db", **{NETWORK: network, PORTS: ports, **api}),
                ),
            )
        else:
            network = f"{flavour.prefix}{suffix}"
            _create(
                "network",
                network,
                lambda: client.networks.create(
                    network,
                    driver="bridge",
                    check_duplicate=True,
                    labels=_labels(run, owner, "network", **api),
                ),
            )
            publish = "0.0.0.0" if remote else "127.0.0.1"
            endpoint = client.api.create_endpoint_config(aliases=["postgres"])
            db = _create(
                "container",
                db_name,
                lambda: client.containers.create(
                    settings.db_image,
                    name=db_name,
                    network=network,
                    networking_config={network: endpoint},
                    ports={"5432/tcp": (publish, None)},
                    labels=_labels(run, owner, "db", **{NETWORK: network, **api}),
                ),
            )
        containers.append(db)
        progress.status("backend", f"starting {settings.db_image}")
        db.start()
        if mode == "bridge":
            db_port = _published(db, "5432/tcp")
        dsn = _dsn(host, db_port)
        _wait(
            "PostgreSQL",
            lambda: flavour.db_problem(dsn),
            containers,
            deadline,
            settings.ready_timeout,
            progress,
        )

        if mode == "host":
            clair = _create(
                "container",
                clair_name,
                lambda: client.containers.create(
                    settings.clair_image,
                    name=clair_name,
                    network_mode="host",
                    extra_hosts={"postgres": "127.0.0.1"},
                    labels=_labels(run, owner, "clair", **{NETWORK: network, PORTS: ports, **updates, **api}),
                ),
            )
            config = flavour.config(db_port, api_port, health_port, settings.update_interval)
        else:
            inside = {
                f"{flavour.api_port}/tcp": (publish, None),
                f"{flavour.health_port}/tcp": (publish, None),
            }
            clair = _create(
                "container",
                clair_name,
                lambda: client.containers.create(
                    settings.clair_image,
                    name=clair_name,
                    network=network,
                    ports=inside,
                    labels=_labels(run, owner, "clair", **{NETWORK: network, **updates, **api}),
                ),
            )
            # The image's own config would run the updater (v2: every 2 h; v4: at every start).
            config = flavour.config(5432, flavour.api_port, flavour.health_port, settings.update_interval)
        containers.append(clair)
        _put_config(clair, config)
        progress.status("backend", f"starting {settings.clair_image}")
        clair.start()
        if mode == "bridge":
            api_port = _published(clair, f"{flavour.api_port}/tcp")
            health_port = _published(clair, f"{flavour.health_port}/tcp")
        url, health = f"http://{host}:{api_port}", f"http://{host}:{health_port}"
        _wait(
            "Clair",
            lambda: flavour.clair_problem(url, health),
            containers,
            deadline,
            settings.ready_timeout,
            progress,
        )
        return _backend(client, settings, run, owner, network, url, dsn, settings.update_interval, health)
    except BaseException as exc:
        cleanup(client, owner, progress, interrupted=isinstance(exc, KeyboardInterrupt))
        raise


def ensure_warm(client: Any, settings: Settings, progress: Progress) -> tuple[Backend, bool]:
    """The warm appliance, started if there is none; (it, whether this run started it). When
    another run starts it at the same moment (two CI jobs on one runner), one wins the names and
    the others wait for its appliance to be ready rather than fail or remove it."""
    deadline = time.monotonic() + settings.ready_timeout
    while True:
        running = _await_warm(client, settings, progress, deadline)
        if running is not None:
            return running, False
        try:
            return start(client, settings, progress, warm=True), True
        except Conflict:
            progress.status("backend", "another clair-scan run is starting the appliance; waiting for it")
            # The engine frees a name a moment after the container stops being listed.
            time.sleep(0.2)
        if time.monotonic() >= deadline:
            raise BackendError(
                f"the appliance was not ready after {settings.ready_timeout:g} s",
                hint="another clair-scan run kept creating and removing it; try `clair-scan up` again",
            )


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


def _backend(
    client: Any,
    settings: Settings,
    run: str,
    owner: str,
    network: str,
    url: str,
    dsn: str,
    update_interval: float | None,
    health: str,
) -> Backend:
    ip, bind = _layer_address(settings, network, client)
    return Backend(url, dsn, ip, bind, run, owner, network, update_interval, settings.api, health)


def _running(client: Any, label: str) -> list[Any]:
    try:
        # Another run may remove one between the listing and its inspection (two `down`s).
        return list(client.containers.list(all=True, filters={"label": label}, ignore_removed=True))
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot list containers: {first_line(exc)}") from None


_RESTART = "restart it with `clair-scan down && clair-scan up`"


def _warm_problem(client: Any, settings: Settings) -> tuple[Backend | None, str | None]:
    """(the warm appliance, None) when it is ready; (None, None) when there is none; (None, why
    not yet) while it is being started. Raises when it is there but broken for good."""
    flavour = FLAVOURS[settings.api]
    roles = {c.labels.get(ROLE): c for c in _running(client, f"{RUN}={flavour.warm}")}
    if not roles:
        return None, None
    for container in roles.values():
        if container.status in ("exited", "dead", "paused"):
            raise BackendError(
                f"the warm appliance is not running ({container.name} is {container.status})", hint=_RESTART
            )
    if any(c.status == "removing" for c in roles.values()):
        return None, "it is being removed"  # by a run that failed to start it, or by `down`
    db, clair = roles.get("db"), roles.get("clair")
    if db is None or clair is None or db.status != "running" or clair.status != "running":
        if any(_creator_gone(c) for c in roles.values()):
            raise BackendError(
                "the warm appliance is incomplete and the run that started it is gone",
                hint="remove it with `clair-scan down`, then start it again",
            )
        return None, "its containers are still being created"
    network = clair.labels.get(NETWORK, "host")
    host = service_host()
    try:
        if network == "host":
            ports = json.loads(clair.labels[PORTS])
            api_port, health_port, db_port = int(ports["api"]), int(ports["health"]), int(ports["db"])
        else:
            api_port = _published(clair, f"{flavour.api_port}/tcp")
            health_port = _published(clair, f"{flavour.health_port}/tcp")
            db_port = _published(db, "5432/tcp")
    except (BackendError, docker.errors.DockerException, KeyError, ValueError):
        return None, "its ports are not published yet"
    url, health = f"http://{host}:{api_port}", f"http://{host}:{health_port}"
    problem = flavour.clair_problem(url, health)
    if problem is not None:
        return None, f"Clair at {url}: {problem}"
    owner = clair.labels.get(OWNER, "")
    interval = float(clair.labels[UPDATES]) if UPDATES in clair.labels else None
    dsn = _dsn(host, db_port)
    return _backend(client, settings, flavour.warm, owner, network, url, dsn, interval, health), None


def _await_warm(client: Any, settings: Settings, progress: Progress, deadline: float) -> Backend | None:
    """The warm appliance once it is ready, None if there is none. One that another run is still
    starting is waited for until `deadline`."""
    delay = 0.2
    while True:
        running, problem = _warm_problem(client, settings)
        if problem is None:
            return running
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendError(
                f"the warm appliance is not usable: {problem}",
                hint=f"unless another run is still starting it, {_RESTART}",
            )
        progress.status("backend", f"waiting for the appliance another run is starting: {problem}")
        time.sleep(min(delay, left))
        delay = min(delay * 2, 2.0)


def find_warm(client: Any, settings: Settings) -> Backend | None:
    """The appliance `clair-scan up` left running, if there is one; raises when it is not usable."""
    return _await_warm(client, settings, Progress(), deadline=0.0)


def _remove_container(container: Any) -> bool:
    """Remove one container; False when it was already gone. Another run removing it at the same
    moment (two `down`s) is waited for, not an error."""
    try:
        container.remove(force=True, v=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: "removal of container ... is already in progress"
            raise BackendError(f"cannot remove container {container.name}: {first_line(exc)}") from None
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot remove container {container.name}: {first_line(exc)}") from None
    for _ in range(300):
        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot inspect container {container.name}: {first_line(exc)}") from None
        time.sleep(0.1)
    raise BackendError(f"container {container.name} is still being removed after 30 s")


def _remove_network(network: Any) -> bool:
    for _ in range(100):
        try:
            network.remove()
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            # Containers another run is removing can still hold an endpoint for a moment.
            if exc.status_code not in (403, 409) and "active endpoints" not in str(exc):
                raise BackendError(f"cannot remove network {network.name}: {first_line(exc)}") from None
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot remove network {network.name}: {first_line(exc)}") from None
        time.sleep(0.1)
    raise BackendError(f"network {network.name} still has containers attached after 10 s")


def remove(
    client: Any, run: str | None = None, pending: list[str] | None = None, api: str | None = None
) -> int:
    """Remove the containers (with their anonymous volumes) and networks of one run, or of all
    runs (only the v2 or the v4 appliance's with `api`). Returns how many objects this call
    removed. `pending` is kept up to date with the names still to go, for a cleanup that reports
    on itself."""
    return _remove_labelled(client, f"{RUN}={run}" if run else LABEL, pending, api)


def _labelled(client: Any, label: str) -> tuple[list[Any], list[Any]]:
    containers = _running(client, label)
    try:
        networks = client.networks.list(filters={"label": label})
    except docker.errors.DockerException as exc:
        raise BackendError(f"cannot list networks: {first_line(exc)}") from None
    return containers, networks


def _remove_labelled(
    client: Any, label: str, pending: list[str] | None = None, api: str | None = None
) -> int:
    containers, networks = _labelled(client, label)
    if api is not None:  # what carries no API label is v2's, made before v4 was
        containers = [c for c in containers if c.labels.get(API, "v2") == api]
        networks = [n for n in networks if (n.attrs.get("Labels") or {}).get(API, "v2") == api]
    pending = [] if pending is None else pending
    pending[:] = [c.name for c in containers] + [n.name for n in networks]
    removed = 0
    for container in containers:
        removed += _remove_container(container)
        pending.remove(container.name)
    for network in networks:
        removed += _remove_network(network)
        pending.remove(network.name)
    return removed


_STOPS = {signal.SIGINT, signal.SIGTERM}


def cleanup(client: Any, owner: str, progress: Progress, interrupted: bool = False) -> None:
    """Remove what the run `owner` created, and nothing else, surviving Ctrl-C and SIGTERM.

    The removal runs in a thread of its own while this one holds the signals back and takes them
    one by one, so no signal can cut a Docker request short or land between two
    steps. A second signal (counting the one that started the cleanup, if `interrupted`) is
    answered with what is still being removed; only the third gives up, naming what remains.
    Afterwards the signals received are raised again, so the run still ends as interrupted. A
    failure to remove is reported and, unless an error is already on its way out, raised."""
    pending: list[str] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def work(containers: list[Any], networks: list[Any]) -> None:
        try:
            for container in containers:
                _remove_container(container)
                pending.remove(container.name)
            for network in networks:
                _remove_network(network)
                pending.remove(network.name)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
        finally:
            done.set()

    received: list[int] = []
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        try:  # a listing is quick; signals wait for it, so the names below are always known
            containers, networks = _labelled(client, f"{OWNER}={owner}")
        except BackendError as exc:
            failure.append(exc)
            containers, networks = [], []
        pending[:] = [c.name for c in containers] + [n.name for n in networks]
        if pending:
            progress.status("backend", "removing " + ", ".join(pending))
        start_daemon(work, "clair-scan-cleanup", containers=containers, networks=networks)
        while not done.is_set():
            signum = _next_signal(0.05)
            if signum is None:
                continue
            received.append(signum)
            left = ", ".join(pending) or "the appliance"
            if interrupted + len(received) >= 3:
                progress.warn(f"gave up removing {left}; `clair-scan down` removes it")
                break
            progress.warn(f"still removing {left}; interrupt once more to give up")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if received:
        _raise_signal(received[-1])
    if failure:
        error = failure[0]
        if interrupted or not isinstance(error, BackendError):
            progress.warn(f"cleanup failed: {error}")
        else:
            raise error


def _next_signal(timeout: float) -> int | None:
    """The next SIGINT or SIGTERM held back, waiting up to `timeout` seconds for one."""
    if hasattr(signal, "sigtimedwait"):  # Linux: returns as soon as one arrives
        caught = signal.sigtimedwait(_STOPS, timeout)
        return caught.si_signo if caught else None
    time.sleep(timeout)
    waiting = signal.sigpending() & _STOPS
    return signal.sigwait(waiting) if waiting else None  # returns at once: one is pending


def _raise_signal(signum: int) -> None:
    """Deliver a signal taken off the queue again, through the handler the CLI installed (which
    raises KeyboardInterrupt, or its subclass for SIGTERM)."""
    if callable(signal.getsignal(signum)):
        signal.raise_signal(signum)
    raise KeyboardInterrupt


@contextmanager
def appliance(client: Any, settings: Settings, progress: Progress, keep: bool = False) -> Iterator[Backend]:
    """A ready appliance for one scan: the warm one if `clair-scan up` left one (or is starting
    one), else a fresh one that is removed afterwards, whatever happened (unless `keep` turns it
    into the warm one)."""
    if keep:
        kept, _ = ensure_warm(client, settings, progress)
        yield kept
        return
    warm = _await_warm(client, settings, progress, time.monotonic() + settings.ready_timeout)
    if warm is not None:
        progress.status("backend", f"using the running appliance at {warm.clair_url}")
        yield warm
        return
    backend = start(client, settings, progress)
    try:
        yield backend
    except BaseException as exc:
        cleanup(client, backend.owner, progress, interrupted=isinstance(exc, KeyboardInterrupt))
        raise
    cleanup(client, backend.owner, progress)


@dataclass(frozen=True)
class DataFacts:
    """What Clair's own database says about its vulnerability data."""

    vulnerabilities: tuple[tuple[str, int], ...] = ()
    """(namespace, vulnerability count)."""
    updated: datetime | None = None
    """When Clair last finished an update; None if its database does not say."""
    updating: bool | None = False
    """Whether Clair's updater holds its lock now, i.e. an update is running; None: Clair v4
    does not say."""
    problem: str | None = None
    """Why the database could not be read."""
    updaters: tuple[tuple[str, datetime], ...] = ()
    """Clair v4: (updater, when it last brought data)."""


@dataclass(frozen=True)
class Status:
    containers: tuple[tuple[str, str, str], ...]
    """(name, image, state) of every container clair-scan created."""
    clair_url: str | None = None
    clair_problem: str | None = None
    data: DataFacts = DataFacts()
    update_interval: float | None = None
    """Seconds between the warm appliance's updates (0: never); None if it does not say."""


def status(client: Any, settings: Settings) -> Status:
    listed = tuple(
        (c.name, (c.image.tags or [c.image.short_id])[0], c.status) for c in _running(client, LABEL)
    )
    try:
        warm = find_warm(client, settings)
    except BackendError as exc:
        return Status(listed, clair_problem=str(exc))
    if warm is None:
        return Status(listed)
    flavour = FLAVOURS[warm.api]
    problem = flavour.clair_problem(warm.clair_url, warm.health_url)
    return Status(listed, warm.clair_url, problem, data_facts(warm), warm.update_interval)


def database_facts(dsn: str) -> DataFacts:
    """Vulnerability counts per namespace, the time of the last update and whether one is running,
    from Clair's own tables: `keyvalue` row `updater/last` holds Unix seconds, and the updater
    holds the `lock` row `updater` while it runs (refreshed before it expires)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT n.name, count(v.id) FROM namespace n"
                " LEFT JOIN vulnerability v ON v.namespace_id = n.id AND v.deleted_at IS NULL"
                " GROUP BY n.name ORDER BY n.name"
            ).fetchall()
            last = conn.execute("SELECT value FROM keyvalue WHERE key = 'updater/last'").fetchone()
            lock = conn.execute(
                "SELECT count(*) FROM lock WHERE name = 'updater' AND until > CURRENT_TIMESTAMP"
            ).fetchone()
    except psycopg.Error as exc:
        return DataFacts(problem=first_line(exc))
    updated = None
    if last and str(last[0]).strip().isdigit():
        updated = datetime.fromtimestamp(int(str(last[0]).strip()), timezone.utc)
    counts = tuple((str(n), int(c)) for n, c in rows)
    return DataFacts(counts, updated, bool(lock and lock[0]))


def data_facts(running: Backend) -> DataFacts:
    """What the running appliance's Clair says about its vulnerability data and its age."""
    return FLAVOURS[running.api].facts(running)


@dataclass(frozen=True)
class Flavour:
    """What differs between the v2 and the v4 appliance; everything else is shared."""

    api: str
    db_image: str
    clair_image: str
    prefix: str
    """Container and network names start with it."""
    warm: str
    """The run label of the warm appliance (`clair-scan up`)."""
    api_port: int
    health_port: int
    """Clair's ports inside its container on a bridge network."""
    default_update_interval: float
    """What a bare `up --update` asks for."""
    config: Callable[[int, int, int, float], dict[str, str]]
    """(db port, api port, health port, update interval) -> the files for /config."""
    db_problem: Callable[[str], str | None]
    clair_problem: Callable[[str, str], str | None]
    """(api url, health url) -> None when Clair is ready and holds vulnerability data."""
    facts: Callable[[Backend], DataFacts]


FLAVOURS = {
    "v2": Flavour(
        "v2",
        DB_IMAGE,
        CLAIR_IMAGE,
        "clair-scan",
        WARM,
        6060,
        6061,
        DEFAULT_UPDATE_INTERVAL,
        lambda db, api, health, interval: {"config.yaml": clair_config(db, api, health, interval)},
        db_problem,
        lambda url, _health: clair_problem(url),
        lambda running: database_facts(running.dsn),
    ),
    "v4": Flavour(
        "v4",
        DB_IMAGE_V4,
        CLAIR_IMAGE_V4,
        "clair-scan-v4",
        "warm-v4",
        8080,
        8081,
        V4_DEFAULT_UPDATE_INTERVAL,
        clair_config_v4,
        pg_problem,
        clair_v4_problem,
        lambda running: update_operation_facts(running.clair_url),
    ),
}


def for_api(api: str) -> Flavour:
    """The appliance for `--backend`; an unknown name is a usage error."""
    try:
        return FLAVOURS[api]
    except KeyError:
        raise UsageError(f"unknown --backend {api!r} (expected v2 or v4)") from None


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
