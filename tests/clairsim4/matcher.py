"""The matcher: an index report and the vulnerability data give a vulnerability report
(cc:internal/matcher/match.go, cc:enricher/cvss).

The data is a clairsim Store (the v2 simulator's vulnerability data, in memory or in Clair v2's
PostgreSQL schema), so the same images give comparable findings under both simulators. Each
record becomes what Clair v4's updaters store:

* the namespace (`debian:10`, `alpine:v3.10`) is matched against the report's distribution;
* a package is matched on its own name and on its source package's name (claircore queries
  both), and is affected when its version is older than the fix (dpkg or rpm comparison, as
  the v2 simulator does) or when there is no fix;
* one v4 vulnerability per (record, fixed package), with `links` one space-separated string
  (the record's link, plus NVD's page for a CVE), `severity` the record's own word and
  `normalized_severity` that word on v4's scale (v2's Defcon1 becomes Critical, the top there);
* a record's NVD CVSSv3 metadata becomes the CVSS enrichment (`clair.cvss`), keyed by the
  vulnerability id, as an NVD 1.1 `cvssV3` object.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

from clairsim import detect, versions
from clairsim.model import FeatureKey, Vulnerability
from clairsim.store import UPDATER_LAST, Store

from .indexer import IndexRecord
from .model import CVSS_ENRICHMENT, NORMALIZED, ZERO_TIME, Distribution, IdTable, sorted_map


def namespace_of(distribution: Distribution | None) -> str | None:
    """The v2 namespace whose records apply to a distribution."""
    if distribution is None or not distribution.version_id:
        return None
    if distribution.did == "alpine":
        return f"alpine:v{distribution.version_id}"
    if distribution.did in ("rhel", "centos"):
        return f"centos:{distribution.version_id.split('.')[0]}"
    return f"{distribution.did}:{distribution.version_id}"


def normalized(severity: str) -> str:
    if severity == "Defcon1":
        return "Critical"
    return severity if severity in NORMALIZED else "Unknown"


def has_data(store: Store) -> bool:
    """Whether the vulnerability table holds anything (Clair answers 202 until it does)."""
    return any(store.list_vulnerabilities(ns.name, 1, 0)[0] for ns in store.list_namespaces())


def _base_severity(score: float) -> str:
    if score == 0:
        return "NONE"
    if score < 4:
        return "LOW"
    if score < 7:
        return "MEDIUM"
    if score < 9:
        return "HIGH"
    return "CRITICAL"


def cvss_v3(vulnerability: Vulnerability) -> dict[str, Any] | None:
    metadata = vulnerability.metadata or {}
    nvd = metadata.get("NVD") if isinstance(metadata, dict) else None
    entry = nvd.get("CVSSv3") if isinstance(nvd, dict) else None
    if not isinstance(entry, dict) or not entry.get("Vectors") or entry.get("Score") is None:
        return None
    vector = str(entry["Vectors"])
    version = vector.split("/", 1)[0].partition(":")[2] if vector.startswith("CVSS:") else "3.0"
    score = float(entry["Score"])
    return {
        "version": version,
        "vectorString": vector,
        "baseScore": score,
        "baseSeverity": _base_severity(score),
    }


def _links(vulnerability: Vulnerability) -> str:
    links = [vulnerability.link] if vulnerability.link else []
    if vulnerability.name.startswith("CVE-"):
        links.append(f"https://nvd.nist.gov/vuln/detail/{vulnerability.name}")
    return " ".join(links)


_DEBIAN_CODENAMES: dict[str, str] = {}
for _name, _number in detect.DEBIAN_RELEASES.items():
    _DEBIAN_CODENAMES.setdefault(_number, _name)  # codenames come before "stable" and the like


def updater_name(namespace: str) -> str:
    """The claircore updater that would have written a namespace's records."""
    did, _, version = namespace.partition(":")
    if did == "debian":
        return f"debian/updater/{_DEBIAN_CODENAMES.get(version, version)}"
    if did == "alpine":
        return f"alpine-main-{version}-updater"
    return f"{did}-{version}-updater"


def update_operations(store: Store, kind: str) -> dict[str, list[dict[str, str]]]:
    """GET …/internal/update_operation: one finished operation per updater that has data, dated
    by the data file's `updated` (the time of loading when it has none)."""
    namespaces = sorted(
        ns.name for ns in store.list_namespaces() if store.list_vulnerabilities(ns.name, 1, 0)[0]
    )
    if not namespaces:
        return {}
    updated = store.get_key_value(UPDATER_LAST)
    stamp = datetime.fromtimestamp(int(updated) if updated else _LOADED, timezone.utc)
    date = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    names = [updater_name(ns) for ns in namespaces] if kind == "vulnerability" else ["clair.cvss"]
    return {
        name: [
            {
                "ref": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name} {date}")),
                "updater": name,
                "fingerprint": "",
                "date": date,
                "kind": kind,
            }
        ]
        for name in names
    }


_LOADED = int(time.time())


def _updater(distribution: Distribution) -> str:
    return updater_name(namespace_of(distribution) or distribution.did)


def vulnerability_report(
    record: IndexRecord, base: dict[str, Any], store: Store, ids: IdTable
) -> dict[str, Any]:
    """The report: the index report's packages, distributions, repository and environments, and
    the vulnerabilities affecting its packages."""
    formats = {ns.name: ns.compare_format for ns in store.list_namespaces()}
    vulnerabilities: dict[str, Any] = {}
    by_package: dict[str, list[str]] = {}
    cvss: dict[str, Any] = {}
    for package, env in record.packages.items():
        namespace = namespace_of(env.distribution)
        if namespace is None or env.distribution is None:
            continue
        names = dict.fromkeys(n for n in (package.name, package.source_name) if n)
        keys = [FeatureKey(namespace, name, package.version) for name in names]
        found = store.matches(keys, formats)
        package_id = package.json(ids)["id"]
        for key in keys:
            for match in found.get(key, []):
                vuln = match.vulnerability
                vuln_id = ids.vulnerability((vuln.id, vuln.name, key.name))
                fixed = "" if match.fixed_by == versions.MAX_VERSION else match.fixed_by
                vulnerabilities[vuln_id] = _vulnerability_json(
                    vuln, vuln_id, key.name, fixed, env.distribution, ids
                )
                if vuln_id not in by_package.setdefault(package_id, []):
                    by_package[package_id].append(vuln_id)
                score = cvss_v3(vuln)
                if score is not None:
                    cvss[vuln_id] = [score]
    report = {"manifest_hash": base["manifest_hash"]}
    for key in ("packages", "distributions", "repository", "environments"):
        report[key] = base[key]
    report["vulnerabilities"] = sorted_map(vulnerabilities)
    report["package_vulnerabilities"] = sorted_map(by_package)
    report["enrichments"] = {CVSS_ENRICHMENT: [sorted_map(cvss)]} if cvss else {}
    return report


def _vulnerability_json(
    vuln: Vulnerability, vuln_id: str, package: str, fixed: str, distribution: Distribution, ids: IdTable
) -> dict[str, Any]:
    dist = distribution.json(ids)
    dist["id"] = ""
    return {
        "id": vuln_id,
        "updater": _updater(distribution),
        "name": vuln.name,
        "description": vuln.description,
        "issued": ZERO_TIME,
        "links": _links(vuln),
        "severity": vuln.severity,
        "normalized_severity": normalized(vuln.severity),
        "package": {
            "id": "",
            "name": package,
            "version": "",
            "kind": "source",
            "normalized_version": "",
            "cpe": "",
        },
        "distribution": dist,
        "fixed_in_version": fixed,
    }
