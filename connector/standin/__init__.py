"""A local Yespo contacts API (the stand-in) for tests, benchmarks and `yespo-connector stand-in`."""

from __future__ import annotations

from connector.standin.server import StandIn

__all__ = ["StandIn"]
