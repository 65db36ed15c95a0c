"""How fast is a scan, measured against what it cannot beat. Run by hand, not by pytest:

    .venv/bin/python benchmarks/bench.py                 # 5 runs per measurement, full sizes
    .venv/bin/python benchmarks/bench.py --quick         # small images, 2 runs: a smoke run
    .venv/bin/python benchmarks/bench.py --clair http://127.0.0.1:6060 [--ip ADDR]   # a real Clair

It builds five images with tests/imagebuild.py and loads them into the local Docker engine:

    one-layer   a Debian 10 base with a ~100 MB file, in one layer
    five-layer  a Debian 10 base and four ~20 MB layers
    gig-layer   a Debian 10 base and one 1 GB layer
    sibling     five-layer's first four layers and a different fifth one
    3gig-layer  a Debian 10 base and one 3 GB layer (distilled scans and docker save only)

For each image and each of N runs it measures:

- the floor: `docker save` streamed to a file in the scanner's temp dir, then Clair indexing the
  saved layer tars (served from a local HTTP server, POSTed parent-first under fresh names);
- a cold scan (`clair-scan scan IMAGE --clair URL ...`, installed with pip into a venv of its own,
  as a real process, after Clair was made to forget the image), its wall time and peak RSS;
- a rescan of the unchanged image: wall time, peak RSS, nothing sent and no `docker save`;
- for the sibling, a scan right after five-layer's, when Clair lacks only the sibling's top layer;
- the same cold scan and rescan in the default, distilled mode (one small layer of the files
  Clair reads, from a container never started), in the same rounds as the per-layer ones;
- gig-layer's `docker save` as a file: one sequential read of it, Clair indexing its distilled
  layer, and a distilled `clair-scan scan --archive` of it.

Each measurement starts once the disk is quiet (see settle()). It prints one table of medians
(Markdown, to paste into the README) and which targets are met.
By default Clair is the simulator in tests/clairsim, run as its own process on 127.0.0.1. Images,
temp dirs, servers and the simulator are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]  # the scanner from this tree, and the tests' image builder

from imagebuild import (  # noqa: E402
    DebPackage,
    Filler,
    ImageSpec,
    Layer,
    LayerBlob,
    debian_files,
    docker_load,
    remove_images,
    save_events,
    write_images,
    write_layer,
)
from scanner.archive import Blob, read_archive  # noqa: E402
from scanner.layerserver import LayerServer  # noqa: E402
from scanner.names import chain_ids  # noqa: E402
from scanner.sources.distill import layer_name  # noqa: E402
from scanner.sources.distill import read_archive as distill_archive  # noqa: E402

MB = 1_000_000  # sizes and RSS are reported in MB of 10^6 bytes, as the targets are stated
MIB = 1 << 20
CHUNK = 1 << 20

# The targets.
COLD_FACTOR = 1.1  # cold scan <= 1.1 x (docker save + Clair indexing)
RESCAN_SECONDS = 0.25
RSS_LIMIT_MB = 80.0
# Distilled scans (issue 11).
DISTILLED_SAVE_FACTOR = 0.1  # cold distilled scan of the 1 GB image <= 0.1 x its docker save
DISTILLED_SECONDS = 0.5
DISTILLED_FLAT = 1.2  # the 3 GB image's cold distilled scan within 20% of the 1 GB one's
DISTILLED_RESCAN_SECONDS = 0.15
DISTILLED_RSS_MB = 60.0

# A few packages with known vulnerabilities in tests/data/vulns.json, so Clair has findings to return.
PACKAGES = [
    DebPackage("openssl", "1.1.1d-0+deb10u1"),
    DebPackage("libssl1.1", "1.1.1d-0+deb10u1", source="openssl"),
    DebPackage("libc6", "2.28-10", source="glibc"),
    DebPackage("bash", "5.0-4"),
    DebPackage("e2fsprogs", "1.44.5-1+deb10u1"),
    DebPackage("tar", "1.30+dfsg-6"),
]


class BenchError(Exception):
    """The benchmark could not measure something (not a missed target)."""


def progress(text: str) -> None:
    # Progress goes to stderr so that stdout holds only the report.
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Sizes:
    one_layer: int
    small_layer: int
    gig_layer: int
    three_gig_layer: int


FULL = Sizes(one_layer=100 * MB, small_layer=20 * MB, gig_layer=1 << 30, three_gig_layer=3 << 30)
QUICK = Sizes(one_layer=10 * MB, small_layer=2 * MB, gig_layer=64 * MIB, three_gig_layer=192 * MIB)


@dataclass(frozen=True)
class BenchImage:
    name: str
    tag: str
    image_id: str
    chain_ids: tuple[str, ...]
    size: int  # bytes of all layer tars: what Clair downloads

    @property
    def layers(self) -> int:
        return len(self.chain_ids)


def debian_base(family: str, filler: int = 0, seed: int = 0) -> Layer:
    """A Debian 10 base. The marker file gives each image family its own base layer, so making
    Clair forget one image (DELETE of its base) never touches another family's layers."""
    layer = debian_files("10", "buster", PACKAGES).merge(
        Layer(files={"etc/clair-scan-bench": f"{family}\n".encode()})
    )
    if filler:
        layer = layer.merge(Layer(files={"opt/bench/filler.bin": Filler(filler, seed)}))
    return layer


def filler_layer(size: int, seed: int) -> Layer:
    return Layer(files={f"opt/bench/layer-{seed}.bin": Filler(size, seed)})


def build_images(client: Any, workdir: Path, sizes: Sizes, tags: list[str]) -> dict[str, BenchImage]:
    """Write every layer once (the 1 GB one too), load the images, and describe them. Each tag is
    appended to `tags` before its load, so cleanup removes even a half-finished set."""
    layer_dir = workdir / "layers"
    layer_dir.mkdir()

    def blob(name: str, layer: Layer) -> LayerBlob:
        return write_layer(layer, layer_dir / f"{name}.tar")

    progress("writing layers")
    shared = [blob("five-base", debian_base("five-layer"))]
    shared += [blob(f"five-{i}", filler_layer(sizes.small_layer, seed=10 + i)) for i in range(1, 4)]
    specs = {
        "one-layer": [blob("one", debian_base("one-layer", sizes.one_layer, seed=1))],
        "five-layer": [*shared, blob("five-4", filler_layer(sizes.small_layer, seed=14))],
        "gig-layer": [
            blob("gig-base", debian_base("gig-layer")),
            blob("gig-1", filler_layer(sizes.gig_layer, seed=20)),
        ],
        "sibling": [*shared, blob("sibling-4", filler_layer(sizes.small_layer, seed=15))],
        "3gig-layer": [
            blob("3gig-base", debian_base("3gig-layer")),
            blob("3gig-1", filler_layer(sizes.three_gig_layer, seed=30)),
        ],
    }
    run = uuid.uuid4().hex[:10]
    images: dict[str, BenchImage] = {}
    for name, blobs in specs.items():
        tag = f"clair-scan-bench/{name}:{run}"
        archive = workdir / f"{name}.tar"
        progress(f"loading {name} ({sum(b.tar_size for b in blobs) / MB:.0f} MB) into Docker")
        write_images(archive, [ImageSpec(blobs, [tag])])
        tags.append(tag)
        docker_load(client, archive)
        archive.unlink()  # the engine has its own copy now
        for layer_blob in blobs:
            if layer_blob.size > 256 * MB:
                layer_blob.path.unlink()  # disk: a 3 GB layer need not stay twice
        diff_ids = client.api.inspect_image(tag)["RootFS"]["Layers"]
        if diff_ids != [b.diff_id for b in blobs]:
            raise BenchError(f"{name}: the engine's layers are not the ones written")
        images[name] = BenchImage(
            name=name,
            tag=tag,
            image_id=client.api.inspect_image(tag)["Id"],
            chain_ids=tuple(chain_ids(diff_ids)),
            size=sum(b.tar_size for b in blobs),
        )
    for layer_file in layer_dir.iterdir():
        layer_file.unlink()  # up to 1.2 GB that is no longer needed
    return images


# ---------------------------------------------------------------------------------------------
# Clair


class Clair:
    """The three Clair v2 calls the benchmark itself needs."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") if "://" in url else "http://" + url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # Clair is local or named: no proxy from the environment

    def close(self) -> None:
        self.session.close()

    def forget(self, name: str) -> None:
        """DELETE a layer (Clair cascades to its children); one Clair does not hold is fine."""
        response = self.session.delete(f"{self.url}/v1/layers/{name}", timeout=120)
        if response.status_code not in (200, 204, 404):
            raise BenchError(f"DELETE /v1/layers/{name}: {response.status_code} {response.text[:200]}")

    def submit(self, name: str, url: str, parent: str) -> None:
        body = {"Layer": {"Name": name, "Path": url, "ParentName": parent, "Format": "Docker"}}
        response = self.session.post(f"{self.url}/v1/layers", json=body, timeout=900)
        if response.status_code != 201:
            raise BenchError(f"POST /v1/layers {name}: {response.status_code} {response.text[:200]}")

    def namespaces(self) -> list[str]:
        response = self.session.get(f"{self.url}/v1/namespaces", timeout=30)
        response.raise_for_status()
        return [str(n.get("Name")) for n in response.json().get("Namespaces") or []]


@contextlib.contextmanager
def clair_simulator(workdir: Path) -> Iterator[str]:
    """tests/clairsim as its own process on 127.0.0.1 only, free ports; yields its URL."""
    config = workdir / "clairsim.yaml"
    # Port 0 picks free ports; no updater (the simulator never fetches anyway).
    config.write_text("clair:\n  api:\n    port: 0\n    healthport: 0\n    timeout: 900s\n  updater:\n")
    log_path = workdir / "clairsim.log"
    command = [
        sys.executable,
        "-m",
        "clairsim",
        f"-config={config}",
        f"-data={TESTS / 'data' / 'vulns.json'}",
        "-host=127.0.0.1",  # Clair binds every interface by default; we stay on loopback
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{_simulator_port(process, log_path)}"
    finally:
        process.terminate()  # SIGTERM: the simulator stops its servers and exits 0
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _simulator_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """The main API's port, from the simulator's `starting main API` log line (port 0 was asked)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("Event") == "starting main API":
                    return int(record["port"])
        if process.poll() is not None:
            raise BenchError(f"the Clair simulator exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    raise BenchError("the Clair simulator did not start within 30 s")


# ---------------------------------------------------------------------------------------------
# The floor: docker save, then Clair indexing the saved layers


def docker_save(client: Any, image_id: str, path: Path) -> float:
    """Seconds to stream the engine's `docker save` of the image into `path`."""
    started = time.perf_counter()
    with open(path, "wb") as out:
        for chunk in client.api.get_image(image_id, chunk_size=CHUNK):
            out.write(chunk)
    return time.perf_counter() - started


def saved_layers(path: Path) -> list[Blob]:
    """Where each layer tar lies in the saved image, lowest first: read as the scanner reads an
    archive (`--archive`), so the floor and the scan agree on what a layer is."""
    (saved,) = read_archive(str(path), str(path.parent))
    return [saved.files.wait(i, 0) for i in range(saved.files.count)]


def clair_indexing(clair: Clair, server: LayerServer, blobs: list[Blob]) -> float:
    """Seconds Clair takes to index the layers, parents first, under fresh names (so it really
    indexes them), from files already on disk, served by the scanner's own layer server. The
    fresh layers are deleted afterwards."""
    prefix = f"clair-scan-bench-{uuid.uuid4().hex[:12]}"
    names = [f"{prefix}-{i}" for i in range(len(blobs))]
    urls = [server.publish(name, blob) for name, blob in zip(names, blobs)]
    try:
        started = time.perf_counter()
        for i, (name, url) in enumerate(zip(names, urls)):
            clair.submit(name, url, names[i - 1] if i else "")
        return time.perf_counter() - started
    finally:
        for name in names:
            server.withdraw(name)
        clair.forget(names[0])


# ---------------------------------------------------------------------------------------------
# The scanner, as a real process


@dataclass(frozen=True)
class ScanRun:
    seconds: float
    rss_mb: float
    layers_sent: int
    saves: int  # `docker save` events the engine logged while the scan ran


def install_scanner(workdir: Path) -> str:
    """clair-scan installed as users install it: `pip install .` into a venv of the benchmark's
    own, from a copy of this tree (a build writes into the tree it builds). Not the dev venv's
    editable install, whose import hook costs every start ~7 ms. Returns the console script."""
    source, venv = workdir / "source", workdir / "venv"
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],  # compiles the bytecode too
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"installing the scanner failed: {shlex.join(command)}: {done.stderr[-2000:]}")
    return str(venv / "bin" / "clair-scan")


def scan(
    ctx: Context, image: BenchImage, *extra: str, distilled: bool = False, archive: Path | None = None
) -> ScanRun:
    """`clair-scan scan` as users run it (`--per-layer` unless `distilled`). Its peak RSS comes
    from wait4(2) (ru_maxrss, KiB on Linux). Output goes to files: a pipe nobody reads could
    stall the child."""
    client, workdir = ctx.client, ctx.workdir
    source = ["--archive", str(archive)] if archive is not None else [image.tag]
    command = [ctx.scanner, "scan", *source, "--clair", ctx.clair.url, "--ip", ctx.ip]
    command += [] if distilled else ["--per-layer"]
    command += ["--no-report", "--format", "json", *extra]
    # TMPDIR: the scanner's spool lands in our work dir, on the same disk as the floor's save,
    # and is removed with it even if the scanner is killed.
    env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on users' machines
    out_path, err_path = workdir / "scan.out", workdir / "scan.err"
    since = time.time()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:  # interrupted: do not leave the scanner running
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    saves = save_events(client, image.image_id, since, time.time())
    if process.returncode not in (0, 1):  # 1 means "findings", which our packages have
        raise BenchError(f"scan of {image.name} exited {process.returncode}: {err_path.read_text()[-2000:]}")
    try:
        sent = int(json.loads(out_path.read_text())["images"][0]["layers_sent"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        text = out_path.read_text()[:500]
        raise BenchError(f"scan of {image.name} printed no usable JSON ({exc}): {text}") from None
    return ScanRun(seconds, usage.ru_maxrss * 1024 / MB, sent, saves)


# ---------------------------------------------------------------------------------------------
# Measuring


def _disk_busy() -> tuple[float, int]:
    """(seconds the CPUs have waited on the disk so far, KiB of dirty or in-writeback pages)."""
    iowait = int(Path("/proc/stat").read_text().split()[5]) / os.sysconf("SC_CLK_TCK")
    kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Dirty", "Writeback"):
            kib += int(value.split()[0])
    return iowait, kib


def settle(limit: float = 15.0) -> None:
    """Wait until the disk is quiet. After a 1 GB save the engine deletes its export dir and the
    kernel writes back or drops a GB of pages; a process started meanwhile waits on the disk for
    its own code (seen: a rescan right after gig-layer's cold scan took 0.2-0.3 s, 0.16 s two
    seconds later). Each measurement starts on a quiet disk, so it times what it measures."""
    end = time.monotonic() + limit
    quiet = 0
    waited, _ = _disk_busy()
    while quiet < 3 and time.monotonic() < end:
        time.sleep(0.1)
        now, dirty_kib = _disk_busy()
        quiet = quiet + 1 if now - waited < 0.005 and dirty_kib < 4096 else 0
        waited = now


@dataclass
class Samples:
    save: list[float] = field(default_factory=list)
    indexing: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    cold: list[ScanRun] = field(default_factory=list)
    rescan: list[ScanRun] = field(default_factory=list)
    sibling: list[ScanRun] = field(default_factory=list)
    # From one more, untimed, cold scan: layers submitted before `docker save` had finished
    # streaming, and layers submitted.
    overlap: tuple[int, int] = (0, 0)
    distilled_cold: list[ScanRun] = field(default_factory=list)
    distilled_rescan: list[ScanRun] = field(default_factory=list)
    # gig-layer as a `docker save` file: one sequential read, Clair indexing the distilled layer,
    # a distilled `--archive` scan.
    archive_read: list[float] = field(default_factory=list)
    archive_indexing: list[float] = field(default_factory=list)
    archive_scan: list[ScanRun] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    client: Any
    clair: Clair
    server: LayerServer
    ip: str
    workdir: Path
    runs: int
    scanner: str  # the installed console script


def measure(ctx: Context, image: BenchImage, samples: Samples) -> None:
    """N rounds of floor, cold scan, rescan; interleaved, so that drift in the machine's state
    (page cache, other load) hits all three alike."""
    for run in range(1, ctx.runs + 1):
        progress(f"{image.name}: run {run}/{ctx.runs}")
        saved = ctx.workdir / "tmp" / "floor-save.tar"
        settle()
        samples.save.append(docker_save(ctx.client, image.image_id, saved))
        blobs = saved_layers(saved)
        if len(blobs) != image.layers:
            raise BenchError(f"{image.name}: the saved image has {len(blobs)} layers, not {image.layers}")
        settle()
        samples.indexing.append(clair_indexing(ctx.clair, ctx.server, blobs))
        samples.floor.append(samples.save[-1] + samples.indexing[-1])
        saved.unlink()

        ctx.clair.forget(image.chain_ids[0])  # cascades: Clair now lacks every layer of the image
        settle()
        cold = scan(ctx, image)
        if cold.layers_sent != image.layers:
            raise BenchError(f"{image.name}: the cold scan sent {cold.layers_sent} of {image.layers} layers")
        samples.cold.append(cold)
        settle()
        samples.rescan.append(scan(ctx, image))
        measure_distilled(ctx, image, samples)


def measure_distilled(ctx: Context, image: BenchImage, samples: Samples) -> None:
    """One distilled cold scan (Clair made to forget the distilled layer) and one rescan."""
    ctx.clair.forget(layer_name(image.image_id))
    settle()
    cold = scan(ctx, image, distilled=True)
    if cold.layers_sent != 1 or cold.saves:
        raise BenchError(
            f"{image.name}: the distilled scan sent {cold.layers_sent} layers, saved {cold.saves}x"
        )
    samples.distilled_cold.append(cold)
    settle()
    samples.distilled_rescan.append(scan(ctx, image, distilled=True))


def measure_save_and_distilled(ctx: Context, image: BenchImage, samples: Samples) -> None:
    """For the image too big to scan per layer in every round: its `docker save` alone, and the
    distilled scans."""
    for run in range(1, ctx.runs + 1):
        progress(f"{image.name}: run {run}/{ctx.runs}")
        saved = ctx.workdir / "tmp" / "floor-save.tar"
        settle()
        samples.save.append(docker_save(ctx.client, image.image_id, saved))
        saved.unlink()
        measure_distilled(ctx, image, samples)


def sequential_read(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(CHUNK):
            pass
    return time.perf_counter() - started


def measure_archive(ctx: Context, image: BenchImage, samples: Samples) -> None:
    """gig-layer's `docker save` as a file: its sequential read, Clair indexing its distilled
    layer (as the scan makes it), and the distilled archive scan, in the same rounds."""
    saved = ctx.workdir / "tmp" / "archive.tar"
    docker_save(ctx.client, image.image_id, saved)
    try:
        for run in range(1, ctx.runs + 1):
            progress(f"{image.name} as docker-archive: run {run}/{ctx.runs}")
            settle()
            samples.archive_read.append(sequential_read(saved))
            with (
                tempfile.TemporaryDirectory(dir=ctx.workdir / "tmp") as scratch,
                contextlib.ExitStack() as keep,
            ):
                (distilled,) = distill_archive(str(saved), scratch, keep)
                settle()
                samples.archive_indexing.append(
                    clair_indexing(ctx.clair, ctx.server, [distilled.files.wait(0, 0)])
                )
            ctx.clair.forget(layer_name(image.image_id))
            settle()
            samples.archive_scan.append(scan(ctx, image, distilled=True, archive=saved))
    finally:
        saved.unlink()


def measure_overlap(ctx: Context, image: BenchImage, samples: Samples) -> None:
    """One more cold scan, with the scanner's debug log: which layers went to Clair while the save
    was still streaming. Untimed, so the log's writes cost the timed runs nothing."""
    ctx.clair.forget(image.chain_ids[0])
    log_path = ctx.workdir / "overlap.log"
    scan(ctx, image, "--log", str(log_path))
    lines = log_path.read_text().splitlines()
    log_path.unlink()
    # Each line starts with its time, "YYYY-MM-DD HH:MM:SS,mmm": as text they sort as times.
    submitted = [line[:23] for line in lines if "submitting layer" in line]
    ended = [line[:23] for line in lines if "docker save stream ended" in line]
    if not ended or len(submitted) != image.layers:
        raise BenchError(f"{image.name}: the scan's log does not show its submits and the save's end")
    samples.overlap = (sum(1 for stamp in submitted if stamp < ended[0]), len(submitted))


def measure_sibling(ctx: Context, sibling: BenchImage, samples: Samples) -> None:
    """The sibling scanned while Clair holds five-layer (its last rescan just ran): before each run
    only the sibling's own top layer is forgotten, so one layer should be sent."""
    for run in range(1, ctx.runs + 1):
        progress(f"{sibling.name} after five-layer: run {run}/{ctx.runs}")
        ctx.clair.forget(sibling.chain_ids[-1])
        settle()
        samples.sibling.append(scan(ctx, sibling))


# ---------------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine(client: Any, clair_label: str) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    docker_info = client.info()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"command: {shlex.join(sys.orig_argv)}",
        f"machine: {os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM, Linux {platform.release()}",
        f"python: {platform.python_version()}; docker: {client.version()['Version']} "
        f"({docker_info.get('Driver', '?')}); clair: {clair_label}; clair-scan: {commit or '?'}",
    ]


def table(rows: list[list[str]]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


HEADER = [
    "image",
    "layers",
    "size (MB)",
    "docker save (s)",
    "Clair indexing (s)",
    "floor (s)",
    "cold scan (s)",
    "cold/floor",
    "rescan (s)",
    "sibling (s) / layers sent",
    "sent while saving",
    "peak RSS cold (MB)",
    "peak RSS rescan (MB)",
]


def report(
    images: dict[str, BenchImage], results: dict[str, Samples], runs: int, load: tuple[float, float]
) -> list[str]:
    rows = [HEADER]
    for name in ("one-layer", "five-layer", "gig-layer", "sibling"):
        image, s = images[name], results[name]
        sibling = "-"
        if s.sibling:
            sent = sorted({r.layers_sent for r in s.sibling})
            sibling = f"{median([r.seconds for r in s.sibling]):.2f} / {','.join(map(str, sent))}"
        cold, floor = median([r.seconds for r in s.cold]), median(s.floor)
        rows.append(
            [
                name,
                str(image.layers),
                f"{image.size / MB:.0f}",
                f"{median(s.save):.2f}",
                f"{median(s.indexing):.2f}",
                f"{floor:.2f}",
                f"{cold:.2f}",
                f"{cold / floor:.2f}",
                f"{median([r.seconds for r in s.rescan]):.3f}",
                sibling,
                f"{s.overlap[0]}/{s.overlap[1]}",
                f"{max(r.rss_mb for r in s.cold):.0f}",
                f"{max(r.rss_mb for r in s.rescan):.0f}",
            ]
        )
    lines = [
        table(rows),
        "",
        f"Times are medians of {runs} runs; peak RSS is the highest of the runs (ru_maxrss of the "
        "scanner process). floor = docker save + Clair indexing, measured separately; MB = 10^6 bytes. "
        "sent while saving: layers a cold scan submitted before the save had finished streaming.",
        f"Load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
    ]
    return lines


def targets(results: dict[str, Samples]) -> list[str]:
    lines = ["Targets:"]

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"- [{'x' if ok else ' '}] {'met' if ok else 'MISSED'}: {text}")

    ratios = {n: median([r.seconds for r in s.cold]) / median(s.floor) for n, s in results.items()}
    worst = max(ratios, key=lambda n: ratios[n])
    verdict(
        all(r <= COLD_FACTOR for r in ratios.values()),
        f"cold scan <= {COLD_FACTOR} x (docker save + Clair indexing) on every image "
        f"(worst: {worst} at {ratios[worst]:.2f})",
    )
    rescans = {n: median([r.seconds for r in s.rescan]) for n, s in results.items()}
    slowest = max(rescans, key=lambda n: rescans[n])
    verdict(
        all(t <= RESCAN_SECONDS for t in rescans.values()),
        f"rescan <= {RESCAN_SECONDS} s (slowest: {slowest} at {rescans[slowest]:.3f} s)",
    )
    rescan_runs = [r for s in results.values() for r in s.rescan]
    sent = sum(r.layers_sent for r in rescan_runs)
    saves = sum(r.saves for r in rescan_runs)
    verdict(
        sent == 0 and saves == 0,
        f"rescans send nothing and run no docker save ({sent} layers sent, {saves} saves in "
        f"{len(rescan_runs)} rescans)",
    )
    cold_runs = [r for s in results.values() for r in s.cold]
    if not all(r.saves for r in cold_runs):
        # Every cold scan runs a save; if the engine did not log one, the event check is blind.
        lines.append("  (warning: some cold scans showed no save event; the save check may be blind)")
    sibling = results["sibling"].sibling
    verdict(
        all(r.layers_sent == 1 for r in sibling),
        f"the sibling sends only the layer Clair lacks (layers sent per run: "
        f"{', '.join(str(r.layers_sent) for r in sibling)})",
    )
    multi = {n: s.overlap for n, s in results.items() if s.overlap[1] > 1}
    verdict(
        all(before > 0 for before, _ in multi.values()),
        "multi-layer images: layers go to Clair while docker save still streams ("
        + ", ".join(f"{n}: {before} of {total}" for n, (before, total) in multi.items())
        + ")",
    )
    rss = {n: max(r.rss_mb for r in [*s.cold, *s.rescan, *s.sibling]) for n, s in results.items()}
    biggest = max(rss, key=lambda n: rss[n])
    verdict(
        all(v <= RSS_LIMIT_MB for v in rss.values()),
        f"peak RSS <= {RSS_LIMIT_MB:.0f} MB, 1 GB layer included "
        f"(highest: {biggest} at {rss[biggest]:.0f} MB)",
    )
    return lines


DISTILLED_HEADER = [
    "image",
    "size (MB)",
    "docker save (s)",
    "per-layer cold (s)",
    "distilled cold (s)",
    "distilled/save",
    "per-layer rescan (s)",
    "distilled rescan (s)",
    "peak RSS distilled (MB)",
]


def distilled_report(images: dict[str, BenchImage], results: dict[str, Samples]) -> list[str]:
    rows = [DISTILLED_HEADER]
    for name in ("one-layer", "five-layer", "gig-layer", "sibling", "3gig-layer"):
        image, s = images[name], results[name]
        cold = median([r.seconds for r in s.distilled_cold])
        save = median(s.save)
        rows.append(
            [
                name,
                f"{image.size / MB:.0f}",
                f"{save:.2f}",
                f"{median([r.seconds for r in s.cold]):.2f}" if s.cold else "-",
                f"{cold:.3f}",
                f"{cold / save:.3f}",
                f"{median([r.seconds for r in s.rescan]):.3f}" if s.rescan else "-",
                f"{median([r.seconds for r in s.distilled_rescan]):.3f}",
                f"{max(r.rss_mb for r in [*s.distilled_cold, *s.distilled_rescan]):.0f}",
            ]
        )
    gig = results["gig-layer"]
    read, indexing = median(gig.archive_read), median(gig.archive_indexing)
    scanned = median([r.seconds for r in gig.archive_scan])
    archive_header = ["docker-archive", "size (MB)", "sequential read (s)", "Clair indexing distilled (s)"]
    archive_header += [
        "read + indexing (s)",
        "distilled --archive scan (s)",
        "scan/(read+indexing)",
        "peak RSS (MB)",
    ]
    archive_rows = [
        archive_header,
        [
            "gig-layer.tar",
            f"{images['gig-layer'].size / MB:.0f}",
            f"{read:.2f}",
            f"{indexing:.3f}",
            f"{read + indexing:.2f}",
            f"{scanned:.2f}",
            f"{scanned / (read + indexing):.2f}",
            f"{max(r.rss_mb for r in gig.archive_scan):.0f}",
        ],
    ]
    return [
        "Distilled (default) next to per-layer (`--per-layer`), same rounds:",
        "",
        table(rows),
        "",
        table(archive_rows),
        "",
        "distilled/save: a cold distilled scan over `docker save` of the same image alone. The "
        "archive is read warm (page cache), by the scan and by the sequential read alike.",
    ]


def distilled_targets(results: dict[str, Samples]) -> list[str]:
    lines: list[str] = []

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"- [{'x' if ok else ' '}] {'met' if ok else 'MISSED'}: {text}")

    gig, three = results["gig-layer"], results["3gig-layer"]
    cold = median([r.seconds for r in gig.distilled_cold])
    save = median(gig.save)
    verdict(
        cold <= DISTILLED_SAVE_FACTOR * save and cold <= DISTILLED_SECONDS,
        f"distilled cold scan of the 1 GB image <= {DISTILLED_SAVE_FACTOR} x docker save and <= "
        f"{DISTILLED_SECONDS} s ({cold:.3f} s, {cold / save:.3f} x {save:.2f} s)",
    )
    cold3 = median([r.seconds for r in three.distilled_cold])
    verdict(
        cold3 <= DISTILLED_FLAT * cold,
        f"3 GB image's distilled cold scan within {DISTILLED_FLAT - 1:.0%} of the 1 GB one's "
        f"({cold3:.3f} s against {cold:.3f} s: {cold3 / cold:.2f} x)",
    )
    rescans = {n: median([r.seconds for r in s.distilled_rescan]) for n, s in results.items()}
    slowest = max(rescans, key=lambda n: rescans[n])
    verdict(
        all(t <= DISTILLED_RESCAN_SECONDS for t in rescans.values()),
        f"distilled rescan <= {DISTILLED_RESCAN_SECONDS} s (slowest: {slowest} at {rescans[slowest]:.3f} s)",
    )
    runs = [r for s in results.values() for r in [*s.distilled_cold, *s.distilled_rescan, *s.archive_scan]]
    sent = sum(r.layers_sent for s in results.values() for r in s.distilled_rescan)
    verdict(sent == 0, f"distilled rescans send nothing ({sent} layers sent)")
    rss = max(r.rss_mb for r in runs)
    verdict(
        rss <= DISTILLED_RSS_MB, f"distilled peak RSS <= {DISTILLED_RSS_MB:.0f} MB (highest {rss:.0f} MB)"
    )
    read, indexing = median(gig.archive_read), median(gig.archive_indexing)
    scanned = median([r.seconds for r in gig.archive_scan])
    lines.append(
        f"- archive: distilled --archive scan of the 1 GB docker-archive {scanned:.2f} s against one "
        f"sequential read {read:.2f} s + Clair indexing the distilled layer {indexing:.3f} s "
        f"({scanned / (read + indexing):.2f} x; the rest is the process starting and tar parsing)"
    )
    return lines


def distilled_details(results: dict[str, Samples]) -> list[str]:
    lines = ["Distilled runs (s):"]
    for name, s in results.items():
        parts = [
            f"cold {' '.join(f'{r.seconds:.3f}' for r in s.distilled_cold)}",
            f"rescan {' '.join(f'{r.seconds:.3f}' for r in s.distilled_rescan)}",
        ]
        if s.archive_scan:
            parts.append(f"archive read {' '.join(f'{v:.2f}' for v in s.archive_read)}")
            parts.append(f"archive scan {' '.join(f'{r.seconds:.2f}' for r in s.archive_scan)}")
        if name == "3gig-layer":
            parts.append(f"save {' '.join(f'{v:.2f}' for v in s.save)}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def details(results: dict[str, Samples]) -> list[str]:
    """Every sample, to judge the noise behind the medians."""

    def seconds(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    lines = ["Runs (s):"]
    for name, s in results.items():
        parts = [
            f"save {seconds(s.save)}",
            f"indexing {seconds(s.indexing)}",
            f"cold {seconds([r.seconds for r in s.cold])}",
            f"rescan {' '.join(f'{r.seconds:.3f}' for r in s.rescan)}",
        ]
        if s.sibling:
            parts.append(f"sibling {seconds([r.seconds for r in s.sibling])}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help="repetitions per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="small images and 2 runs: a smoke run")
    parser.add_argument("--clair", metavar="URL", help="a running Clair v2 (default: start the simulator)")
    parser.add_argument(
        "--ip", default="127.0.0.1", help="address Clair downloads layers from (default 127.0.0.1)"
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM takes the same way out as Ctrl-C, through every cleanup below.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> list[str]:
    signal.signal(signal.SIGTERM, _terminate)
    client = docker.from_env()
    client.ping()
    sizes = QUICK if args.quick else FULL
    tags: list[str] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-bench-")))
        (workdir / "tmp").mkdir()
        stack.callback(remove_images, client, tags)  # runs after the Clair cleanup registered below
        if args.clair:
            clair_url, clair_label = args.clair, args.clair
        else:
            progress("starting the Clair simulator")
            clair_url = stack.enter_context(clair_simulator(workdir))
            clair_label = "tests/clairsim (in-memory), own process"
        clair = Clair(clair_url)
        stack.callback(clair.close)
        if not clair.namespaces():
            raise BenchError(f"Clair at {clair.url} lists no namespaces: no vulnerability data")
        header = machine(client, clair_label)
        load_start = os.getloadavg()[0]
        images = build_images(client, workdir, sizes, tags)

        @stack.callback
        def forget_all() -> None:
            # Leave a shared Clair as we found it: our layers only, best effort.
            for image in images.values():
                with contextlib.suppress(requests.RequestException, BenchError):
                    clair.forget(image.chain_ids[0])

        server = stack.enter_context(LayerServer(args.ip))
        progress("installing clair-scan into a venv of its own")
        ctx = Context(client, clair, server, args.ip, workdir, args.runs, install_scanner(workdir))
        results = {name: Samples() for name in images}
        measure(ctx, images["one-layer"], results["one-layer"])
        measure(ctx, images["five-layer"], results["five-layer"])
        measure_sibling(ctx, images["sibling"], results["sibling"])  # right after five-layer
        measure(ctx, images["sibling"], results["sibling"])
        measure(ctx, images["gig-layer"], results["gig-layer"])
        measure_archive(ctx, images["gig-layer"], results["gig-layer"])
        measure_save_and_distilled(ctx, images["3gig-layer"], results["3gig-layer"])
        for name, image in images.items():
            if name != "3gig-layer":
                measure_overlap(ctx, image, results[name])
        load = (load_start, os.getloadavg()[0])
        progress("done; cleaning up")
    everything = results
    results = {name: results[name] for name in ("one-layer", "five-layer", "gig-layer", "sibling")}
    return [
        *header,
        "",
        *report(images, results, args.runs, load),
        "",
        *distilled_report(images, everything),
        "",
        *targets(results),
        *distilled_targets(everything),
        "",
        *details(results),
        *distilled_details(everything),
    ]


def print_report(run: Callable[[argparse.Namespace], list[str]], args: argparse.Namespace) -> int:
    """Run a benchmark and print its report; every benchmark script ends the same way."""
    try:
        lines = run(args)
    except KeyboardInterrupt:
        print("interrupted; everything the benchmark made is removed", file=sys.stderr)
        return 130
    except (BenchError, docker.errors.DockerException, requests.RequestException) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main() -> int:
    return print_report(run, parse_args(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
