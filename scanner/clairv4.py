"""The Clair v4 client: which API a Clair speaks, indexing an image as one manifest, and its
vulnerability report as findings (see ../shared/CLAIR_V4_API.md, Clair 4.7.4).

Transport, retries and deadlines are the v2 client's (clair.ClairClient). What differs:

* The manifest hash names the image's layer digests *and* Clair's indexer state. Clair keeps a
  report per manifest hash, and only a POST tells it to re-index after its scanners changed;
  with the state in the hash, a rescan of an unchanged image under an unchanged Clair finds the
  finished report (index_state, then the vulnerability report: nothing exported or sent), and a
  Clair with new scanners gets a new manifest to index. Layer digests rather than the image ID
  go into it because a report belongs to the bytes Clair indexed.
* A layer's digest is that of exactly the bytes Clair downloads: for a `docker save` layer tar,
  its diff ID. Clair hashes what it receives and rejects a mismatch.
* POST index_report is synchronous: a 500 is a failed index, not a passing fault, so it is not
  retried; the stored report's IndexError message then says what went wrong.
* The matcher answers 202 while it holds no vulnerability data at all: waited on within the
  deadline, then reported as such.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from . import names
from .clair import ClairClient, Deadline, Response, json_object
from .errors import ClairError, IndexFailed, LayerDigestMismatch, UnsupportedMediaType
from .models import Cvss, Finding, Image, Layer, Severity
from .names import redact

log = logging.getLogger(__name__)

INDEX_STATE = "/indexer/api/v1/index_state"
INDEX_REPORT = "/indexer/api/v1/index_report"
VULNERABILITY_REPORT = "/matcher/api/v1/vulnerability_report"
CVSS_ENRICHMENT = (
    "message/vnd.clair.map.vulnerability; enricher=clair.cvss "
    "schema=https://csrc.nist.gov/schema/nvd/feed/1.1/cvss-v3.x.json"
)
# A failed index is final (500), but a full request queue (429) or a proxy's hiccup is not.
_POST_RETRY = frozenset({429, 502, 503, 504})
_POLL_FIRST, _POLL_MAX = 0.5, 5.0

LayerUri = Callable[[Layer], tuple[str, dict[str, str]]]


def detect(
    url: str, timeout: float = 30.0, client: ClairClient | None = None, start: float | None = None
) -> Literal["v2", "v4"]:
    """Which API the Clair at `url` speaks: v4 answers /indexer/api/v1/index_state, v2
    /v1/namespaces (each answers the other's path with 404). A given `client` (for `url`) lends
    its connection and is left open. `timeout` counts from `start` (time.monotonic()), when the
    wait for Clair began earlier (the head start's question)."""
    own = client is None
    client = client or ClairClient(url, retries=1)
    deadline = Deadline(timeout, start)
    try:
        answer = client.call("GET", INDEX_STATE, deadline, ok=(200, 401, 404, 405))
        if answer.status == 401:
            raise ClairError(
                f"Clair v4 at {redact(client.url)} requires authentication",
                hint="clair-scan does not sign Clair's PSK tokens; use a Clair without `auth`",
            )
        if answer.status == 200 and "state" in json_object(answer):
            return "v4"
        answer = client.call("GET", "/v1/namespaces", deadline, ok=(200, 401, 404, 405))
        if answer.status == 200:
            return "v2"
    finally:
        if own:
            client.close()
    raise ClairError(
        f"no Clair API at {redact(client.url)}: neither {INDEX_STATE} (v4) nor /v1/namespaces (v2) answered",
        hint="is --clair / CLAIR_ADDR the address of Clair's API port?",
    )


def layer_digest(layer: Layer) -> str:
    """The digest of the bytes Clair downloads for `layer`: a compressed blob's own digest, else
    the tar's, its diff ID. A distilled layer has neither before it is made: its name (the image
    ID and the distilling rules) stands for it in the manifest's hash."""
    return layer.digest or layer.diff_id or layer.chain_id


def manifest_hash(state: str, image: Image) -> str:
    return names.manifest_hash(state, [layer_digest(layer) for layer in image.layers])


class ClairV4:
    """Clair v4's indexer and matcher routes over a ClairClient's connection."""

    def __init__(self, client: ClairClient) -> None:
        self.client = client

    def index_state(self, deadline: Deadline) -> str:
        answer = self.client.call("GET", INDEX_STATE, deadline, ok=(200,))
        state = json_object(answer).get("state")
        if not isinstance(state, str) or not state:
            raise ClairError(f"Clair at {self._where} answered GET {INDEX_STATE} without a state")
        return state

    def index_report(self, digest: str, deadline: Deadline) -> dict[str, Any] | None:
        """The stored index report, in whatever state it is; None if Clair has none."""
        answer = self.client.call("GET", f"{INDEX_REPORT}/{digest}", deadline, ok=(200, 404))
        return None if answer.status == 404 else json_object(answer)

    def vulnerability_report(self, digest: str, deadline: Deadline) -> dict[str, Any] | int:
        """The report, or the status that stands for its absence: 404 (not indexed, or its index
        failed) or 202 (Clair holds no vulnerability data yet)."""
        answer = self.client.call("GET", f"{VULNERABILITY_REPORT}/{digest}", deadline, ok=(200, 202, 404))
        return json_object(answer) if answer.status == 200 else answer.status

    def index(self, manifest: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
        """POST the manifest; Clair downloads and indexes every layer it lacks before answering."""
        answer = self.client.call(
            "POST", INDEX_REPORT, deadline, ok=(201, 400, 500), body=manifest, retry_status=_POST_RETRY
        )
        if answer.status == 201:
            return json_object(answer)
        message = _clair_message(answer)
        stored = self.index_report(manifest["hash"], deadline)
        if stored is not None and stored.get("state") == "IndexError" and stored.get("err"):
            message = str(stored["err"])  # what Clair recorded, rather than the wrapped answer
        raise _index_error(message, manifest)

    @property
    def _where(self) -> str:
        return redact(self.client.url)


def _clair_message(answer: Response) -> str:
    try:
        message = json_object(answer).get("message")
    except ClairError:
        message = None
    return str(message) if message else f"status {answer.status}"


_URL = re.compile(r"(https?://)(?:[^@/\s\"]*@)?([^/\s\"?]+)[^\s\"]*")


def _scrub(message: str) -> str:
    """Clair quotes the URLs it failed to fetch; their paths and queries carry the layer
    server's token or a registry's, so only scheme and host are kept."""
    return _URL.sub(r"\1\2/…", message)


def _index_error(message: str, manifest: dict[str, Any]) -> ClairError:
    """The error for a failed index: which layer and why, in one line."""
    message = _scrub(message)
    position = {layer["hash"]: index for index, layer in enumerate(manifest["layers"], 1)}
    layer = next((f"layer {n} ({digest})" for digest, n in position.items() if digest in message), "a layer")
    if "validation failed" in message:
        got = message.split('got "', 1)[-1].split('"', 1)[0]
        return LayerDigestMismatch(
            f"Clair v4 rejected {layer}: the bytes it downloaded hash to {got}",
            hint="the layer server must serve exactly the bytes the digest names",
        )
    if "content-type" in message or "mismatched compression" in message:
        reason = message.rsplit("fetcher: ", 1)[-1]
        return UnsupportedMediaType(f"Clair v4 refused {layer}: {reason}")
    return IndexFailed(f"Clair v4 could not index the image: {message.splitlines()[0] if message else ''}")


def analyze_v4(
    client: ClairClient,
    image: Image,
    layer_uri: LayerUri,
    deadline: Deadline,
    served_digest: Callable[[Layer], str] = layer_digest,
) -> tuple[str, int, tuple[Finding, ...], int]:
    """Make sure Clair v4 has indexed `image`, then read its findings: (namespace, package count,
    findings, layers sent). `layer_uri` gives each layer's URL and request headers; it is called
    only when Clair lacks the manifest, and `served_digest` after it, for the digest of the bytes
    it serves (a distilled layer's is known only once it is made)."""
    clair = ClairV4(client)
    digest = manifest_hash(clair.index_state(deadline), image)
    report = clair.vulnerability_report(digest, deadline)
    sent = 0
    # 202 comes before the manifest lookup: it says nothing about whether the image is indexed.
    indexed = report != 404 and (report != 202 or _finished(clair.index_report(digest, deadline)))
    if not indexed:
        layers: list[dict[str, Any]] = []
        for layer in image.layers:
            uri, headers = layer_uri(layer)
            layers.append(
                {"hash": served_digest(layer), "uri": uri, "headers": {k: [v] for k, v in headers.items()}}
            )
        manifest = {"hash": digest, "layers": layers}
        log.debug("posting manifest %s with %d layers", digest, len(image.layers))
        clair.index(manifest, deadline)
        sent = len({layer["hash"] for layer in layers})
        report = clair.vulnerability_report(digest, deadline)
    report = _wait_for_data(clair, digest, report, deadline)
    if isinstance(report, int):
        raise IndexFailed(f"Clair v4 has no finished index of {image.name} right after indexing it")
    namespace, packages, found = findings_from_report(report, image)
    return namespace, packages, found, sent


def _finished(index: dict[str, Any] | None) -> bool:
    return index is not None and index.get("state") == "IndexFinished"


def _wait_for_data(
    clair: ClairV4, digest: str, report: dict[str, Any] | int, deadline: Deadline
) -> dict[str, Any] | int:
    started, delay = time.monotonic(), _POLL_FIRST
    while report == 202:
        if deadline.remaining() <= delay:
            raise ClairError(
                f"Clair at {clair._where} has no vulnerability data yet "
                f"(it answered 202 for {time.monotonic() - started:.0f} s)",
                hint="its updaters have not finished their first run; scan again later",
            )
        log.debug("Clair has no vulnerability data yet; asking again in %.1fs", delay)
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)
        report = clair.vulnerability_report(digest, deadline)
    return report


# --- the report as findings ---------------------------------------------------------------------


def _severity(text: Any) -> Severity:
    try:
        return Severity.parse(str(text))
    except ValueError:
        return Severity.UNKNOWN


def _namespace(distribution: Any) -> str:
    if not isinstance(distribution, dict) or not distribution.get("did"):
        return ""
    version = distribution.get("version_id") or distribution.get("version") or ""
    return f"{distribution['did']}:{version}" if version else str(distribution["did"])


def _cvss(enrichments: Any) -> dict[str, tuple[Cvss, ...]]:
    """The CVSS enrichment: {vulnerability id: scores}, from NVD's cvssV3 objects."""
    scores: dict[str, tuple[Cvss, ...]] = {}
    entries = enrichments.get(CVSS_ENRICHMENT) if isinstance(enrichments, dict) else None
    for entry in entries or []:
        for vuln_id, items in (entry or {}).items() if isinstance(entry, dict) else ():
            found = []
            for item in items or []:
                if isinstance(item, dict) and item.get("vectorString") and item.get("baseScore") is not None:
                    major = str(item.get("version") or "3").split(".")[0]
                    found.append(Cvss(major, float(item["baseScore"]), str(item["vectorString"])))
            scores[str(vuln_id)] = tuple(found)
    return scores


def findings_from_report(report: dict[str, Any], image: Image) -> tuple[str, int, tuple[Finding, ...]]:
    """One finding per (vulnerability, package). A package is named as the vulnerability data
    names it: the source package (`openssl` for libssl1.1), as Clair v2 named it too, so
    whitelists mean the same under both APIs. Severity is Clair's normalized one; the layer is
    the one whose digest the package's environment gives as `introduced_in`."""
    by_digest: dict[str, Layer] = {}
    for layer in image.layers:
        by_digest.setdefault(layer_digest(layer), layer)
    packages = report.get("packages") or {}
    vulnerabilities = report.get("vulnerabilities") or {}
    distributions = report.get("distributions") or {}
    environments = report.get("environments") or {}
    scores = _cvss(report.get("enrichments"))
    findings: dict[tuple[str, str, str], Finding] = {}
    for package_id, vuln_ids in (report.get("package_vulnerabilities") or {}).items():
        package = packages.get(package_id) or {}
        source = package.get("source") or {}
        envs = [e for e in environments.get(package_id) or [] if isinstance(e, dict)]
        layers = [by_digest[e["introduced_in"]] for e in envs if e.get("introduced_in") in by_digest]
        introduced = min(layers, key=lambda item: item.index) if layers else None
        for vuln_id in vuln_ids or []:
            vuln = vulnerabilities.get(vuln_id)
            if not isinstance(vuln, dict):
                continue
            name = (vuln.get("package") or {}).get("name") or source.get("name") or package.get("name") or ""
            from_source = bool(source.get("name")) and name == source.get("name") and source.get("version")
            installed = str(source["version"] if from_source else package.get("version") or "")
            distribution = vuln.get("distribution") or distributions.get(
                next((e.get("distribution_id") for e in envs if e.get("distribution_id")), ""), {}
            )
            finding = Finding(
                vulnerability=str(vuln.get("name") or ""),
                package=str(name),
                installed=installed,
                fixed=str(vuln["fixed_in_version"]) if vuln.get("fixed_in_version") else None,
                severity=_severity(vuln.get("normalized_severity")),
                namespace=_namespace(distribution),
                link=next(iter(str(vuln.get("links") or "").split()), ""),
                description=str(vuln.get("description") or ""),
                cvss=scores.get(str(vuln_id), ()),
                layer=introduced,
            )
            key = (finding.vulnerability, finding.package, finding.installed)
            known = findings.get(key)
            # Several binary packages of one source: the earliest layer introduced it.
            if known is None or (
                finding.layer is not None and (known.layer is None or finding.layer.index < known.layer.index)
            ):
                findings[key] = finding
    ordered = sorted(findings.values(), key=lambda f: (-f.severity, f.vulnerability, f.package, f.installed))
    namespaces = sorted({_namespace(d) for d in distributions.values()} - {""})
    return " ".join(namespaces), len(packages), tuple(ordered)
