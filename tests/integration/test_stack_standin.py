"""The `stand-in` stack component: a real `yespo-connector stand-in` daemon, found again, stopped."""

from __future__ import annotations

import httpx
import pytest

from connector.errors import StackError
from connector.stack.base import StackConfig, free_port
from connector.stack.local import COMPONENTS, parse_with
from connector.stack.processes import pid_alive
from connector.stack.standin import DEV_API_KEY, StandInServer

pytestmark = pytest.mark.integration


def test_stand_in_is_a_stack_component_selected_with_with():
    assert parse_with("stand-in") == ["kafka", "stand-in"]
    assert "stand-in" in COMPONENTS


def test_stand_in_daemon_up_is_reused_answers_with_the_dev_key_and_goes_down(tmp_path):
    config = StackConfig(stack_dir=tmp_path / "stack", start_timeout_s=60)
    server = StandInServer(config, port=free_port())
    try:
        first = server.up()
        assert first.running and first.pid is not None
        assert str(server.port) in first.endpoint
        again = StandInServer(config, port=server.port).up()  # a second `stack up`: adopted, not restarted
        assert again.pid == first.pid and again.detail == "already running"
        ok = httpx.get(f"{server.url}/api/v1/account/info", auth=("u", DEV_API_KEY), timeout=10)
        refused = httpx.get(f"{server.url}/api/v1/account/info", auth=("u", "other"), timeout=10)
        assert (ok.status_code, refused.status_code) == (200, 401)
        (config.run_dir / "stand-in.pid").unlink()  # a lost pid file: the process is found by its argv
        assert server.status().pid == first.pid
    finally:
        server.down()
    assert not pid_alive(first.pid)
    status = server.status()
    assert not status.running and status.pid is None


def test_stand_in_refuses_a_port_held_by_another_process(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = StandInServer(StackConfig(stack_dir=tmp_path / "stack"), port=port)
        with pytest.raises(StackError, match="in use by a process that is not this stack's"):
            server.up()
