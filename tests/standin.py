"""Local stand-ins for arminc/clair-db and arminc/clair-local-scan, with the real images' interface.

No registry is reachable here, so the backend images are built from a Debian rootfs made with
debootstrap: the db image is real PostgreSQL 15 holding Clair v2.1.8's schema and our test
vulnerability data (user postgres / password password, `updater/last` set); the Clair image runs
the Clair simulator, reads /config/config.yaml pointing at host `postgres`, serves 6060 and 6061.

The v4 pair (arminc/clair-db-v4, arminc/clair-local-scan-v4, see ../shared/CLAIR_V4_API.md §1.1):
the db stand-in is the same PostgreSQL with the same data, which is how the Clair v4 simulator
reads vulnerability data (Clair's own v4 schema is its business: clair-scan asks Clair's API, not
its tables); the Clair stand-in runs `python -m clairsim4 -mode combo -conf /config/config.yaml`
as user nobody, with arminc's shipped v4 config in the declared volume /config, and reads that
file as Clair 4.7.4 does (ports, connection strings, updaters, the RHEL scanner's CPE mapping:
as shipped, it has none and no network to fetch it, so every index fails with 500).

Images are cached by tag; the tag carries a hash of everything that goes into them, so a change to
the simulator or the data rebuilds them. Run `python tests/standin.py` to build them by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = "clair-scan-test/bookworm:1"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "postgresql,python3,python3-psycopg,python3-yaml"

DSN = "host=127.0.0.1 port=55432 user=postgres password=password dbname=postgres"
DB_DOCKERFILE = """\
FROM {base}
ENV PGDATA=/var/lib/postgresql/clair PATH=/usr/lib/postgresql/15/bin:$PATH
COPY clairsim /opt/clairsim/clairsim
COPY vulns.json /opt/vulns.json
COPY db-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh \\
 && mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" \\
 && echo password > /tmp/pw \\
 && runuser -u postgres -- initdb -D "$PGDATA" -U postgres --pwfile=/tmp/pw --auth=md5 \\
      --encoding=UTF8 --locale=C.UTF-8 >/dev/null \\
 && rm /tmp/pw \\
 && echo "host all all 0.0.0.0/0 md5" >> "$PGDATA/pg_hba.conf" \\
 && runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=127.0.0.1 -p 55432" -w start \\
 && cd /opt/clairsim \\
 && python3 -m clairsim.seed --dsn "{dsn}" /opt/vulns.json \\
 && runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
"""

# Like the official postgres image that arminc/clair-db builds on: `postgres ARGS...` runs the
# server with those arguments. STANDIN_DELAY lets tests make the database come up late.
DB_ENTRYPOINT = """\
#!/bin/sh
set -e
if [ -n "$STANDIN_DELAY" ]; then
    echo "stand-in: delaying start-up by $STANDIN_DELAY s"
    sleep "$STANDIN_DELAY"
fi
if [ "$1" = "postgres" ]; then
    shift
    exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
"""

CLAIR_DOCKERFILE = """\
FROM {base}
COPY clairsim /opt/clairsim/clairsim
COPY config.yaml /config/config.yaml
WORKDIR /opt/clairsim
EXPOSE 6060 6061
ENTRYPOINT ["python3", "-m", "clairsim"]
CMD ["-config=/config/config.yaml"]
"""

# arminc/clair-local-scan's shipped config (see ../shared/CLAIR_V2_API.md, section 12).
CLAIR_CONFIG = """\
clair:
  database:
    type: pgsql
    options:
      source: host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000
      cachesize: 16384
  api:
    port: 6060
    healthport: 6061
    timeout: 900s
  updater:
    interval: 2h
  notifier:
    attempts: 3
    renotifyinterval: 2h
"""


CLAIR_V4_DOCKERFILE = """\
FROM {base}
COPY clairsim /opt/clairsim/clairsim
COPY clairsim4 /opt/clairsim/clairsim4
COPY config.yaml /config/config.yaml
WORKDIR /opt/clairsim
ENV PYTHONDONTWRITEBYTECODE=1
USER nobody
VOLUME /config
EXPOSE 8080 8081
ENTRYPOINT ["python3", "-m", "clairsim4"]
CMD ["-mode", "combo", "-conf", "/config/config.yaml"]
"""

# arminc/clair-local-scan-v4's shipped config (arminc:clair/v4/config.yaml, CLAIR_V4_API.md §1.1).
CLAIR_V4_CONFIG = """\
http_listen_addr: ":8080"
introspection_addr: ":8081"
log_level: debug
indexer:
  connstring: host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000
  scanlock_retry: 10
  layer_scan_concurrency: 5
  migrations: true
  max_conn_pool: 100
matcher:
  connstring: host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000
  max_conn_pool: 100
  migrations: true
matchers: {{}}
notifier:
  connstring: host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000
  migrations: true
"""


def _run(*args: str, **kwargs: object) -> None:
    subprocess.run(args, check=True, **kwargs)  # type: ignore[call-overload]


def _exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def base_image() -> str:
    """A Debian bookworm image with PostgreSQL and Python, from debootstrap (about a minute)."""
    if _exists(BASE):
        return BASE
    with tempfile.TemporaryDirectory(prefix="standin-rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(rootfs),
            MIRROR,
            stdout=subprocess.DEVNULL,
        )
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _run("docker", "import", "-", BASE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap rootfs failed")
    return BASE


def _context(files: dict[str, str | Path]) -> tuple[str, str]:
    """Write a build context; return (its directory, a hash of its content)."""
    work = tempfile.mkdtemp(prefix="standin-context-")
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        target = Path(work) / name
        if isinstance(content, Path):
            shutil.copytree(content, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    digest.update(str(path.relative_to(work)).encode() + path.read_bytes())
        else:
            target.write_text(content)
            digest.update(name.encode() + content.encode())
    return work, digest.hexdigest()[:12]


def _build(name: str, files: dict[str, str | Path]) -> str:
    work, digest = _context(files)
    repository = f"clair-scan-test/{name}"
    tag = f"{repository}:{digest}"
    try:
        if not _exists(tag):
            _run("docker", "build", "--network", "host", "-q", "-t", tag, work, stdout=subprocess.DEVNULL)
            _prune(repository, keep=tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag


def _prune(repository: str, keep: str) -> None:
    """Remove the stand-ins built from older test files: ~0.5 GB each, and no test uses them any
    more. One a container still uses stays (docker refuses), which is fine."""
    listed = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository],
        capture_output=True,
        text=True,
    )
    stale = [t for t in listed.stdout.split() if t != keep]
    if stale:
        subprocess.run(["docker", "image", "rm", *stale], capture_output=True)


def db_image() -> str:
    base = base_image()
    return _build(
        "clair-db",
        {
            "Dockerfile": DB_DOCKERFILE.format(base=base, dsn=DSN),
            "db-entrypoint.sh": DB_ENTRYPOINT,
            "vulns.json": (HERE / "data" / "vulns.json").read_text(),
            "clairsim": HERE / "clairsim",
        },
    )


def slow_db_image(delay: int) -> str:
    """The db stand-in, starting PostgreSQL only after `delay` seconds."""
    return _build(f"clair-db-slow{delay}", {"Dockerfile": f"FROM {db_image()}\nENV STANDIN_DELAY={delay}\n"})


def clair_image() -> str:
    base = base_image()
    return _build(
        "clair-local-scan",
        {
            "Dockerfile": CLAIR_DOCKERFILE.format(base=base),
            "config.yaml": CLAIR_CONFIG,
            "clairsim": HERE / "clairsim",
        },
    )


def clair_feed_image(fetch_seconds: int = 0) -> str:
    """The Clair stand-in with vulnerability sources to update from (the test data; each fetch
    takes `fetch_seconds`). The plain stand-in's sources are unreachable, as on an offline host."""
    dockerfile = (
        f"FROM {clair_image()}\nCOPY feed.json /opt/feed.json\n"
        f"ENV CLAIRSIM_FEED=/opt/feed.json CLAIRSIM_FETCH_SECONDS={fetch_seconds}\n"
    )
    feed = (HERE / "data" / "vulns.json").read_text()
    return _build(f"clair-local-scan-feed{fetch_seconds}", {"Dockerfile": dockerfile, "feed.json": feed})


def db_v4_image() -> str:
    """arminc/clair-db-v4's stand-in: the db stand-in's PostgreSQL and data (PGDATA
    /var/lib/postgresql/clair, password `password`, as arminc's)."""
    dockerfile = f"FROM {db_image()}\nLABEL org.opencontainers.image.title=clair-db-v4-standin\n"
    return _build("clair-db-v4", {"Dockerfile": dockerfile})


def clair_v4_image() -> str:
    base = base_image()
    return _build(
        "clair-local-scan-v4",
        {
            "Dockerfile": CLAIR_V4_DOCKERFILE.format(base=base),
            "config.yaml": CLAIR_V4_CONFIG.format(),
            "clairsim": HERE / "clairsim",
            "clairsim4": HERE / "clairsim4",
        },
    )


if __name__ == "__main__":
    print(db_image(), clair_image(), db_v4_image(), clair_v4_image(), sep="\n")
    sys.exit(0)
