"""The README's first line is what a new user types: it must work as written on a fresh machine."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from conftest import ROOT


def _first_line() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()[0].split("  #", 1)[0].strip()


def test_the_first_line_installs_into_a_fresh_venv(tmp_path):
    """The install part of the line, run as written in a copy of the sources (no registry is
    reachable here, so the pull and the scan are not run; the scan's command is checked to be
    the one the install made)."""
    line = _first_line()
    steps = [step.strip() for step in line.split("&&")]
    pull = next(i for i, step in enumerate(steps) if step.startswith("docker pull"))
    install, scan = steps[:pull], steps[-1]
    assert install and install[0].startswith("python3 -m venv ")  # no pip into the system Python
    assert shlex.split(scan)[1:] == ["scan", "debian:12"]

    copy = tmp_path / "clair-scan"
    junk = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis")
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*junk))
    # The environment of a fresh shell: nothing of this test run's venv.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    done = subprocess.run(
        ["bash", "-c", " && ".join(install)], cwd=copy, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    command = copy / shlex.split(scan)[0]
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert version.returncode == 0 and version.stdout.startswith("clair-scan "), version.stderr
