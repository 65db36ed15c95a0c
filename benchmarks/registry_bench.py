"""A scan straight from a registry against `docker save` of the same image. Run by hand:

    .venv/bin/python benchmarks/registry_bench.py              # the 1 GB image, 5 runs
    .venv/bin/python benchmarks/registry_bench.py --quick      # 64 MiB, 2 runs: a smoke run

It builds bench.py's gig-layer image (a Debian 10 base and one 1 GB layer of incompressible
data), loads it into the engine and pushes it (`docker push`, gzip layers) to Debian's
docker-registry on 127.0.0.1. Then, for each of N runs, interleaved, each on a quiet disk:

- `docker save` of the image streamed to a file: what every engine-based Clair v2 client pays;
- a cold scan `clair-scan scan registry:127.0.0.1:PORT/...`: Clair (the simulator, its own
  process) downloads the blobs from the registry itself;
- the same with `--relay-layers`: the blobs stream through clair-scan's layer server;
- a rescan from the registry: only the manifest and config are read.

clair-scan is installed with pip into a venv of its own, as users install it. Everything it made
(images, registry, simulator, temp dirs) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
from bench import (
    MB,
    MIB,
    BenchError,
    Clair,
    clair_simulator,
    debian_base,
    docker_save,
    filler_layer,
    install_scanner,
    median,
    print_report,
    progress,
    settle,
    table,
)

from imagebuild import ImageSpec, docker_load, remove_images, write_images, write_layer
from scanner.names import chain_ids


@contextlib.contextmanager
def registry(workdir: Path) -> Any:
    """Debian's docker-registry on a free port of 127.0.0.1, no auth, storage in workdir."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = workdir / "registry.yml"
    storage = workdir / "registry"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n"
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        import requests

        end = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            if time.monotonic() > end or process.poll() is not None:
                raise BenchError(
                    "docker-registry did not start: " + (workdir / "registry.log").read_text()[-500:]
                )
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def scan(scanner: str, clair: str, ref: str, workdir: Path, *extra: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, layers sent) of one `clair-scan scan` as a real process."""
    command = [
        scanner,
        "scan",
        ref,
        "--clair",
        clair,
        "--ip",
        "127.0.0.1",
        "--no-report",
        "--format",
        "json",
        *extra,
    ]
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "REGISTRY_INSECURE": "true"}
    out_path, err_path = workdir / "scan.out", workdir / "scan.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise BenchError(f"scan of {ref} exited {code}: {err_path.read_text()[-1500:]}")
    sent = int(json.loads(out_path.read_text())["images"][0]["layers_sent"])
    return seconds, usage.ru_maxrss * 1024 / MB, sent


def run(args: argparse.Namespace) -> list[str]:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    client = docker.from_env()
    size = 64 * MIB if args.quick else 1 << 30
    tags: list[str] = []
    rows: dict[str, list[float]] = {
        k: [] for k in ("save", "cold", "relay", "rescan", "rss_cold", "rss_relay")
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-regbench-")))
        (workdir / "tmp").mkdir()
        stack.callback(remove_images, client, tags)
        clair_url = stack.enter_context(clair_simulator(workdir))
        clair = Clair(clair_url)
        stack.callback(clair.close)
        host = stack.enter_context(registry(workdir))
        progress(f"writing and loading the {size / MB:.0f} MB image")
        blobs = [
            write_layer(debian_base("registry-bench"), workdir / "base.tar"),
            write_layer(filler_layer(size, seed=30), workdir / "big.tar"),
        ]
        local = f"clair-scan-bench/registry:{uuid.uuid4().hex[:10]}"
        pushed = f"{host}/bench/registry:1"
        write_images(workdir / "image.tar", [ImageSpec(blobs, [local, pushed])])
        tags += [local, pushed]
        docker_load(client, workdir / "image.tar")
        for path in (workdir / "image.tar", *(b.path for b in blobs)):
            path.unlink()
        progress("docker push (gzips the layers)")
        done = subprocess.run(["docker", "push", pushed], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"docker push failed: {done.stderr[-500:]}")
        image_id = client.api.inspect_image(local)["Id"]
        base = chain_ids(client.api.inspect_image(local)["RootFS"]["Layers"])[0]
        progress("installing clair-scan into a venv of its own")
        scanner = install_scanner(workdir)
        for i in range(1, args.runs + 1):
            progress(f"run {i}/{args.runs}")
            settle()
            rows["save"].append(docker_save(client, image_id, workdir / "tmp" / "save.tar"))
            (workdir / "tmp" / "save.tar").unlink()
            for mode, extra in (("cold", ()), ("relay", ("--relay-layers",))):
                clair.forget(base)
                settle()
                seconds, rss, sent = scan(scanner, clair.url, f"registry:{pushed}", workdir, *extra)
                if sent != 2:
                    raise BenchError(f"a cold {mode} scan sent {sent} layers, not 2")
                rows[mode].append(seconds)
                rows[f"rss_{mode}"].append(rss)
            settle()
            seconds, _, sent = scan(scanner, clair.url, f"registry:{pushed}", workdir)
            if sent:
                raise BenchError(f"a rescan sent {sent} layers")
            rows["rescan"].append(seconds)
        clair.forget(base)
    m = {k: median(v) for k, v in rows.items()}
    return [
        f"registry benchmark: {size / MB:.0f} MB image, {args.runs} runs, medians; "
        "Clair: tests/clairsim, own process",
        "",
        *table(
            [
                [
                    "image",
                    "docker save (s)",
                    "registry cold (s)",
                    "relay cold (s)",
                    "registry cold / save",
                    "rescan (s)",
                    "peak RSS cold / relay (MB)",
                ],
                [
                    f"{size / MB:.0f} MB",
                    f"{m['save']:.2f}",
                    f"{m['cold']:.2f}",
                    f"{m['relay']:.2f}",
                    f"{m['cold'] / m['save']:.2f}",
                    f"{m['rescan']:.3f}",
                    f"{m['rss_cold']:.0f} / {m['rss_relay']:.0f}",
                ],
            ]
        ).splitlines(),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.runs = args.runs or (2 if args.quick else 5)
    return print_report(run, args)


if __name__ == "__main__":
    sys.exit(main())
