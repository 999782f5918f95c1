"""The README's demo: the whole chain on one machine, PostgreSQL -> Debezium -> Kafka -> connector -> Yespo.

`run_demo` brings the local stack up (Kafka, PostgreSQL, Kafka Connect + Debezium), loads
`deploy/local/demo-data.sql`, starts the Yespo stand-in and `yespo-connector run --stage all` as
background processes of the stack directory, shows the connector catching up, applies a few live
changes and prints the resulting contacts next to the database rows. `stop_demo` stops everything.

Modules: `run.py` (the script), `components.py` (its config and the connector process), `compare.py`
(rows against contacts).
"""

from __future__ import annotations

__all__: list[str] = []
