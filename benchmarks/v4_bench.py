"""Cold scan and rescan against Clair v2 and Clair v4, side by side. Run by hand, not by pytest:

    .venv/bin/python benchmarks/v4_bench.py            # 3 runs per measurement, full sizes
    .venv/bin/python benchmarks/v4_bench.py --quick    # small images, 1 run: a smoke run

It builds bench.py's images (one-layer, five-layer, gig-layer; sibling is built but not timed)
and installs clair-scan into a venv of its own, as bench.py does, then starts both simulators as
their own processes on 127.0.0.1 with the same vulnerability data: tests/clairsim (Clair v2.1.8)
and tests/clairsim4 (Clair v4.7.4). For each image, run and API, interleaved: a cold scan (Clair
made to forget the image first: v2 by deleting its base layer, v4 by deleting the image's index
report, which also drops the layers no other manifest holds) and a rescan of the unchanged image.
Times are medians of the installed `clair-scan scan IMAGE --clair URL` as a real process. It
prints one Markdown table; images, temp dirs and simulators are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    FULL,
    MB,
    QUICK,
    TESTS,
    BenchError,
    BenchImage,
    Clair,
    Context,
    ScanRun,
    build_images,
    clair_simulator,
    install_scanner,
    machine,
    median,
    print_report,
    progress,
    remove_images,
    scan,
    settle,
    table,
)

from scanner.layerserver import LayerServer
from scanner.names import manifest_hash

IMAGES = ("one-layer", "five-layer", "gig-layer")


@contextlib.contextmanager
def clair_v4_simulator(workdir: Path) -> Iterator[str]:
    """tests/clairsim4 as its own process on 127.0.0.1, a free port, the same data as clairsim's."""
    log_path = workdir / "clairsim4.log"
    command = [sys.executable, "-m", "clairsim4", "--port", "0", "--data", str(TESTS / "data" / "vulns.json")]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while "listening on" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > end:
                raise BenchError(f"the Clair v4 simulator did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield log_path.read_text().split("listening on ", 1)[1].split()[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def forget_v4(clair: Clair, client: docker.DockerClient, image: BenchImage) -> None:
    """DELETE the image's index report: the manifest clair-scan names after its layers' diff IDs
    and Clair's indexer state (scanner/names.py), so the next scan indexes every layer again."""
    state = clair.session.get(f"{clair.url}/indexer/api/v1/index_state", timeout=30).json()["state"]
    diff_ids = client.api.inspect_image(image.tag)["RootFS"]["Layers"]
    digest = manifest_hash(state, diff_ids)
    answer = clair.session.delete(f"{clair.url}/indexer/api/v1/index_report/{digest}", timeout=60)
    if answer.status_code != 204:
        raise BenchError(f"DELETE index_report/{digest}: {answer.status_code} {answer.text[:200]}")


def measure(ctx: Context, image: BenchImage, api: str) -> tuple[ScanRun, ScanRun]:
    if api == "v2":
        ctx.clair.forget(image.chain_ids[0])
    else:
        forget_v4(ctx.clair, ctx.client, image)
    settle()
    cold = scan(ctx, image)
    if cold.layers_sent != image.layers:
        raise BenchError(f"{image.name} ({api}): the cold scan sent {cold.layers_sent} of {image.layers}")
    settle()
    rescan = scan(ctx, image)
    if rescan.layers_sent or rescan.saves:
        raise BenchError(f"{image.name} ({api}): the rescan sent layers or saved the image")
    return cold, rescan


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's way out, through every cleanup


def run(args: argparse.Namespace) -> list[str]:
    signal.signal(signal.SIGTERM, _terminate)
    client = docker.from_env()
    tags: list[str] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-v4bench-")))
        (workdir / "tmp").mkdir()
        stack.callback(remove_images, client, tags)
        progress("starting the Clair v2 and v4 simulators")
        clairs = {
            "v2": Clair(stack.enter_context(clair_simulator(workdir))),
            "v4": Clair(stack.enter_context(clair_v4_simulator(workdir))),
        }
        for clair in clairs.values():
            stack.callback(clair.close)
        header = machine(client, "tests/clairsim and tests/clairsim4 (in-memory), each its own process")
        images = build_images(client, workdir, QUICK if args.quick else FULL, tags)
        server = stack.enter_context(LayerServer("127.0.0.1"))
        progress("installing clair-scan into a venv of its own")
        scanner = install_scanner(workdir)
        times: dict[tuple[str, str], list[tuple[ScanRun, ScanRun]]] = {}
        for name in IMAGES:
            for number in range(1, args.runs + 1):
                for api, clair in clairs.items():
                    progress(f"{name} on Clair {api}: run {number}/{args.runs}")
                    ctx = Context(client, clair, server, "127.0.0.1", workdir, args.runs, scanner)
                    times.setdefault((name, api), []).append(measure(ctx, images[name], api))
        progress("done; cleaning up")
    rows = [["image", "layers", "size (MB)", "API", "cold scan (s)", "rescan (s)", "peak RSS cold (MB)"]]
    for name in IMAGES:
        for api in clairs:
            runs = times[(name, api)]
            rows.append(
                [
                    name,
                    str(images[name].layers),
                    f"{images[name].size / MB:.0f}",
                    f"Clair {api}",
                    f"{median([c.seconds for c, _ in runs]):.2f}",
                    f"{median([r.seconds for _, r in runs]):.3f}",
                    f"{median([c.rss_mb for c, _ in runs]):.0f}",
                ]
            )
    return [*header, f"runs: {args.runs} (medians)", "", table(rows)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help="repetitions per measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="small images and 1 run: a smoke run")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    os.environ.pop("CLAIR_ADDR", None)
    return print_report(run, args)


if __name__ == "__main__":
    sys.exit(main())
