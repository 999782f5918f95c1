"""`yespo-connector stand-in`: run the local Yespo contacts API until interrupted."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import threading
from typing import Annotated

import typer

from connector.errors import ConfigError

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _fields(values: list[str]) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for value in values:
        name, sep, fid = value.partition("=")
        if not sep or not name or not fid.strip().isdigit():
            raise ConfigError(f"--field expects NAME=ID, got {value!r}")
        out[name] = int(fid)
    return out


def _segments(values: list[str]) -> dict[int, str] | None:
    if not values:
        return None
    out: dict[int, str] = {}
    for value in values:
        sid, sep, name = value.partition("=")
        if not sep or not name or not sid.strip().isdigit():
            raise ConfigError(f"--segment expects ID=NAME, got {value!r}")
        out[int(sid)] = name
    return out


def stand_in(
    api_key: Annotated[
        str, typer.Option("--api-key", help="The API key clients must send (Basic-auth password).")
    ],
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    rate_limit: Annotated[
        float, typer.Option("--rate-limit", help="Requests per second over the API (0: unlimited).")
    ] = 200.0,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            help="Custom field NAME=ID (repeatable; default birthDate=101, loyaltyLevel=102, country=103).",
        ),
    ] = None,
    bulk_delay_s: Annotated[
        float, typer.Option("--bulk-delay-s", help="Apply bulk imports this long after answering.")
    ] = 0.0,
    outage_mode: Annotated[
        str, typer.Option("--outage-mode", help="How an injected outage looks: refuse | 503.")
    ] = "refuse",
    segment: Annotated[
        list[str] | None,
        typer.Option("--segment", help="A static segment ID=NAME that exists from the start (repeatable)."),
    ] = None,
    strict_segments: Annotated[
        bool,
        typer.Option(
            "--strict-segments",
            help=(
                "Attach/detach to a segment id it does not know answers 404, as for a segment that "
                "does not exist (default: the segment is created, so any group id works)."
            ),
        ),
    ] = False,
) -> None:
    """Run a local Yespo contacts API (admin endpoints under /_standin/) until Ctrl+C or SIGTERM."""
    from connector.standin import StandIn  # imported here: compiling the validators takes a moment

    if outage_mode not in ("refuse", "503"):
        raise ConfigError("--outage-mode must be refuse or 503")
    standin = StandIn(
        api_key=api_key,
        host=host,
        port=port,
        rate_limit=rate_limit or None,
        custom_fields=_fields(field or []),
        bulk_delay_s=bulk_delay_s,
        outage_mode="503" if outage_mode == "503" else "refuse",
        groups=_segments(segment or []),
        auto_create_groups=not strict_segments,
    )
    try:
        url = standin.start()
    except OSError as exc:  # a busy or privileged port, a host that is not this machine's: one line
        key = "--port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "--host"
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})", key=key) from None
    # This process only serves the stand-in: bulk bodies allocate ~10 containers per contact, and
    # with the default gen-0 threshold (700) collections over the growing store halve the throughput.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo(f"stand-in listening on {url}", nl=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("stand-in")(stand_in)
