"""The export's head start.

Loading the CLI, the pipeline, the layer server and the Clair client takes ~75 ms, all of it
before the export could begin, and Docker 20.10 sends nothing of a save before it has exported
the whole image. So `begin` runs first, with the standard library only. It reads the command line
as `clair-scan scan` will, and given an image and an explicit Clair (--clair or CLAIR_ADDR), asks
the engine for the image's layers and Clair whether it holds the top one (a Clair v4: whether it
has a report for the image's manifest). If Clair lacks it,
`begin` sends the engine the `docker save` request and returns: the engine exports while the rest
of the scanner loads, and the pipeline claims the response instead of asking again. A rescan
sends nothing.

Anything unusual (TLS or ssh to the engine, credentials in Clair's URL, an option it does not
know, any error, a slow answer) means no head start. The scan then takes its normal way, which
also reports the errors properly.

The engine and Clair are asked as every request to a plain engine is (see dockerapi.py): HTTP/1.0
on a connection of its own.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote, urlsplit

from . import dockerapi
from .errors import ScanError
from .names import chain_ids, manifest_hash, normalize_url, plain_docker_endpoint

# Every import here delays the save request: typing and contextlib would cost ~3 ms of the ~20.
# mypy reads any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .dockerapi import SaveRequest

# The `scan` command's options, as the CLI declares them (a test keeps the two in step).
VALUE_OPTIONS = frozenset(
    {
        "--archive", "--clair", "--ip", "--bind", "--port", "--clair-timeout", "--whitelist", "-w",
        "--threshold", "-t", "--report", "-r", "--format", "--log", "-l", "--db-image",
        "--clair-image", "--pull", "--network", "--db-port", "--clair-port", "--ready-timeout",
        "--max-db-age", "--platform", "--output", "-o", "--jobs", "-j", "--backend",
    }
)  # fmt: skip
FLAG_OPTIONS = frozenset(
    {"--ignore-unfixed", "--no-report", "--keep", "--relay-layers", "--allow-unknown-db-age", "--per-layer"}
)
_OTHER_SOURCES = ("registry:", "docker-archive:", "oci-archive:", "oci-dir:")

# Both answers come from local daemons in milliseconds; one that takes longer is left to the
# normal path, which has proper timeouts and messages.
TIMEOUT = 2.0


class HeadStart:
    """The save `begin` sent, for the scan of `ref` against the Clair at `clair_url`."""

    def __init__(self, ref: str, clair_url: str, save: SaveRequest) -> None:
        self.ref = ref
        self.clair_url = clair_url
        self.save = save


_started: HeadStart | None = None
_clair_asked: tuple[str, float] | None = None
"""(Clair's URL, when the head start began to wait for it): that wait is part of the first
image's --clair-timeout, not in addition to it."""


def scan_request(argv: list[str], environ: dict[str, str]) -> tuple[str, str] | None:
    """(first image, Clair URL) if argv is a `scan` of an engine image against an explicit Clair;
    None if it is anything else, or anything this reading cannot be sure of."""
    if not argv or argv[0] != "scan":
        return None
    images: list[str] = []
    clair = environ.get("CLAIR_ADDR") or None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            images.extend(args)
        elif not arg.startswith("-") or arg == "-":
            images.append(arg)
        elif arg in FLAG_OPTIONS:
            continue
        else:
            name, equals, attached = arg.partition("=")
            if name not in VALUE_OPTIONS or (equals and not name.startswith("--")):
                return None
            value = attached if equals else next(args, None)
            if value is None:
                return None
            if name == "--clair":
                clair = value
    # A distilled scan (the default) exports nothing: only `--per-layer` gets a head start.
    if not images or not clair or "--per-layer" not in argv:
        return None
    ref = engine_ref(images[0])
    return (ref, clair) if ref else None


def engine_ref(spec: str) -> str:
    """The engine reference a source spec names, "" if it names another source. A bare
    reference may turn out to be the registry's; then the save is not claimed, and closed."""
    if spec.startswith("docker:"):
        return spec[len("docker:") :]
    return "" if spec.startswith(_OTHER_SOURCES) else spec


def begin(argv: list[str], environ: dict[str, str]) -> None:
    """Start the export of the scan's first image if Clair lacks it (see the module's docstring)."""
    global _started
    request = scan_request(argv, environ)
    address = plain_docker_endpoint(environ)
    if request is None or address is None:
        return
    ref, clair = request
    try:
        clair_url = normalize_url(clair)
        parts = urlsplit(clair_url)
        if parts.scheme != "http" or parts.username or parts.password:
            return
        deadline = time.monotonic() + TIMEOUT
        inspect = f"/images/{quote(ref, safe='/:')}/json"
        status, body = dockerapi.get(address, inspect, deadline)
        if status != 200:
            return
        attrs = json.loads(body)
        image_id, diff_ids = attrs["Id"], attrs["RootFS"]["Layers"]
        top = chain_ids(diff_ids)[-1]
        clair_address = (parts.hostname or "", parts.port or 0)
        global _clair_asked
        _clair_asked = (clair_url, time.monotonic())
        clair_deadline = min(deadline, _clair_asked[1] + _clair_timeout(argv))
        status, body = dockerapi.get(clair_address, f"{parts.path}/v1/layers/{top}", clair_deadline)
        if status == 404 and not body.startswith(b"{"):
            # No Clair v2 (it says it lacks a layer in JSON): a Clair v4 lacks the image when it
            # has no report for its manifest.
            status, body = dockerapi.get(
                clair_address, f"{parts.path}/indexer/api/v1/index_state", clair_deadline
            )
            if status != 200:
                return
            digest = manifest_hash(json.loads(body)["state"], diff_ids)
            status, body = dockerapi.get(
                clair_address, f"{parts.path}/matcher/api/v1/vulnerability_report/{digest}", clair_deadline
            )
        if status != 404 or not body.startswith(b"{"):
            return  # held (a rescan: nothing to export), or an answer the normal path should see
        _started = HeadStart(ref, clair_url, dockerapi.send_save(address, image_id, TIMEOUT))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ScanError):
        pass


def _clair_timeout(argv: list[str]) -> float:
    """The scan's --clair-timeout as Typer will read it (scan_request has checked the rest)."""
    value = "300"
    for arg, following in zip(argv, [*argv[1:], ""], strict=True):
        if arg == "--clair-timeout":
            value = following
        elif arg.startswith("--clair-timeout="):
            value = arg.partition("=")[2]
    try:
        return float(value)
    except ValueError:
        return 0.0  # Typer will refuse it; nothing is worth waiting for


def clair_asked_at(clair_url: str) -> float | None:
    """When the head start began to wait for this Clair, if it did; handed out once."""
    global _clair_asked
    asked, _clair_asked = _clair_asked, None
    return asked[1] if asked is not None and asked[0] == clair_url else None


def claim(ref: str, clair_url: str | None) -> HeadStart | None:
    """The head start for this image and this Clair, if there is one; it is handed out once."""
    global _started
    started, _started = _started, None
    if started is None or (started.ref, started.clair_url) == (ref, clair_url):
        return started
    started.save.close()
    return None
