"""Finding layer tars in `docker save` output: streamed (published early) and from files."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild import Filler, HistoryEntry, ImageSpec, Layer, debian_files, write_docker_save, write_images
from scanner import archive
from scanner.errors import DockerError, FileSystemError, UsageError
from scanner.models import Image
from scanner.models import Layer as ImageLayer
from scanner.names import chain_ids


def _layers() -> list[Layer]:
    base = debian_files(packages=[("openssl", "1.1.1d-0+deb10u1"), ("zlib1g", "1:1.2.11.dfsg-1")])
    app = Layer(files={"app/bin": b"binary" * 1000})
    big = Layer(files={"data/blob": Filler(3 << 20)})
    return [base, app, big, app]  # the last one repeats: classic layout writes a symlink


def _image(saved, name: str = "test:1") -> Image:
    diff_ids = list(saved.diff_ids)
    return Image(
        name=name,
        id=saved.image_id,
        layers=tuple(ImageLayer(i, d, c) for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids)))),
    )


def _sha(blob: archive.Blob) -> str:
    with open(blob.path, "rb") as handle:
        handle.seek(blob.offset)
        return "sha256:" + hashlib.sha256(handle.read(blob.size)).hexdigest()


def _chunks(path: Path, size: int, log: list[int]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            log.append(len(chunk))
            yield chunk


class _Recording(archive.LayerFiles):
    """Records how many bytes of the stream had been read when each layer was published."""

    def __init__(self, count: int, consumed: list[int]) -> None:
        super().__init__(count)
        self.consumed = consumed
        self.published_at: dict[int, int] = {}

    def put(self, index: int, blob: archive.Blob) -> None:
        self.published_at[index] = sum(self.consumed)
        super().put(index, blob)


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_stream_publishes_each_layer_before_the_stream_ends(tmp_path, layout):
    import tarfile

    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers(), layout=layout)
    image = _image(saved)
    consumed: list[int] = []
    files = _Recording(len(image.layers), consumed)
    chunk = 4096
    archive.stream_save(
        _chunks(tarball, chunk, consumed), image, str(tmp_path / "spool.tar"), files, threading.Event()
    )
    for layer in image.layers:
        blob = files.wait(layer.index, 1)
        assert _sha(blob) == layer.diff_id
    # Docker writes manifest.json last: every layer was matched before it was even read, and a
    # layer that could be placed at once was published right after its last byte.
    with tarfile.open(tarball) as tar:
        manifest = tar.getmember("manifest.json").offset
    assert max(files.published_at.values()) <= manifest + chunk
    base = files.wait(0, 1)
    if layout == "oci" or files.published_at[0] < manifest:
        assert files.published_at[0] <= base.offset + base.size + 512 + chunk
    assert (tmp_path / "spool.tar").read_bytes() == tarball.read_bytes()


def test_stream_with_gzipped_blobs_is_settled_by_the_manifest(tmp_path):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers()[:3], layout="oci", gzip_layers=True)
    image = _image(saved)
    files = archive.LayerFiles(len(image.layers))
    archive.stream_save(
        _chunks(tarball, 1 << 20, []), image, str(tmp_path / "spool.tar"), files, threading.Event()
    )
    for layer, digest in zip(image.layers, saved.layer_digests):
        blob = files.wait(layer.index, 1)
        assert _sha(blob) == digest  # the gzipped blob itself is served; Clair decompresses it
        with open(blob.path, "rb") as handle:
            handle.seek(blob.offset)
            assert handle.read(2) == b"\x1f\x8b"


def test_stream_that_breaks_reports_a_docker_error(tmp_path):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers(), layout="classic")
    image = _image(saved)

    def broken() -> Iterator[bytes]:
        for i, chunk in enumerate(_chunks(tarball, 4096, [])):
            if i == 10:
                raise ConnectionResetError("engine went away")
            yield chunk

    truncated = tmp_path / "short.tar"
    truncated.write_bytes(tarball.read_bytes()[:20_000])
    for chunks, message in ((broken(), "engine went away"), (_chunks(truncated, 4096, []), None)):
        files = archive.LayerFiles(len(image.layers))
        archive.stream_save(chunks, image, str(tmp_path / "spool.tar"), files, threading.Event())
        with pytest.raises(DockerError, match=message):
            for layer in image.layers:
                files.wait(layer.index, 1)


def test_stream_stops_when_asked(tmp_path):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers(), layout="classic")
    image = _image(saved)
    stop = threading.Event()
    consumed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i, chunk in enumerate(_chunks(tarball, 4096, consumed)):
            if i == 3:
                stop.set()
            yield chunk

    files = archive.LayerFiles(len(image.layers))
    archive.stream_save(chunks(), image, str(tmp_path / "spool.tar"), files, stop)
    assert len(consumed) <= 5
    with pytest.raises(DockerError):
        files.wait(len(image.layers) - 1, 1)


def _socket_body(data: bytes, head: int, cut: int | None = None) -> archive.SocketBody:
    """`data` as a response body: its first `head` bytes already received, the rest arriving on a
    real socket in small writes, the connection closed after `cut` bytes if given."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        # The reader may hang up first (a stopped save): the engine then sees a broken pipe.
        with theirs, contextlib.suppress(OSError):
            end = len(data) if cut is None else cut
            for start in range(head, end, 4096):
                theirs.sendall(data[start : min(start + 4096, end)])

    threading.Thread(target=send, daemon=True).start()
    return archive.SocketBody(data[:head], ours)


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv"])
def test_stream_from_a_socket_lands_whole_in_the_spool(tmp_path, monkeypatch, splice):
    if not splice:
        monkeypatch.delattr(os, "splice")  # as on systems without splice(2)
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers(), layout="classic")
    image = _image(saved)
    body = _socket_body(tarball.read_bytes(), head=1000)
    files = archive.LayerFiles(len(image.layers))
    with body.sock:
        archive.stream_save(body, image, str(tmp_path / "spool.tar"), files, threading.Event())
    for layer in image.layers:
        assert _sha(files.wait(layer.index, 1)) == layer.diff_id
    assert (tmp_path / "spool.tar").read_bytes() == tarball.read_bytes()


def test_socket_stream_cut_short_or_stopped_publishes_no_whole_image(tmp_path):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, _layers(), layout="classic")
    image = _image(saved)
    data = tarball.read_bytes()
    for stop_now in (False, True):
        body = _socket_body(data, head=512, cut=len(data) // 2)
        files = archive.LayerFiles(len(image.layers))
        stop = threading.Event()
        if stop_now:
            stop.set()
        with body.sock:
            archive.stream_save(body, image, str(tmp_path / "spool.tar"), files, stop)
        with pytest.raises(DockerError):
            for layer in image.layers:
                files.wait(layer.index, 1)
        # Stopped, it reads nothing at all; cut short, it reads to the cut.
        assert (tmp_path / "spool.tar").stat().st_size == (0 if stop_now else len(data) // 2)


@pytest.mark.parametrize("gzip_layers", [False, True], ids=["tar", "gzip-layers"])
@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_read_archive_finds_every_image_and_layer(tmp_path, layout, gzip_layers):
    layers = _layers()
    specs = [
        ImageSpec(
            layers,
            ["registry.example.com:5000/team/app:1.0"],
            history=[
                "ADD rootfs /",
                HistoryEntry("ENV A=1", True),
                "COPY app /",
                "COPY data /",
                "COPY app /",
            ],
        ),
        ImageSpec(layers[:2], ["other:2"]),
    ]
    saved = write_images(tmp_path / "two.tar", specs, layout=layout, gzip_layers=gzip_layers)
    found = archive.read_archive(str(tmp_path / "two.tar"), str(tmp_path))
    assert [f.image.name for f in found] == ["registry.example.com:5000/team/app:1.0", "other:2"]
    for item, expected in zip(found, saved):
        assert item.image.id == expected.image_id
        assert [layer.diff_id for layer in item.image.layers] == list(expected.diff_ids)
        assert [layer.chain_id for layer in item.image.layers] == chain_ids(list(expected.diff_ids))
        for layer, digest in zip(item.image.layers, expected.layer_digests):
            assert _sha(item.files.wait(layer.index, 1)) == digest
    assert [layer.created_by for layer in found[0].image.layers] == [
        "ADD rootfs /",
        "COPY app /",
        "COPY data /",
        "COPY app /",
    ]


def test_read_gzipped_archive(tmp_path):
    plain = tmp_path / "image.tar"
    saved = write_docker_save(plain, _layers()[:2], repo_tags=["app:1"])
    packed = tmp_path / "image.tar.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(src, out)
    work = tmp_path / "work"
    work.mkdir()
    (found,) = archive.read_archive(str(packed), str(work))
    assert found.image.id == saved.image_id
    assert _sha(found.files.wait(1, 1)) == saved.diff_ids[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a tarball at all" * 100, "not a readable docker save archive"),
        (b"\x1f\x8b\x08\x00garbage", "not a readable docker save archive"),
        # a gzip header, then a deflate block of the reserved type: zlib.error (found by test_fuzz)
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 20, "invalid block type"),
    ],
)
def test_corrupt_archives_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        archive.read_archive(str(path), str(tmp_path))


def test_archive_without_manifest_or_missing_layer(tmp_path):
    import tarfile

    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info)
    with pytest.raises(UsageError, match=r"neither manifest.json nor index.json"):
        archive.read_archive(str(empty), str(tmp_path))

    whole = tmp_path / "whole.tar"
    write_docker_save(whole, _layers()[:2], layout="oci")
    cut = tmp_path / "cut.tar"
    with tarfile.open(whole) as src, tarfile.open(cut, "w") as out:
        for member in src:
            if member.name.startswith("blobs/") and member.size > 5000:
                continue  # drop the layers
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
    with pytest.raises(UsageError, match="missing"):
        archive.read_archive(str(cut), str(tmp_path))
    with pytest.raises(UsageError, match="archive not found"):
        archive.read_archive(str(tmp_path / "nope.tar"), str(tmp_path))


def _cut_in_layer(tarball: Path, diff_id: str) -> tuple[bytes, int]:
    """The saved image's bytes, and an offset in the middle of the layer's tar."""
    import tarfile

    with tarfile.open(tarball) as tar:
        for member in tar:
            if (
                member.isfile()
                and _sha(archive.Blob(str(tarball), member.offset_data, member.size)) == diff_id
            ):
                return tarball.read_bytes(), member.offset_data + member.size // 2
    raise AssertionError("layer not found in the saved image")


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_a_layer_is_handed_out_at_its_header_and_read_as_it_arrives(tmp_path, layout):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, [Layer(files={"data/blob": Filler(3 << 20)})], layout=layout)
    image = _image(saved)
    data, cut = _cut_in_layer(tarball, image.layers[0].diff_id)
    gate = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield data[:cut]
        gate.wait(30)  # the engine is still exporting the rest
        yield data[cut:]

    files = archive.LayerFiles(1)
    thread = threading.Thread(
        target=archive.stream_save,
        args=(chunks(), image, str(tmp_path / "spool.tar"), files, threading.Event()),
        daemon=True,
    )
    thread.start()
    blob = files.wait(0, 10)
    assert not gate.is_set()
    assert blob.available(0) == cut - blob.offset < blob.size  # what is on disk, no more
    gate.set()
    done = 0
    while done < blob.size:
        done = blob.available(done)
    thread.join(10)
    assert _sha(blob) == image.layers[0].diff_id


def test_a_layer_cut_off_mid_stream_fails_its_reader(tmp_path):
    tarball = tmp_path / "save.tar"
    saved = write_docker_save(tarball, [Layer(files={"data/blob": Filler(3 << 20)})], layout="classic")
    image = _image(saved)
    data, cut = _cut_in_layer(tarball, image.layers[0].diff_id)

    def chunks() -> Iterator[bytes]:
        yield data[:cut]
        raise ConnectionResetError("engine went away")

    files = archive.LayerFiles(1)
    archive.stream_save(chunks(), image, str(tmp_path / "spool.tar"), files, threading.Event())
    blob = files.wait(0, 1)  # handed out before the break
    with pytest.raises(DockerError, match="engine went away"):
        done = 0
        while done < blob.size:
            done = blob.available(done)
    with pytest.raises(DockerError, match="engine went away"):
        files.check()


def test_a_full_temp_dir_is_named_not_the_archive(tmp_path, tiny_fs):
    """A .tar.gz is unpacked to the temp dir first: when that fills up, the message names the
    temp file that could not be written, and the archive (read fine) is not blamed."""
    plain = tmp_path / "image.tar"
    write_docker_save(plain, [Layer(files={"big.bin": Filler(200_000)})], repo_tags=["app:1"])
    packed = tmp_path / "image.tar.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(src, out)
    with pytest.raises(FileSystemError) as caught:
        archive.read_archive(str(packed), str(tiny_fs))
    assert str(caught.value) == (
        f"cannot write {tiny_fs / 'archive.tar'}: No space left on device "
        "(free space there, or point TMPDIR at a larger file system)"
    )
    assert str(packed) not in str(caught.value)


def test_a_full_temp_dir_in_a_scan(tmp_path, tiny_fs):
    from conftest import run_process

    plain = tmp_path / "image.tar"
    write_docker_save(plain, [Layer(files={"big.bin": Filler(200_000)})], repo_tags=["app:1"])
    packed = tmp_path / "image.tar.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(src, out)
    # Per layer: a distilled scan of a gzipped archive streams it and writes no copy.
    args = ["scan", "--per-layer", "--archive", str(packed), "--clair", "http://127.0.0.1:1"]
    result = run_process(args, env={"TMPDIR": str(tiny_fs)}, cwd=tmp_path)
    assert result.code == 3
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("clair-scan: error:")]
    assert f"cannot write {tiny_fs}/clair-scan-" in line and "No space left on device" in line
    assert f"cannot read {packed}" not in line
    assert list(tiny_fs.iterdir()) == []
