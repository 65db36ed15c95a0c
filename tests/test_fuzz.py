"""Property-based tests at every boundary where outside data comes in: command-line values,
whitelist YAML, `docker save` archives (random and mutated tarballs), Clair's JSON answers.

The property, whatever comes in: the exit code is a documented one (0, 1, 2, 3) and 0 or 1 only
for a scan that finished (its report is complete), no traceback and no "unexpected" error (a
bug), nothing left in the temp dir, no report unless the scan finished.

CI runs a few examples of each (the `ci` profile in conftest.py); a long hunt:
`.venv/bin/python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz`.
"""

from __future__ import annotations

import gzip
import http.server
import itertools
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import debian_image_layers, run_cli
from imagebuild import write_docker_save
from reportcheck import validate_gitlab_report
from scanner import whitelist
from scanner.errors import ClairError, UsageError

pytestmark = pytest.mark.fuzz
REPORT = "gl-container-scanning-report.json"


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _holds(result, cwd: Path, private_tmp: Path, report: str | None = REPORT) -> None:
    """The property every run must have, whatever it was given."""
    context = f"exit {result.code}\nstderr: {result.stderr}"
    assert result.code in (0, 1, 2, 3), context
    assert "Traceback" not in result.stderr, context
    assert "please report it" not in result.stderr, context  # a bug, reported as one
    if report is not None:
        written = cwd / report
        if result.code in (0, 1):
            validate_gitlab_report(json.loads(written.read_text()))
        else:
            assert not written.exists(), context
    assert not [p for p in cwd.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"], context
    assert list(private_tmp.iterdir()) == [], context


class _Archives(dict):
    def __repr__(self) -> str:  # hypothesis shows the arguments of a failing example
        return f"archives({', '.join(self)})"


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """Small real `docker save` archives, classic and OCI (gzipped layers), and a gzipped one."""
    where = tmp_path_factory.mktemp("archives")
    built = _Archives()
    for name, layout, gz in (("classic", "classic", False), ("oci", "oci", True)):
        path = where / f"{name}.tar"
        write_docker_save(
            path, debian_image_layers()[:2], repo_tags=[f"fuzz/{name}:1"], layout=layout, gzip_layers=gz
        )
        built[name] = path.read_bytes()
    built["classic.tar.gz"] = gzip.compress(built["classic"], compresslevel=1)
    return built


def _workdir(tmp_path: Path) -> Path:
    """A fresh directory per example (examples share the test's fixtures)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


# --- command-line values


_NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "0.5", "1", "1e309", "", " 5", "5s", "0x10", "3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(2**70), 2**70).map(str),
)


@st.composite
def _clair_urls(draw, live_port: int) -> str:
    scheme = draw(st.sampled_from(["http://", "https://", "ftp://", "", "http:/", "HTTP://"]))
    userinfo = draw(st.sampled_from(["", "u:p@", "user:s3cr%40t@", ":@", "@", "a@b@"]))
    host = draw(st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "[127.0.0.1", "127.0.0.1]"]))
    port = draw(
        st.one_of(
            st.sampled_from(
                [f":{live_port}", f":{_dead_port()}", ":0", ":65536", ":99999", ":-1", ":60x0", ":", ""]
            ),
            st.text(max_size=6).map(lambda p: ":" + p),
        )
    )
    path = draw(st.sampled_from(["", "/", "/v1", "/x?y#z", "//", "/%zz"]))
    return scheme + userinfo + host + port + path


@given(data=st.data())
def test_command_line_values(data, clair, archives, tmp_path, private_tmp):
    cwd = _workdir(tmp_path)
    (cwd / "image.tar").write_bytes(archives["classic"])
    args = ["scan", "--archive", "image.tar"]
    options = {
        "--clair": _clair_urls(clair.port),
        "--threshold": st.one_of(
            st.sampled_from(["Unknown", "high", "CRITICAL", "Defcon1", "Severe", ""]), st.text(max_size=10)
        ),
        "--clair-timeout": _NUMBERS,
        "--port": st.one_of(
            st.sampled_from(["0", "65535", "65536", "-1", "x"]), st.integers(-5, 70000).map(str)
        ),
        "--ip": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "256.1.1.1", "", "localhost", "not an ip"]),
        "--format": st.sampled_from(["table", "json", "xml", ""]),
        "--report": st.sampled_from([REPORT, "", "sub/dir/r.json", "."]),
    }
    chosen = data.draw(st.lists(st.sampled_from(sorted(options)), unique=True, min_size=1))
    for option in ["--clair", *chosen]:
        args += [option, data.draw(options[option], label=option)]
    if "--ip" not in chosen:
        args += ["--ip", "127.0.0.1"]
    result = run_cli(args, cwd=cwd)
    report = dict(itertools.pairwise(args)).get("--report", REPORT)
    _holds(result, cwd, private_tmp, report if report not in ("", ".") else None)


@pytest.mark.docker
@given(name=st.one_of(st.text(max_size=60), st.from_regex(r"[a-z0-9./:@_-]{0,40}", fullmatch=True)))
def test_image_names(name, docker_client, tmp_path, private_tmp):
    assume("\x00" not in name)  # no process argument can hold one
    cwd = _workdir(tmp_path)
    result = run_cli(["scan", name, "--clair", f"http://127.0.0.1:{_dead_port()}"], cwd=cwd)
    assert result.code in (2, 3), result.stderr  # no such image, or no Clair: never 0 or 1
    _holds(result, cwd, private_tmp)


# --- whitelist YAML

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.dates().map(str),
    st.sampled_from(["2027-02-30", "2027-13-01", "0000-01-01", "9999-12-31", "2027-01-31T25:00:00"]),
)
_YAML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["generalwhitelist", "images", "package", "reason", "expires"]),
                st.text(max_size=8),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
_VALID = """generalwhitelist:
  CVE-2017-6055: XML
  CVE-2019-1543: {package: openssl, reason: no TLS, expires: 2027-06-30}
images:
  ubuntu:
    CVE-2017-5230: XSX
"""


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(_VALID.encode())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(
            st.binary(min_size=1, max_size=4)
            | st.sampled_from([b":", b"{", b"[", b"\n  ", b"-", b"!!", b"&a", b"*a", b"'"])
        )
        if what == "insert":
            data[at:at] = piece
        elif what == "delete":
            del data[at : at + len(piece)]
        else:
            data[at : at + len(piece)] = piece
    return bytes(data)


def _yaml(value) -> bytes:
    import yaml

    text = yaml.safe_dump(value, allow_unicode=True)
    # A date-like string is quoted by safe_dump; unquoted it is a YAML date, the risky kind.
    return text.replace("'", "").encode()


@given(content=st.one_of(_YAML_VALUES.map(_yaml), _mutated(), st.binary(max_size=200)))
def test_whitelist_files(content, tmp_path):
    path = _workdir(tmp_path) / "whitelist.yml"
    path.write_bytes(content)
    try:
        loaded = whitelist.load(str(path))
    except UsageError as exc:
        assert str(path) in str(exc)
    else:
        assert all(isinstance(entry, whitelist.Entry) for entry in loaded.entries)


@given(content=st.one_of(_mutated(), _YAML_VALUES.map(_yaml)))
def test_whitelist_files_through_the_cli(content, tmp_path, private_tmp):
    cwd = _workdir(tmp_path)
    (cwd / "w.yml").write_bytes(content)
    result = run_cli(
        ["scan", "--archive", "none.tar", "--clair", "http://127.0.0.1:1", "-w", "w.yml"], cwd=cwd
    )
    assert result.code == 2, result.stderr  # a bad whitelist or, after it, the missing archive
    _holds(result, cwd, private_tmp)


# --- docker save archives, mutated


@st.composite
def _damaged(draw, archives: dict[str, bytes]) -> bytes:
    data = bytearray(archives[draw(st.sampled_from(sorted(archives)))])
    for _ in range(draw(st.integers(0, 8))):
        bit = draw(st.integers(0, len(data) * 8 - 1))
        data[bit // 8] ^= 1 << (bit % 8)
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@given(data=st.data())
def test_damaged_archives(data, clair, archives, tmp_path, private_tmp):
    content = data.draw(st.one_of(_damaged(archives), st.binary(max_size=2048)))
    cwd = _workdir(tmp_path)
    (cwd / "image.tar").write_bytes(content)
    args = [
        "scan",
        "--archive",
        "image.tar",
        "--clair",
        clair.url,
        "--ip",
        "127.0.0.1",
        "--clair-timeout",
        "5",
    ]
    result = run_cli(args, cwd=cwd)
    _holds(result, cwd, private_tmp)


# --- Clair's answers


class _RandomClair(http.server.ThreadingHTTPServer):
    """Answers each request with the next of `answers` (status, body, gzip?), over and over."""

    daemon_threads = True
    answers: ClassVar[list[tuple[int, bytes, bool]]]
    served = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _RandomClair
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        answers = self.server.answers
        status, body, gz = answers[self.server.served % len(answers)]
        self.server.served += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def random_clair() -> Iterator[_RandomClair]:
    server = _RandomClair(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def _any(shape):
    return st.one_of(shape, _JSON)


_VULNERABILITY = st.fixed_dictionaries(
    {},
    optional={
        "Name": _any(st.text(max_size=12)),
        "Severity": _any(st.sampled_from(["High", "Low", "Defcon1", "Severe"])),
        "FixedBy": _JSON,
        "NamespaceName": _JSON,
        "Link": _JSON,
        "Description": _JSON,
        "Metadata": _any(
            st.fixed_dictionaries(
                {
                    "NVD": _any(
                        st.fixed_dictionaries(
                            {"CVSSv3": _any(st.fixed_dictionaries({"Score": _JSON, "Vectors": _JSON}))}
                        )
                    )
                }
            )
        ),
    },
)
_FEATURE = st.fixed_dictionaries(
    {},
    optional={
        "Name": _JSON,
        "Version": _JSON,
        "AddedBy": _JSON,
        "NamespaceName": _JSON,
        "Vulnerabilities": _any(st.lists(_any(_VULNERABILITY), max_size=3)),
    },
)
_LAYER = st.fixed_dictionaries(
    {
        "Layer": _any(
            st.fixed_dictionaries(
                {}, optional={"NamespaceName": _JSON, "Features": _any(st.lists(_any(_FEATURE), max_size=3))}
            )
        )
    }
)
_ANSWER = st.tuples(
    st.sampled_from([200, 200, 200, 201, 404, 400, 422, 500]),
    st.one_of(
        _LAYER.map(lambda v: json.dumps(v).encode()),
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.just(b'{"Error": {"Message": "Authorization: Basic dXNlcjpwYXNz"}}'),
        st.binary(max_size=64),
    ),
    st.booleans(),
).map(lambda a: (a[0], gzip.compress(a[1]) if a[2] and a[1][:1] != b"\x00" else a[1], a[2]))


@given(answers=st.lists(_ANSWER, min_size=1, max_size=6))
def test_clair_answers_to_the_client(answers, random_clair):
    """Whatever Clair answers, the client and the findings stage raise ClairError or return."""
    from scanner import findings
    from scanner.clair import ClairClient, Deadline
    from scanner.models import Image, Layer

    random_clair.answers, random_clair.served = answers, 0
    client = ClairClient(f"http://127.0.0.1:{random_clair.server_port}", retries=1, backoff=0.01)
    image = Image("fuzz:1", "sha256:" + "0" * 64, (Layer(0, "sha256:" + "1" * 64, "sha256:" + "1" * 64, ""),))
    try:
        for _ in range(len(answers)):
            try:
                layer = client.layer("sha256:" + "1" * 64, Deadline(5))
                if layer is not None:
                    findings.from_clair(layer, image)
                client.namespaces(Deadline(5))
                client.submit("x", "http://127.0.0.1:1/x", "", Deadline(5))
            except ClairError:
                pass
    finally:
        client.close()


@given(answers=st.lists(_ANSWER, min_size=1, max_size=6))
def test_clair_answers_to_a_scan(answers, random_clair, archives, tmp_path, private_tmp):
    random_clair.answers, random_clair.served = answers, 0
    cwd = _workdir(tmp_path)
    (cwd / "image.tar").write_bytes(archives["classic"])
    url = f"http://127.0.0.1:{random_clair.server_port}"
    result = run_cli(
        ["scan", "--archive", "image.tar", "--clair", url, "--ip", "127.0.0.1", "--clair-timeout", "1"],
        cwd=cwd,
    )
    _holds(result, cwd, private_tmp)
