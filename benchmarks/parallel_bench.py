"""Many images in one call: `clair-scan scan IMG1 ... IMG10` one at a time (`--jobs 1`) against
in parallel. Run by hand, not by pytest:

    .venv/bin/python benchmarks/parallel_bench.py                # 10 images of ~100 MB, 5 runs
    .venv/bin/python benchmarks/parallel_bench.py --jobs 1,2,3,4 # which --jobs to compare
    .venv/bin/python benchmarks/parallel_bench.py --quick        # 10 MB images, 2 runs: a smoke run
    .venv/bin/python benchmarks/parallel_bench.py --clair http://127.0.0.1:6060   # a real Clair

It builds 10 distinct images (a Debian 10 base of its own and a ~100 MB layer each: no layer is
shared, so every scan exports and sends everything) and installs clair-scan into a venv of its
own, as bench.py does (its helpers are imported from there). Each run scans all ten in one
call once per --jobs value, the values in a rotating order, each after Clair was made to forget
the images and on a quiet disk. It prints the medians as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from bench import (  # noqa: E402
    MB,
    BenchError,
    Clair,
    clair_simulator,
    debian_base,
    filler_layer,
    install_scanner,
    machine,
    print_report,
    progress,
    settle,
    table,
)

from imagebuild import ImageSpec, docker_load, remove_images, write_images, write_layer  # noqa: E402
from scanner.names import chain_ids  # noqa: E402

COUNT = 10


@dataclass(frozen=True)
class Image:
    tag: str
    base: str  # chain ID of its base layer: forgetting it makes Clair forget the image
    layers: int


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float


def build(client: Any, workdir: Path, size: int, tags: list[str]) -> list[Image]:
    run = uuid.uuid4().hex[:10]
    images = []
    for n in range(COUNT):
        tag = f"clair-scan-bench/parallel-{n}:{run}"
        progress(f"loading image {n + 1} of {COUNT} ({size / MB:.0f} MB)")
        blobs = [
            write_layer(debian_base(f"parallel-{n}"), workdir / "base.tar"),
            write_layer(filler_layer(size, seed=100 + n), workdir / "filler.tar"),
        ]
        archive = workdir / "image.tar"
        write_images(archive, [ImageSpec(blobs, [tag])])
        for blob in blobs:
            blob.path.unlink()
        tags.append(tag)
        docker_load(client, archive)
        archive.unlink()
        diff_ids = client.api.inspect_image(tag)["RootFS"]["Layers"]
        images.append(Image(tag, chain_ids(diff_ids)[0], len(diff_ids)))
    return images


def scan(scanner: str, clair: Clair, ip: str, workdir: Path, images: list[Image], jobs: int) -> Run:
    command = [scanner, "scan", *(i.tag for i in images), "--clair", clair.url, "--ip", ip]
    command += ["--no-report", "--format", "json", "--jobs", str(jobs)]
    env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out_path, err_path = workdir / "scan.out", workdir / "scan.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:
                process.terminate()
                process.wait()
    if process.returncode not in (0, 1):
        raise BenchError(f"--jobs {jobs} exited {process.returncode}: {err_path.read_text()[-2000:]}")
    document = json.loads(out_path.read_text())
    sent = sum(int(image["layers_sent"]) for image in document["images"])
    if sent != sum(i.layers for i in images):
        raise BenchError(f"--jobs {jobs} sent {sent} layers, not every layer of every image")
    return Run(seconds, usage.ru_maxrss * 1024 / MB)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help="runs per --jobs value (default 5)")
    parser.add_argument(
        "--jobs", default="1,default", help="--jobs values, comma-separated; 'default' is the scanner's"
    )
    parser.add_argument("--quick", action="store_true", help="10 MB images and 2 runs: a smoke run")
    parser.add_argument("--clair", metavar="URL", help="a running Clair v2 (default: start the simulator)")
    parser.add_argument("--ip", default="127.0.0.1", help="address Clair downloads layers from")
    args = parser.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 5)
    return args


def run(args: argparse.Namespace) -> list[str]:
    from scanner.pipeline import default_jobs

    default = default_jobs()
    jobs = [default if value == "default" else int(value) for value in args.jobs.split(",")]
    jobs = list(dict.fromkeys(jobs))
    client = docker.from_env()
    tags: list[str] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-bench-")))
        (workdir / "tmp").mkdir()
        stack.callback(remove_images, client, tags)
        if args.clair:
            url, label = args.clair, args.clair
        else:
            progress("starting the Clair simulator")
            url, label = stack.enter_context(clair_simulator(workdir)), "tests/clairsim, own process"
        clair = Clair(url)
        stack.callback(clair.close)
        header = machine(client, label)
        images = build(client, workdir, (10 if args.quick else 100) * MB, tags)

        def forget() -> None:
            for image in images:
                clair.forget(image.base)

        stack.callback(forget)
        progress("installing clair-scan into a venv of its own")
        scanner = install_scanner(workdir)
        runs: dict[int, list[Run]] = {j: [] for j in jobs}
        for n in range(args.runs):
            order = jobs[n % len(jobs) :] + jobs[: n % len(jobs)]
            for j in order:
                forget()
                settle()
                result = scan(scanner, clair, args.ip, workdir, images, j)
                progress(f"run {n + 1}: --jobs {j}: {result.seconds:.2f} s")
                runs[j].append(result)
    base = statistics.median(r.seconds for r in runs[jobs[0]])
    rows = [["--jobs", "10 images (s)", "per image (s)", f"speed-up over --jobs {jobs[0]}", "peak RSS (MB)"]]
    for j in jobs:
        seconds = statistics.median(r.seconds for r in runs[j])
        rows.append(
            [
                f"{j} (default)" if j == default else str(j),
                f"{seconds:.2f}",
                f"{seconds / COUNT:.2f}",
                f"{base / seconds:.2f}",
                f"{statistics.median(r.rss_mb for r in runs[j]):.0f}",
            ]
        )
    every = [f"--jobs {j}: " + " / ".join(f"{r.seconds:.2f}" for r in runs[j]) for j in jobs]
    return [*header, f"runs: {args.runs} per --jobs value; medians", "", table(rows), "", *every]


def main() -> int:
    args = parse_args(sys.argv[1:])
    return print_report(run, args)


if __name__ == "__main__":
    sys.exit(main())
