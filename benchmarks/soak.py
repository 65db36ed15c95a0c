"""Soak test, run by hand (about 10 minutes with the defaults):

    .venv/bin/python benchmarks/soak.py                     # 200 scans, 4 at a time
    .venv/bin/python benchmarks/soak.py --scans 40 --jobs 2 # a shorter run

One warm appliance (`clair-scan up`, the stand-in backend images from tests/standin.py, host
networking), then `--scans` scans of three test images by the installed-from-tree scanner as real
processes, `--jobs` at a time. Some scans get Ctrl-C at a random moment; every so often Clair's
container is restarted while scans run. Afterwards:

- every scan finished (0 or 1), was interrupted (130) or, while Clair was restarting, failed (3):
  never 2, never a traceback;
- every completed scan's findings, and so its exit code, equal the first completed scan of the
  same image's;
- no temp file is left in the scans' TMPDIR, no scanner process (and so no layer server) lives
  on, and once `clair-scan down` ran no appliance container or network is left;
- the scanner's peak RSS does not grow: the median of the last 20 completed scans is within 10%
  of the first 20's.

It exits 0 when all of that held, 1 otherwise, printing what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]

import standin  # noqa: E402
from conftest import debian_image_layers  # noqa: E402
from imagebuild import alpine_files, docker_load, remove_images, write_docker_save  # noqa: E402

LABEL = "io.clair-scan.role"


@dataclass(frozen=True)
class Result:
    image: str
    code: int
    findings: frozenset[tuple[str, str, str]] | None
    rss_mb: float
    stderr: str
    interrupted: bool
    during_restart: bool


def scanner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanner", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=600,
    )


def one_scan(
    image: str, backend: list[str], tmpdir: Path, interrupt: bool, restarting: threading.Event
) -> Result:
    command = [sys.executable, "-m", "scanner", "scan", image, *backend, "--no-report", "--format", "json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        during = restarting.is_set()
        if interrupt:
            time.sleep(random.uniform(0.05, 1.5))
            # Not send_signal(): it polls first, and a reaped child would leave wait4 nothing.
            os.kill(process.pid, signal.SIGINT)
        _, status, usage = os.wait4(process.pid, 0)
        during = during or restarting.is_set()
        code = os.waitstatus_to_exitcode(status)
        # Reaped here: without this, Popen's finalizer would later reap whatever new child got
        # the same pid, under another thread's os.wait4.
        process.returncode = code
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    findings = None
    if code in (0, 1):
        doc = json.loads(stdout)["images"][0]
        findings = frozenset((f["vulnerability"], f["package"], f["installed"]) for f in doc["findings"])
    return Result(image, code, findings, usage.ru_maxrss / 1024, stderr, interrupt, during)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--interrupt-share", type=float, default=0.15, help="share of scans given Ctrl-C")
    parser.add_argument("--restart-every", type=int, default=40, help="restart Clair after this many scans")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    random.seed(args.seed)
    client = docker.from_env()
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="clair-scan-soak-"))
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    run = uuid.uuid4().hex[:8]
    tags = [f"clair-scan-soak/debian:{run}", f"clair-scan-soak/alpine:{run}", f"clair-scan-soak/mixed:{run}"]
    layers = [
        debian_image_layers(),
        [alpine_files("3.10.2", [("musl", "1.1.22-r3"), ("curl", "7.66.0-r0")])],
        debian_image_layers()[:2],
    ]
    results: list[Result] = []
    try:
        print("[soak] building the stand-in backend images (cached after the first time)", file=sys.stderr)
        db, clair = standin.db_image(), standin.clair_image()
        for tag, image_layers in zip(tags, layers, strict=True):
            path = workdir / "image.tar"
            write_docker_save(path, image_layers, repo_tags=[tag])
            docker_load(client, path)
            path.unlink()
        backend = ["--network", "host", "--db-image", db, "--clair-image", clair, "--pull", "never"]
        up = scanner("up", *backend)
        if up.returncode != 0:
            raise RuntimeError(f"clair-scan up failed: {up.stderr}")
        restarting = threading.Event()
        plan = [(random.choice(tags), random.random() < args.interrupt_share) for _ in range(args.scans)]
        done = 0
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(one_scan, image, backend, tmpdir, interrupt, restarting)
                for image, interrupt in plan
            ]
            for future in futures:
                results.append(future.result())
                done += 1
                if done % args.restart_every == 0 and done < args.scans:
                    print(f"[soak] {done} scans done; restarting Clair", file=sys.stderr)
                    restarting.set()
                    for container in client.containers.list(filters={"label": f"{LABEL}=clair"}):
                        container.restart(timeout=5)
                    time.sleep(3)
                    restarting.clear()
        print(f"[soak] {done} scans done", file=sys.stderr)
    finally:
        down = scanner("down")
        if down.returncode != 0:
            problems.append(f"clair-scan down failed: {down.stderr.strip()}")
        remove_images(client, tags)

    first: dict[str, frozenset[tuple[str, str, str]]] = {}
    for result in results:
        if "Traceback" in result.stderr:
            problems.append(f"a scan of {result.image} printed a traceback: {result.stderr[-500:]}")
        allowed = (
            {0, 1} | ({130} if result.interrupted else set()) | ({3} if result.during_restart else set())
        )
        if result.code not in allowed:
            problems.append(f"a scan of {result.image} exited {result.code}: {result.stderr.strip()[-300:]}")
        if result.findings is not None:
            expected = first.setdefault(result.image, result.findings)
            if result.findings != expected:
                problems.append(f"a scan of {result.image} found other findings than the first one")
    if list(tmpdir.iterdir()):
        problems.append(f"left in TMPDIR: {[p.name for p in tmpdir.iterdir()]}")
    left = client.containers.list(all=True, filters={"label": LABEL}) + client.networks.list(
        filters={"label": LABEL}
    )
    if left:
        problems.append(f"left on the engine: {[o.name for o in left]}")
    lingering = subprocess.run(
        ["pgrep", "-f", "-a", "python.* -m scanner scan"], capture_output=True, text=True
    )
    if lingering.stdout.strip():
        problems.append(f"scanner processes still running: {lingering.stdout.strip()}")
    completed = [r.rss_mb for r in results if r.findings is not None]
    if len(completed) >= 40:
        early, late = statistics.median(completed[:20]), statistics.median(completed[-20:])
        print(f"[soak] peak RSS median: first 20 {early:.1f} MB, last 20 {late:.1f} MB", file=sys.stderr)
        if late > early * 1.1:
            problems.append(f"peak RSS grew from {early:.1f} MB to {late:.1f} MB")
    codes = {code: sum(1 for r in results if r.code == code) for code in sorted({r.code for r in results})}
    print(f"scans: {len(results)}; exit codes: {codes}; completed: {len(completed)}")
    shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print(f"FAILED: {problem}")
    print("soak: every check held" if not problems else f"soak: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
