from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from connector.errors import StackError
from connector.stack import local
from connector.stack.base import (
    ComponentStatus,
    StackConfig,
    default_deploy_dir,
    free_port,
    listen_port_range,
    render_properties,
    wait_until,
)
from connector.stack.connect import load_connector_config, worker_properties
from connector.stack.daemon import observe
from connector.stack.kafka import new_cluster_id, server_properties
from connector.stack.maven import DEPENDENCY_PLUGIN, ensure_jars, maven_command
from connector.stack.postgres import cluster_dirs, server_settings, superuser_dsn, traversable
from connector.stack.processes import find_pids_by_marker, pid_alive, read_pid, stop_pid, write_pid


def _config(tmp_path: Path, **kw) -> StackConfig:
    return StackConfig(stack_dir=tmp_path / "stack", **kw)


# -- rendering ---------------------------------------------------------------------------------------


def test_render_properties_one_pair_per_line_with_header_comments():
    text = render_properties({"a.b": "1", "path": r"C:\x"}, header="line one\nline two")
    assert text == "# line one\n# line two\na.b=1\npath=C:\\\\x\n"


@pytest.mark.parametrize("key", ["", "a b", "a=b", "a:b", "#a"])
def test_render_properties_rejects_bad_keys(key):
    with pytest.raises(ValueError, match="invalid properties key"):
        render_properties({key: "v"})


def test_render_properties_rejects_newlines_in_values():
    with pytest.raises(ValueError, match="newline"):
        render_properties([("k", "a\nb=c")])


def test_server_properties_single_node_kraft_with_rf1_internal_topics(tmp_path):
    props = server_properties(_config(tmp_path, kafka_port=19092), tmp_path / "data")
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "1"
    assert "controller.quorum.bootstrap.servers" not in props  # static quorum: format without --standalone


def test_controller_port_can_be_set_explicitly(tmp_path):
    props = server_properties(_config(tmp_path, kafka_port=20000, controller_port=30000), tmp_path)
    assert props["controller.quorum.voters"] == "1@127.0.0.1:30000"


def test_broker_properties_add_to_and_replace_the_stack_s_own(tmp_path):
    config = _config(
        tmp_path,
        broker_properties={"transaction.partition.verification.enable": "false", "num.partitions": "3"},
    )
    props = server_properties(config, tmp_path)
    assert props["transaction.partition.verification.enable"] == "false"
    assert props["num.partitions"] == "3"
    assert server_properties(_config(tmp_path), tmp_path)["num.partitions"] == "1"


def test_worker_properties_name_internal_topics_after_the_group(tmp_path):
    config = _config(tmp_path, connect_group="g1", connect_port=18083, kafka_bootstrap="10.0.0.1:9092")
    props = worker_properties(config)
    assert props["bootstrap.servers"] == "10.0.0.1:9092"
    assert {props[f"{k}.storage.topic"] for k in ("config", "offset", "status")} == {
        "g1-configs",
        "g1-offsets",
        "g1-status",
    }
    assert props["listeners"] == "http://127.0.0.1:18083"
    assert props["plugin.path"] == str((tmp_path / "stack" / "plugins").resolve())
    assert props["value.converter.replace.null.with.default"] == "false"


def test_jars_dir_moves_libs_and_plugins_but_not_state(tmp_path):
    config = _config(tmp_path, jars_dir=tmp_path / "jars")
    assert config.libs_dir == tmp_path / "jars" / "libs"
    assert config.plugins_dir == tmp_path / "jars" / "plugins"
    assert config.run_dir == tmp_path / "stack" / "run"


def test_postgres_settings_enable_logical_decoding(tmp_path):
    settings = server_settings(_config(tmp_path, postgres_port=15432), tmp_path / "sock")
    assert settings["wal_level"] == "logical"
    assert settings["port"] == "15432"
    assert settings["listen_addresses"] == "'127.0.0.1'"
    assert superuser_dsn(_config(tmp_path, postgres_port=15432)).endswith("@127.0.0.1:15432/crm")


def test_shipped_debezium_config_has_the_settings_the_connector_relies_on():
    name, config = load_connector_config(default_deploy_dir() / "connect" / "debezium-postgres.json")
    assert name == "crm-cdc"
    expected = {
        "plugin.name": "pgoutput",
        "topic.prefix": "crm",
        "table.include.list": "public.customers,public.customer_groups",
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial",
        "tombstones.on.delete": "true",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "key.converter.replace.null.with.default": "false",
        "value.converter.replace.null.with.default": "false",
    }
    assert {k: config[k] for k in expected} == expected
    assert config["slot.name"] and config["publication.name"]


def test_load_connector_config_applies_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"name": "n", "config": {"a": "1", "b": 2}}')
    assert load_connector_config(path, {"a": "9"}, name="other") == ("other", {"a": "9", "b": "2"})
    path.write_text("[]")
    with pytest.raises(StackError, match="cannot read connector config"):
        load_connector_config(path)


# -- pid files, processes, ports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),
        ("", None),
        ("garbage\n", None),
        ("0\n", None),
        ("4242\n", 4242),
        ("77\n/var/lib/pg\n", 77),
    ],
)
def test_read_pid(tmp_path, content, expected):
    path = tmp_path / "x.pid"
    if content is not None:
        path.write_text(content)
    assert read_pid(path) == expected


def test_write_pid_round_trips(tmp_path):
    write_pid(tmp_path / "run" / "k.pid", 123)
    assert read_pid(tmp_path / "run" / "k.pid") == 123


@pytest.mark.parametrize(
    ("pid_in_file", "ours", "marker_pids", "port_busy", "expected"),
    [
        # our process, recorded in the pid file
        (10, {10}, [], True, (10, False, False, False)),
        # the pid file is stale (process gone), nothing else runs
        (10, set(), [], False, (None, True, False, False)),
        # the pid file is stale, and a foreign process holds the port
        (10, set(), [], True, (None, True, True, False)),
        # a killed run lost its pid file: our broker is found by its argv and adopted
        (None, set(), [33], True, (33, False, False, True)),
        # the pid file names a recycled pid, our broker still runs under another pid
        (10, set(), [33], True, (33, True, False, True)),
        # nothing runs, the port is free
        (None, set(), [], False, (None, False, False, False)),
        # nothing of ours runs, but someone else listens on the port
        (None, set(), [], True, (None, False, True, False)),
    ],
)
def test_observe(pid_in_file, ours, marker_pids, port_busy, expected):
    seen = observe(pid_in_file, is_ours=lambda pid: pid in ours, marker_pids=marker_pids, port_busy=port_busy)
    assert (seen.pid, seen.stale_pid_file, seen.port_conflict, seen.adopted) == expected


def test_find_by_marker_then_stop_gracefully():
    marker = f"/tmp/yespo-test-marker-{uuid.uuid4().hex}/server.properties"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        # /proc/<pid>/cmdline is empty for a moment while exec sets up the new image
        assert wait_until(lambda: find_pids_by_marker(marker) == [proc.pid], timeout=5, interval=0.05)
        assert find_pids_by_marker(marker + "x") == []
        assert stop_pid(proc.pid, timeout=10) is True
        proc.wait(5)
        assert not pid_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_pid_kills_a_process_that_ignores_sigterm():
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert stop_pid(proc.pid, timeout=0.5) is False
        assert not pid_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_free_port_pairs_leave_the_next_port_free():
    import socket

    port = free_port(pairs=True)
    for candidate in (port, port + 1):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", candidate))


def test_free_ports_stay_below_the_kernels_ephemeral_range():
    # outgoing connections take ports of that range: one picked there could be gone when bound
    ports = listen_port_range()
    if Path("/proc/sys/net/ipv4/ip_local_port_range").exists():
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        assert ports and ports.start == 10000 and ports.stop == low - 1
    picked = {free_port() for _ in range(20)} | {free_port(pairs=True) + 1 for _ in range(20)}
    if ports:
        assert all(port in ports or port == ports.stop for port in picked)
        assert len(picked) > 30  # random, not the same few ports each time


def test_free_port_skips_a_port_someone_listens_on(monkeypatch):
    import socket

    listeners = []
    try:
        while True:  # a listening port whose lower neighbour is free
            sock = socket.socket()
            listeners.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            taken = sock.getsockname()[1]
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", taken - 1))
                except OSError:
                    continue
            break
        monkeypatch.setattr("connector.stack.base.listen_port_range", lambda: range(taken - 1, taken + 1))
        assert free_port() == taken - 1
        with pytest.raises(StackError, match="no free port pair found"):
            free_port(pairs=True)  # taken - 1 is free, but its pair port is taken
    finally:
        for sock in listeners:
            sock.close()


def test_listen_port_range_reads_the_kernels_setting(tmp_path):
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("32768\t60999\n")
    assert listen_port_range(setting) == range(10000, 32767)
    setting.write_text("1024 65535\n")  # no room below it: the kernel's own choice
    assert listen_port_range(setting) == range(0)
    assert listen_port_range(tmp_path / "missing") == range(0)


def test_wait_until_times_out_on_the_injected_clock():
    now = [0.0]
    calls = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert (
        wait_until(
            lambda: calls.append(1) and False, timeout=5, interval=1, clock=lambda: now[0], sleep=sleep
        )
        is False
    )
    assert len(calls) == 6


def test_wait_until_stops_when_abort_gives_a_reason():
    with pytest.raises(StackError, match="died"):
        wait_until(lambda: False, timeout=60, abort=lambda: "died", sleep=lambda s: None)


# -- maven ----------------------------------------------------------------------------------------


def test_maven_command_pins_the_dependency_plugin(tmp_path):
    argv = maven_command(
        _config(tmp_path, maven_repo_local=tmp_path / "m2"), tmp_path / "pom.xml", tmp_path / "out"
    )
    assert f"{DEPENDENCY_PLUGIN}:copy-dependencies" in argv
    assert DEPENDENCY_PLUGIN.endswith(":3.8.1")
    assert f"-DoutputDirectory={tmp_path / 'out'}" in argv
    assert f"-Dmaven.repo.local={tmp_path / 'm2'}" in argv
    assert "--strict-checksums" in argv
    assert "-DincludeScope=runtime" in argv


def _deploy(tmp_path: Path) -> Path:
    deploy = tmp_path / "deploy"
    (deploy / "local").mkdir(parents=True)
    (deploy / "local" / "pom.xml").write_text("<project/>")
    return deploy


def test_ensure_jars_is_a_no_op_when_the_marker_matches_the_pom(tmp_path):
    config = _config(tmp_path, deploy_dir=_deploy(tmp_path), mvn="/nonexistent/mvn")
    config.libs_dir.mkdir(parents=True)
    (config.libs_dir / ".complete").write_text(hashlib.sha256(b"<project/>").hexdigest())
    assert ensure_jars(config) == []


def test_ensure_jars_refetches_when_the_pom_changed_and_reports_missing_maven(tmp_path):
    config = _config(tmp_path, deploy_dir=_deploy(tmp_path), mvn="/nonexistent/mvn")
    config.libs_dir.mkdir(parents=True)
    (config.libs_dir / ".complete").write_text("hash-of-an-older-pom")
    with pytest.raises(StackError, match="not found: install Maven"):
        ensure_jars(config)


# -- components -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ["kafka"]),
        (None, ["kafka"]),
        ("postgres", ["kafka", "postgres"]),
        ("connect", ["kafka", "postgres", "connect"]),
        (" connect , kafka ", ["kafka", "postgres", "connect"]),
    ],
)
def test_parse_with(value, expected):
    assert local.parse_with(value) == expected


def test_parse_with_rejects_unknown_components():
    with pytest.raises(StackError, match="unknown component"):
        local.parse_with("postgres,zookeeper")


class _Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def up(self) -> ComponentStatus:
        self.log.append(f"up {self.name}")
        return ComponentStatus(self.name, True, "here")

    def down(self) -> None:
        self.log.append(f"down {self.name}")

    def status(self) -> ComponentStatus:
        return ComponentStatus(self.name, False, "here")


def test_stack_starts_in_order_and_stops_in_reverse(tmp_path, monkeypatch):
    log: list[str] = []
    fakes = {
        name: (lambda config, name=name: _Recorder(name, log)) for name in ("kafka", "postgres", "connect")
    }
    monkeypatch.setattr(local, "COMPONENTS", fakes)
    stack = local.LocalStack(_config(tmp_path))
    statuses = stack.up(["connect"])
    stack.down()
    assert [s.name for s in statuses] == ["kafka", "postgres", "connect"]
    assert log == ["up kafka", "up postgres", "up connect", "down connect", "down postgres", "down kafka"]


# -- CLI port memory ----------------------------------------------------------------------------------


def test_ports_come_from_flags_then_the_last_up_then_defaults():
    from connector.commands.stack import resolve_ports

    saved = {"kafka_port": 19092, "postgres_port": 15432}
    explicit = {"kafka_port": None, "controller_port": None, "postgres_port": 25432, "connect_port": None}
    assert resolve_ports(explicit, saved) == {
        "kafka_port": 19092,
        "controller_port": None,
        "postgres_port": 25432,
        "connect_port": 8083,
        "standin_port": 8089,
    }
    assert resolve_ports({}, {})["kafka_port"] == 9092


def test_the_stand_in_port_is_remembered_for_stack_status(tmp_path) -> None:
    """`demo --standin-port 18089` saves it: `stack status/down` then look for the stand-in there."""
    from connector.commands.stack import build_config, save_ports
    from connector.stack.local import COMPONENTS

    save_ports(build_config(tmp_path, standin_port=18089))
    config = build_config(tmp_path)
    assert config.standin_port == 18089
    standin = COMPONENTS["stand-in"](config)
    assert standin.url.endswith(":18089")  # type: ignore[attr-defined]
    assert build_config(tmp_path, standin_port=28089).standin_port == 28089  # a flag wins


def test_cluster_ids_never_start_with_a_dash() -> None:
    import uuid

    # 0xf8.. encodes to "-" first in URL-safe base64: the storage tool would read it as an option
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"
    assert len({new_cluster_id() for _ in range(200)}) == 200


def test_the_cluster_lives_in_the_stack_dir_when_the_postgres_user_can_reach_it():
    # pytest's own temporary directories are 0700: one of our own, open to others
    with tempfile.TemporaryDirectory(dir="/tmp") as open_dir:
        Path(open_dir).chmod(0o755)
        config = _config(Path(open_dir))
        pgdata, socket_dir = cluster_dirs(config, as_root=True, owner=(4242, {4242}))
        assert (pgdata, socket_dir) == (config.data_dir / "pg", config.run_dir / "pg")


def test_run_as_root_from_a_0700_home_the_cluster_moves_where_postgres_can_reach_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    config = _config(home / "repo" / ".stack")
    # a uid that is neither the owner nor in the group: no way through the 0700 directory
    pgdata, socket_dir = cluster_dirs(config, as_root=True, owner=(4242, {4242}))
    assert pgdata.parent == socket_dir.parent and str(pgdata).startswith("/var/tmp/yespo-connector-pg-")
    assert traversable(pgdata, 4242, {4242})
    # the same stack dir always maps to the same place (stack down/status in another process)
    assert cluster_dirs(config, as_root=True, owner=(4242, {4242})) == (pgdata, socket_dir)
    # not root: the cluster runs as the caller, who reaches its own home
    assert cluster_dirs(config, as_root=False)[0] == config.data_dir / "pg"


def test_run_as_root_the_dirs_are_chosen_again_once_the_install_created_the_postgres_user(
    tmp_path, monkeypatch
):
    import pwd

    from connector.stack import postgres

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    config = _config(home / "repo" / ".stack")
    installed: list[bool] = []
    real_getpwnam = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name != postgres.SUPERUSER:
            return real_getpwnam(name)
        if not installed:
            raise KeyError(name)  # the package (and with it the user) is not there yet
        return pwd.struct_passwd((name, "x", 4242, 4242, "", "/var/lib/postgresql", "/bin/bash"))

    class Started(Exception):
        pass

    def pid(self: object) -> int | None:
        raise Started  # `up` got past the install: stop before anything runs for real

    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    monkeypatch.setattr(postgres.os, "getgrouplist", lambda name, gid: [gid])
    monkeypatch.setattr(postgres.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(postgres, "find_pg_bin", lambda: None)
    monkeypatch.setattr(postgres, "_install_postgres", lambda: installed.append(True) or Path("/usr/bin"))
    monkeypatch.setattr(postgres.PostgresServer, "_pid", pid)

    server = postgres.PostgresServer(config)
    assert server.pgdata == config.data_dir / "pg"  # no postgres user yet: nobody to ask about
    with pytest.raises(Started):
        server.up()
    assert installed == [True]
    assert str(server.pgdata).startswith("/var/tmp/yespo-connector-pg-")
    assert (server.pgdata, server.socket_dir) == cluster_dirs(config, as_root=True, owner=(4242, {4242}))


def test_a_socket_path_too_long_for_unix_sockets_moves_to_a_short_one(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    config = _config(deep / ".stack")
    pgdata, socket_dir = cluster_dirs(config, as_root=False)
    assert pgdata == config.data_dir / "pg"
    assert str(socket_dir).startswith("/tmp/yespo-pg-") and len(str(socket_dir / ".s.PGSQL.5432")) < 100


def test_a_missing_program_is_a_stack_error_naming_it_not_a_traceback(tmp_path):
    from connector.stack.processes import start_process

    with pytest.raises(StackError, match=r"'/nonexistent/java' not found.*JDK 17"):
        start_process(["/nonexistent/java", "-version"], log_file=tmp_path / "x.log", cwd=tmp_path)


def test_our_running_broker_on_another_port_is_not_adopted(tmp_path, monkeypatch):
    """`up` on port 9092 while our broker (from an earlier up) runs on 29092: an error, not "ready"."""
    from connector.stack.daemon import Daemon
    from connector.stack.kafka import KafkaBroker

    KafkaBroker(_config(tmp_path, kafka_port=29092)).write_config()
    monkeypatch.setattr(Daemon, "reconcile", lambda self: 4242)
    monkeypatch.setattr(KafkaBroker, "_wait_ready", lambda self, pid: True)
    monkeypatch.setattr(KafkaBroker, "status", lambda self, detail="": detail)
    with pytest.raises(StackError, match=r"already runs as PLAINTEXT://127\.0\.0\.1:29092"):
        KafkaBroker(_config(tmp_path, kafka_port=9092)).up()
    assert KafkaBroker(_config(tmp_path, kafka_port=29092)).up() == "already running"
