"""How fast the scanner can read a `docker save` into its spool, by each of its routes. Run by hand:

    .venv/bin/python benchmarks/stream.py [--runs 9] [--size-mb 100]

It loads one image of about --size-mb into the local engine and, in interleaved rounds, runs the
scanner's own `archive.stream_save` on the engine's save three ways:

    sdk      the docker SDK's get_image (HTTP/1.1, chunked): engines behind TLS or ssh
    recv     the scanner's own HTTP/1.0 request, read into Python and written out (the route
             where there is no splice(2))
    splice   the same request, spliced from the socket into the spool: the scanner's route on
             Linux for an engine on a local socket or plain TCP

For each it prints the medians of the time to the first byte (the engine exports the whole image
before it sends any) and of the stream after it, and the CPU time the reading process used.
The image is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench import MB, debian_base  # noqa: E402

from imagebuild import ImageSpec, docker_load, remove_images, write_images, write_layer  # noqa: E402
from scanner import archive, dockerapi  # noqa: E402
from scanner.names import plain_docker_endpoint  # noqa: E402
from scanner.sources import engine as image  # noqa: E402

ROUTES = ("sdk", "recv", "splice")


class _FirstByte:
    """Notes when the first chunk of the SDK's stream arrived."""

    def __init__(self) -> None:
        self.at: float | None = None

    def chunks(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.at is None:
                self.at = time.perf_counter()
            yield chunk


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_once(client: Any, img: Any, route: str, workdir: str) -> tuple[float, float, float]:
    """(seconds to the first byte, seconds of stream after it, CPU seconds) of one save."""
    files = archive.LayerFiles(len(img.layers))
    spool = os.path.join(workdir, "spool.tar")
    first = _FirstByte()
    cpu = _cpu()
    started = time.perf_counter()
    source: Iterable[bytes] | archive.SocketBody
    request = None
    if route == "sdk":
        source = first.chunks(client.api.get_image(img.id, chunk_size=archive.CHUNK))
    else:
        engine = plain_docker_endpoint(dict(os.environ))
        if engine is None:
            raise SystemExit("the engine is behind TLS or ssh: only the sdk route applies")
        request = dockerapi.send_save(engine, img.id, 30)
        body = request.body()  # returns once the engine sends its answer's head
        first.at = time.perf_counter()
        source = body
    try:
        with contextlib.ExitStack() as stack:
            if route == "recv" and hasattr(os, "splice"):
                # As on a system without splice(2): the scanner's copier then reads and writes.
                stack.callback(setattr, os, "splice", os.splice)
                del os.splice
            archive.stream_save(source, img, spool, files, threading.Event())
        ended = time.perf_counter()
        files.check()
    finally:
        if request is not None:
            request.close()
        os.unlink(spool)
    assert first.at is not None
    return first.at - started, ended - first.at, _cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    client = docker.from_env()
    tags: list[str] = []
    results: dict[str, list[tuple[float, float, float]]] = {route: [] for route in ROUTES}
    try:
        with tempfile.TemporaryDirectory(prefix="clair-scan-stream-") as workdir:
            layer = write_layer(debian_base("stream", args.size_mb * MB, seed=3), Path(workdir, "l.tar"))
            tag = f"clair-scan-bench/stream:{uuid.uuid4().hex[:10]}"
            archive_path = Path(workdir, "image.tar")
            write_images(archive_path, [ImageSpec([layer], [tag])])
            tags.append(tag)
            docker_load(client, archive_path)
            archive_path.unlink()
            Path(workdir, "l.tar").unlink()
            img = image.inspect(image.Engine(), tag)
            for run in range(args.runs):
                print(f"[stream] run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                order = ROUTES if run % 2 == 0 else ROUTES[::-1]
                for route in order:
                    os.sync()
                    time.sleep(0.5)
                    results[route].append(read_once(client, img, route, workdir))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        remove_images(client, tags)
    print(f"docker save of a {args.size_mb} MB image, medians of {args.runs} interleaved runs:")
    print("| route | first byte (s) | stream (s) | total (s) | CPU (s) |")
    print("|---|---|---|---|---|")
    for route, samples in results.items():
        first, stream, cpu = (statistics.median(s[i] for s in samples) for i in range(3))
        total = statistics.median(s[0] + s[1] for s in samples)
        print(f"| {route} | {first:.3f} | {stream:.3f} | {total:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
