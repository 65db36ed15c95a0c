"""Hand-made results for the format tests: every severity, CVSS, whitelisted and below-threshold
findings, outside text that needs escaping, and several images."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from scanner.models import Analysis, Cvss, Finding, Image, ImageResult, Layer, Package, Severity

START = datetime(2026, 11, 23, 7, 0, 1, tzinfo=timezone.utc)
END = datetime(2026, 11, 23, 7, 0, 9, tzinfo=timezone.utc)
V3 = Cvss("3", 9.8, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
V2 = Cvss("2", 7.5, "AV:N/AC:L/Au:N/C:P/I:P/A:P")


def _layers() -> tuple[Layer, ...]:
    return (
        Layer(0, "sha256:" + "a" * 64, "sha256:" + "a" * 64, "ADD rootfs.tar /"),
        Layer(1, "sha256:" + "c" * 64, "sha256:" + "d" * 64, "RUN apt-get install -y libidn2-0"),
    )


def debian_result(
    name: str = "registry.example.com:5000/team/app:1.0", threshold: Severity = Severity.LOW
) -> ImageResult:
    layers = _layers()
    packages = (
        Package("openssl", "1.1.1d-0+deb10u1", "debian:10", "dpkg"),
        Package("glibc", "2.28-10", "debian:10", "dpkg"),
        Package("bash", "5.0-4", "debian:10", "dpkg"),
        Package("libidn2", "2.0.5-1", "debian:10", "dpkg"),
        Package("zlib", "1:1.2.11.dfsg-1", "debian:10", "dpkg"),
        Package("gcc-8", "8.3.0-6", "debian:10", "dpkg"),
    )
    findings = (
        Finding(
            "DSA-4539-1",
            "glibc",
            "2.28-10",
            "2.28-10+deb10u1",
            Severity.DEFCON1,
            "debian:10",
            "https://security-tracker.debian.org/tracker/DSA-4539-1",
            "glibc <b>overflow</b> & more",
            (),
            layers[0],
        ),
        Finding(
            "CVE-2019-18224",
            "libidn2",
            "2.0.5-1",
            "2.0.5-1+deb10u1",
            Severity.CRITICAL,
            "debian:10",
            "https://security-tracker.debian.org/tracker/CVE-2019-18224",
            "idn2 heap overflow",
            (V3, V2),
            layers[1],
            ignored="not reachable (whitelist.yml, expires 2099-01-01)",
        ),
        Finding(
            "CVE-2019-1543",
            "openssl",
            "1.1.1d-0+deb10u1",
            "1.1.1d-0+deb10u2",
            Severity.HIGH,
            "debian:10",
            "https://security-tracker.debian.org/tracker/CVE-2019-1543",
            "ChaCha20-Poly1305 | nonce",
            (Cvss("3", 7.4, "CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:N"),),
            layers[0],
        ),
        Finding(
            "CVE-2019-5094",
            "e2fsprogs",
            "1.44.5-1+deb10u1",
            None,
            Severity.MEDIUM,
            "debian:10",
            "",
            "<script>alert(1)</script>",
            (),
            layers[0],
        ),
        Finding(
            "CVE-2019-18276",
            "bash",
            "5.0-4",
            None,
            Severity.NEGLIGIBLE,
            "debian:10",
            "https://security-tracker.debian.org/tracker/CVE-2019-18276",
            "",
            (),
            layers[0],
        ),
    )
    image = Image(
        name, "sha256:" + "b" * 64, layers, ("registry.example.com:5000/team/app@sha256:" + "e" * 64,)
    )
    analysis = Analysis(image, "debian:10", len(packages), findings, START, END, 2, packages)
    return ImageResult(analysis, findings, threshold, ("the whitelist entry CVE-2099-0001 matched nothing",))


def alpine_result(name: str = "alpine:3.10") -> ImageResult:
    layers = _layers()[:1]
    packages = (
        Package("musl", "1.1.22-r3", "alpine:v3.10", "dpkg"),
        Package("curl", "7.66.0-r0", "alpine:v3.10", "dpkg"),
    )
    findings = (
        Finding(
            "CVE-2019-5481",
            "curl",
            "7.66.0-r0",
            "7.66.0-r1",
            Severity.HIGH,
            "alpine:v3.10",
            "",
            "double free",
            (V3,),
            layers[0],
        ),
    )
    image = Image(name, "sha256:" + "f" * 64, layers)
    analysis = Analysis(image, "alpine:v3.10", 2, findings, START, END, 1, packages)
    return ImageResult(analysis, findings, Severity.UNKNOWN)


def clean_result(name: str = "clean/app:2") -> ImageResult:
    result = alpine_result(name)
    analysis = replace(result.analysis, findings=())
    return ImageResult(analysis, (), Severity.UNKNOWN)
