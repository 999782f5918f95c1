from __future__ import annotations

import os
import signal
import threading

import pytest

from connector.ops.signals import GracefulShutdown


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # handlers run in the main thread, at the next bytecode boundary


def test_sigterm_requests_a_graceful_stop_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with GracefulShutdown() as shutdown:
        assert not shutdown.stop_requested
        send(signal.SIGTERM)
        assert shutdown.wait(5)
        assert shutdown.stop_requested and shutdown.reason == "SIGTERM"
        send(signal.SIGTERM)  # repeated SIGTERM: still graceful, no exception
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_first_ctrl_c_stops_gracefully_second_exits_at_once() -> None:
    with GracefulShutdown() as shutdown:
        send(signal.SIGINT)
        assert shutdown.wait(5) and shutdown.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            send(signal.SIGINT)
            shutdown.wait(5)  # the handler raises here at the latest


def test_request_stop_from_another_thread_wakes_the_waiter() -> None:
    shutdown = GracefulShutdown()
    threading.Timer(0.05, shutdown.request_stop, args=("fatal error in deliver",)).start()
    assert shutdown.wait(5)
    assert shutdown.reason == "fatal error in deliver"
    shutdown.request_stop("again")
    assert shutdown.reason == "fatal error in deliver"  # the first reason is kept


def test_wait_times_out_without_a_stop() -> None:
    assert GracefulShutdown().wait(0.01) is False


def test_install_outside_the_main_thread_fails() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            GracefulShutdown().install()
        except ValueError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1
