"""yespo-connector: Debezium change events -> per-customer state -> Yespo contacts, exactly-once."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
