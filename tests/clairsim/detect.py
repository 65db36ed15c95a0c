"""Namespace detection and package listing from a layer's files (Clair's ext/featurens, ext/featurefmt).

Clair keeps its detectors in Go maps, so their order is random; we use one fixed order. The first
detector that names a namespace wins. All package listers run and their results are concatenated.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import versions

# The files the detectors and listers need; the tar walk keeps entries starting with these.
REQUIRED_FILES = [
    "etc/os-release",
    "usr/lib/os-release",
    "etc/lsb-release",
    "etc/apt/sources.list",
    "etc/alpine-release",
    "etc/oracle-release",
    "etc/centos-release",
    "etc/redhat-release",
    "etc/system-release",
    "var/lib/dpkg/status",
    "lib/apk/db/installed",
    "var/lib/rpm/Packages",
]

Files = dict[str, bytes]
# Warnings go through this hook so the server can log them Clair's way.
Warn = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class DetectedNamespace:
    name: str
    version_format: str


@dataclass(frozen=True)
class Package:
    name: str
    version: str


def _no_warn(event: str, fields: dict[str, object]) -> None:
    logging.getLogger("clairsim").debug("%s %s", event, fields)


# Go's bufio.Scanner refuses tokens of 64 KiB or more; Clair then silently stops reading.
_MAX_LINE = 64 * 1024 - 1


def scan_lines(data: bytes) -> Iterator[str]:
    """Lines as Go's bufio.Scanner(ScanLines) yields them, including its 64 KiB line limit."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end == -1:
            end = len(data)
            raw = data[start:]
            next_start = len(data)
        else:
            raw = data[start:end]
            next_start = end + 1
        if len(raw) > _MAX_LINE:
            return
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield raw.decode("utf-8", "surrogateescape")
        start = next_start


# --- namespaces -------------------------------------------------------------------------------

_DPKG_OSES = ("debian", "ubuntu")
_RPM_OSES = ("centos", "rhel", "fedora", "amzn", "ol", "oracle")


def _os_format(os_id: str) -> str | None:
    if os_id in _DPKG_OSES:
        return versions.DPKG
    if os_id in _RPM_OSES:
        return versions.RPM
    return None


def _clean(value: str) -> str:
    return value.lower().replace('"', "")


def detect_os_release(files: Files) -> DetectedNamespace | None:
    if any(name in files for name in ("etc/oracle-release", "etc/redhat-release", "usr/lib/centos-release")):
        return None
    os_id = version = ""
    for path in ("etc/os-release", "usr/lib/os-release"):  # the later file overrides
        if path not in files:
            continue
        for line in scan_lines(files[path]):
            if line.startswith("ID="):
                os_id = _clean(line[3:])
            if line.startswith("VERSION_ID="):
                version = _clean(line[11:])
    version_format = _os_format(os_id)
    if version_format is None or not os_id or not version:
        return None
    return DetectedNamespace(f"{os_id}:{version}", version_format)


def detect_lsb_release(files: Files) -> DetectedNamespace | None:
    if "etc/lsb-release" not in files:
        return None
    os_id = version = ""
    for line in scan_lines(files["etc/lsb-release"]):
        if line.startswith("DISTRIB_ID="):
            os_id = _clean(line[11:])
        if line.startswith("DISTRIB_RELEASE="):
            version = _clean(line[16:])
            # The ".04" matters for Ubuntu, not for Debian or CentOS (decided by the ID seen so far).
            if os_id in ("centos", "debian"):
                version = version.split(".", 1)[0]
    version_format = _os_format(os_id)
    if version_format is None or not os_id or not version:
        return None
    return DetectedNamespace(f"{os_id}:{version}", version_format)


DEBIAN_RELEASES = {
    "squeeze": "6",
    "wheezy": "7",
    "jessie": "8",
    "stretch": "9",
    "buster": "10",
    "bullseye": "11",
    "sid": "unstable",
    "oldoldstable": "8",
    "oldstable": "9",
    "stable": "10",
    "testing": "11",
    "unstable": "unstable",
}

UBUNTU_RELEASES = {
    "precise": "12.04",
    "quantal": "12.10",
    "raring": "13.04",
    "trusty": "14.04",
    "utopic": "14.10",
    "vivid": "15.04",
    "wily": "15.10",
    "xenial": "16.04",
    "yakkety": "16.10",
    "zesty": "17.04",
    "artful": "17.10",
    "bionic": "18.04",
    "cosmic": "18.10",
    "disco": "19.04",
    "eoan": "19.10",
    "focal": "20.04",
}


def detect_apt_sources(files: Files) -> DetectedNamespace | None:
    if "etc/apt/sources.list" not in files:
        return None
    for line in scan_lines(files["etc/apt/sources.list"]):
        fields = line.split(" ")  # single spaces, as Clair splits
        if len(fields) <= 3 or "main" not in fields[3:]:
            continue
        # Debian suites are looked up as written ("buster/updates" is not found), Ubuntu ones
        # with the "/..." suffix removed.
        if fields[2] in DEBIAN_RELEASES:
            return DetectedNamespace(f"debian:{DEBIAN_RELEASES[fields[2]]}", versions.DPKG)
        suite = fields[2].split("/", 1)[0]
        if suite in UBUNTU_RELEASES:
            return DetectedNamespace(f"ubuntu:{UBUNTU_RELEASES[suite]}", versions.DPKG)
    return None


_ALPINE_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")


def detect_alpine_release(files: Files) -> DetectedNamespace | None:
    if "etc/alpine-release" not in files:
        return None
    for line in scan_lines(files["etc/alpine-release"]):
        if _ALPINE_VERSION.fullmatch(line):
            major, minor, _ = line.split(".")
            return DetectedNamespace(f"alpine:v{major}.{minor}", versions.DPKG)
    return None


# Go's \s is [\t\n\f\r ] and \d is [0-9]; spell them out so Python's Unicode classes do not widen them.
_AMAZON = re.compile(r"(Amazon) (Linux release|Linux AMI release) ([0-9]+\.[0-9]+|[0-9]+)")
_ORACLE = re.compile(r"(Oracle) (Linux Server release) ([0-9]+)")
_CENTOS = re.compile(r"([^\t\n\f\r ]*) (Linux release|release) ([0-9]+)")
_REDHAT = re.compile(
    r"(Red Hat Enterprise Linux) (Client release|Server release|Workstation release|release) ([0-9]+)"
)


def detect_redhat_release(files: Files) -> DetectedNamespace | None:
    for path in ("etc/oracle-release", "etc/centos-release", "etc/redhat-release", "etc/system-release"):
        if path not in files:
            continue
        text = files[path].decode("utf-8", "surrogateescape")
        if match := _AMAZON.search(text):
            return DetectedNamespace(f"amzn:{match.group(3)}", versions.RPM)
        if match := _ORACLE.search(text):
            return DetectedNamespace(f"{match.group(1).lower()}:{match.group(3)}", versions.RPM)
        if match := _REDHAT.search(text):
            # Clair maps RHEL onto the CentOS namespace (a known hack in v2).
            return DetectedNamespace(f"centos:{match.group(3)}", versions.RPM)
        if match := _CENTOS.search(text):
            return DetectedNamespace(f"{match.group(1).lower()}:{match.group(3)}", versions.RPM)
    return None


NAMESPACE_DETECTORS: list[tuple[str, Callable[[Files], DetectedNamespace | None]]] = [
    ("os-release", detect_os_release),
    ("lsb-release", detect_lsb_release),
    ("apt-sources", detect_apt_sources),
    ("alpine-release", detect_alpine_release),
    ("redhat-release", detect_redhat_release),
]


def detect_namespace(files: Files) -> DetectedNamespace | None:
    for _, detector in NAMESPACE_DETECTORS:
        namespace = detector(files)
        if namespace is not None:
            return namespace
    return None


# --- packages ---------------------------------------------------------------------------------

_DPKG_SOURCE = re.compile(r"Source: (?P<name>[^\t\n\f\r ]*)( \((?P<version>.*)\))?")


def list_dpkg(files: Files, warn: Warn = _no_warn) -> list[Package]:
    """var/lib/dpkg/status; a `Source:` line renames the package to its source package.

    A pair is recorded as soon as name and version are both known, then both reset; a blank line
    resets too. Status is not looked at, so deinstalled packages still listed count.
    """
    if "var/lib/dpkg/status" not in files:
        return []
    found: dict[tuple[str, str], Package] = {}
    name = version = ""
    for line in scan_lines(files["var/lib/dpkg/status"]):
        if line.startswith("Package: "):
            name, version = line[len("Package: ") :].strip(), ""
        elif line.startswith("Source: "):
            match = _DPKG_SOURCE.search(line)
            assert match is not None  # the pattern matches any line starting with "Source: "
            name = match.group("name").strip()
            source_version = (match.group("version") or "").strip()
            if source_version:
                if versions.is_valid(versions.DPKG, source_version):
                    version = source_version
                else:
                    warn("could not parse package version. skipping", {"version": line[1]})
        elif line.startswith("Version: ") and not version:
            candidate = line[len("Version: ") :]
            if versions.is_valid(versions.DPKG, candidate):
                version = candidate
            else:
                warn("could not parse package version. skipping", {"version": line[1]})
        elif line == "":
            name = version = ""
        if name and version:
            found[(name, version)] = Package(name, version)
            name = version = ""
    return list(found.values())


def list_apk(files: Files, warn: Warn = _no_warn) -> list[Package]:
    """lib/apk/db/installed: `P:` name, `V:` version (checked with the dpkg parser).

    Clair skips lines shorter than two characters before its blank-line case, so a blank line
    never resets a half-read package.
    """
    if "lib/apk/db/installed" not in files:
        return []
    found: dict[tuple[str, str], Package] = {}
    name = version = ""
    for line in scan_lines(files["lib/apk/db/installed"]):
        if len(line) < 2:
            continue
        if line.startswith("P:"):
            name = line[2:]
        elif line.startswith("V:"):
            if versions.is_valid(versions.DPKG, line[2:]):
                version = line[2:]
            else:
                warn("could not parse package version. skipping", {"version": line[2:]})
        if name and version:
            found[(name, version)] = Package(name, version)
            name = version = ""
    return list(found.values())


def list_rpm(files: Files, warn: Warn = _no_warn) -> list[Package]:
    """var/lib/rpm/Packages through the `rpm` binary; no packages at all when rpm fails."""
    if "var/lib/rpm/Packages" not in files:
        return []
    rpm = shutil.which("rpm")
    with tempfile.TemporaryDirectory(prefix="rpm") as tmp:
        with open(os.path.join(tmp, "Packages"), "wb") as handle:
            handle.write(files["var/lib/rpm/Packages"])
        if rpm is None:
            warn("could not query RPM", {"error": 'exec: "rpm": executable file not found in $PATH'})
            return []
        done = subprocess.run(
            [rpm, "--dbpath", tmp, "-qa", "--qf", "%{NAME} %{EPOCH}:%{VERSION}-%{RELEASE}\n"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        warn("could not query RPM", {"output": done.stdout.decode("utf-8", "replace")})
        return []
    found: dict[tuple[str, str], Package] = {}
    for line in scan_lines(done.stdout):
        fields = line.split(" ")
        if len(fields) != 2 or fields[0] == "gpg-pubkey":
            continue
        version = fields[1].replace("(none):", "")
        if not versions.is_valid(versions.RPM, version):
            warn("could not parse package version. skipping", {"version": fields[1]})
            continue
        found[(fields[0], version)] = Package(fields[0], version)
    return list(found.values())


FEATURE_LISTERS: list[tuple[str, Callable[[Files, Warn], list[Package]]]] = [
    ("dpkg", list_dpkg),
    ("apk", list_apk),
    ("rpm", list_rpm),
]


def list_packages(files: Files, warn: Warn = _no_warn) -> list[Package]:
    packages: list[Package] = []
    for _, lister in FEATURE_LISTERS:
        packages.extend(lister(files, warn))
    return packages
