#!/usr/bin/env bash
# Install the system packages the local stack needs, and only those that are missing (Debian/Ubuntu):
# Java 17+ (broker, Connect), Maven (fetches the jars), PostgreSQL (CDC source), a Python >= 3.11 with
# venv, make, and gcc with the Python headers (the decode step's C fast path).
# Used by `make test`, `make demo` and .ci/run; a no-op on a machine that has everything.
set -euo pipefail

# the Python the Makefile will use (the first of these that is >= 3.11), or the one to install
python=""
for candidate in python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null 2>&1 \
    && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done

need=()      # without these nothing runs
optional=()  # the C fast path: without it the (slower) Python decoder is used
java_missing=0
if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then java_missing=1; fi
command -v mvn >/dev/null 2>&1 || need+=(maven)
postgres_missing=0
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { postgres_missing=1; need+=(postgresql); }
command -v make >/dev/null 2>&1 || need+=(make)
if [[ -z $python ]]; then
  # e.g. Ubuntu 22.04, whose python3 is 3.10: its python3.11 packages
  python=python3.11
  need+=(python3.11 python3.11-venv)
  optional+=(python3.11-dev)
else
  pkg=$([[ $python == python3 ]] && echo python3 || echo "$python")
  "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=("$pkg-venv")
  "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || optional+=("$pkg-dev")
fi
command -v gcc >/dev/null 2>&1 || optional+=(gcc)

if ((${#need[@]} + ${#optional[@]} + java_missing == 0)); then
  exit 0
fi
if [[ $(id -u) == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  wanted=("${need[@]}")
  ((java_missing)) && wanted+=(openjdk-17-jdk-headless)
  if ((${#wanted[@]} == 0)) && [[ -z ${CI:-} ]]; then
    echo "warning: without ${optional[*]} the decode step's C fast path is not built (the Python decoder is used)" >&2
    exit 0
  fi
  all=("${wanted[@]}" "${optional[@]}")
  echo "missing system packages: ${all[*]} (install them as root, e.g. apt-get install -y ${all[*]})" >&2
  exit 1
fi
# sudo resets the environment: the variable must be set on apt-get's side of it
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
"${apt[@]}" update -q
if ((java_missing)); then
  # Debian 13 has no Java 17 any more; the broker and Connect run on 17 or 21 alike. The probe asks for
  # an installable version: `apt-cache show` also succeeds, printing nothing, for a name that is only
  # referenced by other packages (a purely virtual one), which openjdk-17-jdk-headless may be there.
  jdk=""
  for candidate in openjdk-17-jdk-headless openjdk-21-jdk-headless; do
    version=$(LC_ALL=C apt-cache policy "$candidate" 2>/dev/null | awk '$1 == "Candidate:" {print $2}')
    if [[ -n $version && $version != "(none)" ]]; then jdk=$candidate; break; fi
  done
  need+=("${jdk:-openjdk-17-jdk-headless}")
fi
all=("${need[@]}" "${optional[@]}")
echo "installing system packages: ${all[*]}"
"${apt[@]}" install -y -q --no-install-recommends "${all[@]}"
if ((postgres_missing)) && command -v pg_lsclusters >/dev/null 2>&1; then
  # the package creates and starts a "main" cluster on 5432 (and at every boot); the stack runs its own
  while read -r version cluster _; do
    [[ -n $version ]] || continue
    echo "stopping PostgreSQL cluster $version/$cluster (the package's own; the stack runs its own cluster)"
    "${sudo[@]}" pg_ctlcluster "$version" "$cluster" stop 2>/dev/null || true
    echo manual | "${sudo[@]}" tee "/etc/postgresql/$version/$cluster/start.conf" >/dev/null || true
  done < <(pg_lsclusters --no-header 2>/dev/null || true)
fi
