"""deploy/local/system-deps.sh's choice of a JDK, run against fake apt tools on a fake PATH.

The script runs for real (bash); only `id`, `java`, `apt-get` and `apt-cache` are stand-ins, so the
test needs no root and installs nothing. The other tools it probes (python3, mvn, make, gcc, initdb)
are this machine's: whatever else it decides to install is recorded, not checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "system-deps.sh"

# `apt-cache show` succeeds silently for a purely virtual name (checked on Debian 12 with
# java-runtime-headless), so the fake answers 0 for every name, as apt does for a JDK that is gone
# but still referenced. `apt-cache policy` is the one to ask; it is translated unless LC_ALL=C.
FAKE_APT_CACHE = """#!/usr/bin/env bash
cmd=$1; name=$2
[[ $cmd == show ]] && exit 0
label="Candidate:"
[[ ${LC_ALL:-} == C ]] || label="Installationskandidat:"
version=$(tr ' ' '\\n' <<<"$FAKE_APT_CANDIDATES" | awk -F= -v n="$name" '$1 == n {print $2}')
echo "$name:"
echo "  Installed: (none)"
echo "  $label ${version:-(none)}"
"""

FAKE_APT_GET = """#!/usr/bin/env bash
echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} $*" >> "$FAKE_APT_LOG"
"""


def _run(tmp_path: Path, candidates: str, lang: str = "C.UTF-8") -> list[str]:
    if shutil.which("bash") is None:  # pragma: no cover - every supported machine has bash
        pytest.fail("bash is needed to run deploy/local/system-deps.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "id": "#!/bin/sh\necho 0\n",  # root: no sudo
        "java": "#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n",  # too old
        "apt-cache": FAKE_APT_CACHE,
        "apt-get": FAKE_APT_GET,
    }
    for name, text in tools.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    log = tmp_path / "apt.log"
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": lang,
        "FAKE_APT_CANDIDATES": candidates,
        "FAKE_APT_LOG": str(log),
    }
    if "CI" in os.environ:
        env["CI"] = os.environ["CI"]
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def _installed(lines: list[str]) -> list[str]:
    installs = [line for line in lines if " install " in f" {line} "]
    assert len(installs) == 1, lines
    return installs[0].split()


def test_a_debian_without_java_17_gets_java_21(tmp_path: Path) -> None:
    # Debian 13: openjdk-17-jdk-headless has no installable version, 21 has one
    lines = _run(tmp_path, "openjdk-21-jdk-headless=21.0.9+10-1~deb13u1")
    assert lines[0] == "DEBIAN_FRONTEND=noninteractive update -q"
    packages = _installed(lines)
    assert "openjdk-21-jdk-headless" in packages
    assert "openjdk-17-jdk-headless" not in packages


def test_java_17_is_preferred_where_it_is_installable(tmp_path: Path) -> None:
    lines = _run(tmp_path, "openjdk-17-jdk-headless=17.0.21.1+2-1~deb12u1 openjdk-21-jdk-headless=21.0.9")
    packages = _installed(lines)
    assert "openjdk-17-jdk-headless" in packages
    assert "openjdk-21-jdk-headless" not in packages


def test_the_probe_reads_apt_in_english_whatever_the_locale(tmp_path: Path) -> None:
    lines = _run(tmp_path, "openjdk-21-jdk-headless=21.0.9", lang="de_DE.UTF-8")
    assert "openjdk-21-jdk-headless" in _installed(lines)


def test_without_any_installable_jdk_java_17_is_asked_for_by_name(tmp_path: Path) -> None:
    # apt-get then fails with its own message naming the package (the fake one records the call)
    lines = _run(tmp_path, "")
    assert "openjdk-17-jdk-headless" in _installed(lines)
