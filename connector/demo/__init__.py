"""The README's demo: the whole chain on one machine, PostgreSQL -> Debezium -> Kafka -> connector -> Yespo.

`run_demo` brings the local stack up (Kafka, PostgreSQL, Kafka Connect + Debezium), loads
`deploy/local/demo-data.sql`, starts the Yespo stand-in and `yespo-connector run --stage all` as
background processes of the stack directory, shows the connector catching up, applies a few live
changes and prints the resulting contacts next to the database rows. `stop_demo` stops everything.
"""

from __future__ import annotations

import logging

from connector.demo.compare import expected_views, view_of_contact
from connector.demo.components import ConnectorProcess, DemoConfig
from connector.demo.run import run_demo, stop_demo

__all__ = [
    "ConnectorProcess",
    "DemoConfig",
    "expected_views",
    "run_demo",
    "stop_demo",
    "view_of_contact",
]

logger = logging.getLogger(__name__)
