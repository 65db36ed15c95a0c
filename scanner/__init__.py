"""clair-scan: scan container images for known vulnerabilities with Clair v2."""

__version__ = "0.1.0"
