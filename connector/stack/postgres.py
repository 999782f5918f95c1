"""The stack's PostgreSQL: a project-owned cluster in `.stack/data/pg`, `wal_level=logical`, the CRM schema.

Binaries come from Debian's `postgresql` package (installed with apt-get when missing and we are root).
When running as root, the cluster runs as the `postgres` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Collection
from pathlib import Path

from connector.errors import StackError
from connector.stack.base import ComponentStatus, StackConfig, port_open
from connector.stack.processes import pid_alive, read_pid, tail

__all__ = [
    "DEBEZIUM_PASSWORD",
    "DEBEZIUM_USER",
    "PostgresServer",
    "cluster_dirs",
    "find_pg_bin",
    "superuser_dsn",
]

logger = logging.getLogger(__name__)

DATABASE = "crm"
SUPERUSER = "postgres"
# a local development cluster on the loopback interface: fixed, documented passwords
SUPERUSER_PASSWORD = "postgres"  # noqa: S105
DEBEZIUM_USER = "debezium"
DEBEZIUM_PASSWORD = "debezium"  # noqa: S105
_PG_ROOT = Path("/usr/lib/postgresql")


def superuser_dsn(config: StackConfig, database: str = DATABASE) -> str:
    """The libpq URL of the stack's superuser on the `crm` database."""
    return f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{config.host}:{config.postgres_port}/{database}"


def find_pg_bin(root: Path = _PG_ROOT) -> Path | None:
    """The `bin/` directory of the newest installed PostgreSQL major version, or None."""
    versions = [p for p in root.glob("*/bin") if (p / "initdb").is_file() and p.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name)) if versions else None


def server_settings(config: StackConfig, socket_dir: Path) -> dict[str, str]:
    """The settings written to `yespo-stack.conf`, included from `postgresql.conf` (pure)."""
    return {
        "listen_addresses": f"'{config.host}'",
        "port": str(config.postgres_port),
        "unix_socket_directories": f"'{socket_dir}'",
        # logical decoding for Debezium's pgoutput plugin
        "wal_level": "logical",
        "max_replication_slots": "10",
        "max_wal_senders": "10",
        "max_connections": "100",
        "shared_buffers": "128MB",
    }


_SOCKET_PATH_MAX = 100  # a unix socket path holds at most 107 bytes; PostgreSQL refuses longer ones


def traversable(path: Path, uid: int, gids: Collection[int]) -> bool:
    """Whether a process of `uid`/`gids` may pass through every existing directory above `path`."""
    for parent in [*reversed(path.parents), path]:
        try:
            st = parent.stat()
        except FileNotFoundError:
            return True  # created later by us, 0755
        if not stat.S_ISDIR(st.st_mode):
            continue
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid in gids else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def cluster_dirs(
    config: StackConfig, *, as_root: bool, owner: tuple[int, Collection[int]] | None = None
) -> tuple[Path, Path]:
    """The cluster's data and socket directories: `.stack/data/pg` and `.stack/run/pg` when they work.

    Run as root, the cluster belongs to the `postgres` OS user (`owner`: its uid and gids), who
    cannot reach a repository in a 0700 home directory (`/root`, Debian's user homes): its data and
    socket then live in `/var/tmp/yespo-connector-pg-<hash of the stack dir>`. A socket path longer
    than a unix socket allows (a deep checkout) moves to `/tmp/yespo-pg-<hash>`.
    """
    pgdata, socket_dir = config.data_dir / "pg", config.run_dir / "pg"
    digest = hashlib.sha256(str(config.data_dir.resolve()).encode()).hexdigest()[:10]
    if as_root and owner is not None and not traversable(pgdata.resolve(), *owner):
        base = Path("/var/tmp") / f"yespo-connector-pg-{digest}"  # noqa: S108 - 1777, kept across boots
        pgdata, socket_dir = base / "data", base / "run"
    if len(str(socket_dir.resolve() / f".s.PGSQL.{config.postgres_port}")) > _SOCKET_PATH_MAX:
        socket_dir = Path("/tmp") / f"yespo-pg-{digest}"  # noqa: S108
    return pgdata, socket_dir


def _install_postgres() -> Path:
    if os.geteuid() != 0:
        raise StackError("PostgreSQL is not installed: run `sudo apt-get install -y postgresql`")
    logger.warning("PostgreSQL binaries missing: installing the Debian `postgresql` package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        if result.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    # the package creates and starts a "main" cluster on 5432; we run our own cluster instead
    for conf in Path("/etc/postgresql").glob("*/main"):
        subprocess.run(["pg_ctlcluster", conf.parent.name, "main", "stop"], capture_output=True, check=False)  # noqa: S603, S607
    found = find_pg_bin()
    if found is None:
        raise StackError("installed the postgresql package but found no initdb under /usr/lib/postgresql")
    return found


class PostgresServer:
    """The `postgres` component: initdb once, then pg_ctl start/stop, then apply `crm-schema.sql`."""

    name = "postgres"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.pgdata, self.socket_dir = self._choose_dirs()
        self.log_file = config.logs_dir / "postgres.log"
        self.schema_file = config.deploy_dir / "local" / "crm-schema.sql"

    def _choose_dirs(self) -> tuple[Path, Path]:
        root = os.geteuid() == 0
        owner = None
        if root:
            try:
                entry = pwd.getpwnam(SUPERUSER)
                owner = (entry.pw_uid, os.getgrouplist(SUPERUSER, entry.pw_gid))
            except KeyError:  # not installed yet: `_install_postgres` creates the user, `up` asks again
                owner = None
        return cluster_dirs(self.config, as_root=root, owner=owner)

    # -- running commands as the right OS user ------------------------------------------------------

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SUPERUSER, "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str, *, timeout: float = 120) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
        if result.returncode != 0:
            raise StackError(
                f"postgres: {what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}\n"
                f"{tail(self.log_file, 15)}"
            )
        return result.stdout

    def _prepare_dirs(self) -> None:
        for path in (self.pgdata, self.socket_dir, self.log_file.parent):
            path.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            for path in (self.pgdata, self.socket_dir, self.log_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.pgdata.chmod(0o700)
            probe = subprocess.run(  # noqa: S603
                self._as_owner(["test", "-w", str(self.pgdata)]), capture_output=True, check=False
            )
            if probe.returncode != 0:
                raise StackError(
                    f"postgres: the `{SUPERUSER}` OS user cannot reach {self.pgdata}; every parent directory "
                    "needs o+x (a 0700 temp dir does not work)"
                )

    def _initdb(self, bin_dir: Path) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        pwfile = self.socket_dir / "pwfile"  # the postgres OS user reads it (root: see `cluster_dirs`)
        pwfile.write_text(SUPERUSER_PASSWORD + "\n", encoding="ascii")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                self._as_owner(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# settings of `yespo-connector stack up`\ninclude_if_exists = 'yespo-stack.conf'\n")

    def _write_settings(self) -> None:
        settings = server_settings(self.config, self.socket_dir.resolve())
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        target = self.pgdata / "yespo-stack.conf"
        target.write_text(text, encoding="utf-8")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(target, owner.pw_uid, owner.pw_gid)

    def _pid(self) -> int | None:
        pid = read_pid(self.pgdata / "postmaster.pid")
        return pid if pid is not None and pid_alive(pid) else None

    def psql(self, sql: str | None = None, *, file: Path | None = None, database: str = DATABASE) -> str:
        """Run SQL through `psql` on the unix socket as the superuser; returns its stdout.

        Raises:
            StackError: psql failed (ON_ERROR_STOP is set).
        """
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise StackError("postgres: psql not found")
        argv = [
            str(bin_dir / "psql"),
            "-h",
            str(self.socket_dir.resolve()),
            "-p",
            str(self.config.postgres_port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        argv += ["-c", sql] if sql is not None else ["-f", str(file)]
        return self._run(argv, "psql")

    def _apply_schema(self) -> None:
        exists = self.psql("SELECT 1 FROM pg_database WHERE datname = 'crm'", database="postgres")
        if exists.strip() != "1":
            self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        self.psql(file=self.schema_file)

    def up(self) -> ComponentStatus:
        """Install (if missing), initdb (once), start the cluster and apply the CRM schema.

        Raises:
            StackError: the port belongs to someone else, or a step failed (with its output).
        """
        bin_dir = find_pg_bin()
        if bin_dir is None:
            bin_dir = _install_postgres()
            # the `postgres` OS user exists only now: whether it reaches the stack dir decides the dirs
            self.pgdata, self.socket_dir = self._choose_dirs()
        pid = self._pid()
        detail = "already running"
        if pid is None:
            if port_open(self.config.host, self.config.postgres_port):
                raise StackError(
                    f"postgres: port {self.config.host}:{self.config.postgres_port} is in use by a process "
                    "that is not this stack's (another PostgreSQL? pick --postgres-port)"
                )
            self._prepare_dirs()
            self._initdb(bin_dir)
            self._write_settings()
            self._run(
                self._as_owner(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        str(int(self.config.start_timeout_s)),
                        "start",
                    ]
                ),
                "pg_ctl start",
                timeout=self.config.start_timeout_s + 10,
            )
            detail = "started"
        self._apply_schema()
        return self.status(detail=detail)

    def down(self) -> None:
        """Stop the cluster (fast shutdown); a no-op when it is not running. Data is kept."""
        if self._pid() is None:
            return
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise StackError("postgres: pg_ctl not found")
        self._run(
            self._as_owner([str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        )

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether the cluster runs and accepts TCP connections."""
        pid = self._pid()
        running = pid is not None and port_open(self.config.host, self.config.postgres_port)
        if pid is None and port_open(self.config.host, self.config.postgres_port):
            detail = detail or "port taken by another process"
        return ComponentStatus(
            name=self.name,
            running=running,
            endpoint=f"{self.config.host}:{self.config.postgres_port}/{DATABASE}",
            pid=pid,
            detail=detail,
        )
