#!/usr/bin/env bash
# Install the system packages the local stack needs, and only those that are missing (Debian/Ubuntu):
# Java 17 (broker, Connect), Maven (fetches the jars), PostgreSQL (CDC source), python3-venv, and gcc
# with the Python headers (the decode step's C fast path).
# Used by `make test`, `make demo` and .ci/run; a no-op on a machine that has everything.
set -euo pipefail

need=()
if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then need+=(openjdk-17-jdk-headless); fi
command -v mvn >/dev/null 2>&1 || need+=(maven)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v make >/dev/null 2>&1 || need+=(make)
# the decode step's C fast path (optional at install time, required by CI's test of it)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)

if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "missing system packages: ${need[*]} (install them, e.g. apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
