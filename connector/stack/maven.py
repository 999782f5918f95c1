"""Fetch the stack's jars from Maven Central once, with the pinned maven-dependency-plugin.

`deploy/local/pom.xml` gives the broker + Connect classpath (`libs/`), `deploy/local/debezium-pom.xml`
the Debezium plugin (`plugins/debezium-connector-postgres/`). A directory is complete only when its
marker file holds the hash of the POM that filled it, so editing a POM re-fetches.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from connector.errors import StackError
from connector.stack.base import StackConfig, stack_lock
from connector.stack.processes import tail

__all__ = ["DEPENDENCY_PLUGIN", "JarSet", "ensure_jars", "jar_sets", "maven_command"]

logger = logging.getLogger(__name__)

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MARKER = ".complete"


@dataclass(frozen=True, slots=True)
class JarSet:
    """One POM and the directory its runtime dependencies are copied into."""

    name: str
    pom: Path
    target: Path


def jar_sets(config: StackConfig, *, with_debezium: bool) -> list[JarSet]:
    """The jar directories a stack needs: always the Kafka libs, Debezium only for Connect."""
    local = config.deploy_dir / "local"
    sets = [JarSet("kafka", local / "pom.xml", config.libs_dir)]
    if with_debezium:
        sets.append(
            JarSet("debezium", local / "debezium-pom.xml", config.plugins_dir / "debezium-connector-postgres")
        )
    return sets


def maven_command(config: StackConfig, pom: Path, output_dir: Path) -> list[str]:
    """The `mvn` argv that copies `pom`'s runtime dependencies into `output_dir`."""
    argv = [
        config.mvn,
        "-B",
        "-q",
        "--strict-checksums",  # a jar whose checksum does not match fails the fetch (default: a warning)
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        "-Dmdep.useRepositoryLayout=false",
        f"-DoutputDirectory={output_dir}",
    ]
    if config.maven_repo_local is not None:
        argv.append(f"-Dmaven.repo.local={config.maven_repo_local}")
    return argv


def _pom_hash(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _is_complete(jar_set: JarSet) -> bool:
    try:
        return (jar_set.target / _MARKER).read_text(encoding="ascii").strip() == _pom_hash(jar_set.pom)
    except FileNotFoundError:
        return False


def ensure_jars(config: StackConfig, *, with_debezium: bool = False) -> list[Path]:
    """Copy missing jars into `libs/` (and the Debezium plugin directory); a no-op when up to date.

    Returns:
        The directories that were (re)filled in this call.

    Raises:
        StackError: `mvn` is missing, or the download failed (with the tail of Maven's output).
    """
    filled = []
    jars_root = config.jars_dir or config.stack_dir
    with stack_lock(jars_root, ".jars.lock"):
        for jar_set in jar_sets(config, with_debezium=with_debezium):
            if not jar_set.pom.is_file():
                raise StackError(f"{jar_set.pom} is missing (is deploy_dir right?)")
            if _is_complete(jar_set):
                continue
            _fetch(config, jar_set)
            filled.append(jar_set.target)
    return filled


def _fetch(config: StackConfig, jar_set: JarSet) -> None:
    if shutil.which(config.mvn) is None:
        raise StackError(f"`{config.mvn}` not found: install Maven (apt-get install -y maven) and Java 17")
    staging = jar_set.target.with_name(jar_set.target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log_file = config.logs_dir / f"maven-{jar_set.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = maven_command(config, jar_set.pom, staging)
    logger.info("fetching %s jars with %s (cached in ~/.m2)", jar_set.name, DEPENDENCY_PLUGIN)
    started = time.monotonic()
    with log_file.open("wb") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        raise StackError(
            f"maven failed ({result.returncode}) fetching {jar_set.name} jars:\n{tail(log_file)}"
        )
    (staging / _MARKER).write_text(_pom_hash(jar_set.pom) + "\n", encoding="ascii")
    shutil.rmtree(jar_set.target, ignore_errors=True)
    staging.replace(jar_set.target)
    size = sum(p.stat().st_size for p in jar_set.target.glob("*.jar"))
    logger.info(
        "%s jars: %d files, %.1f MB in %.1f s",
        jar_set.name,
        len(list(jar_set.target.glob("*.jar"))),
        size / 1e6,
        time.monotonic() - started,
    )
