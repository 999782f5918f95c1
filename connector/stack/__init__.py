"""The local development stack: a real KRaft broker, PostgreSQL and Kafka Connect + Debezium, no Docker.

Entry points: `LocalStack` (up/down/status of components) and `StackConfig` (directories and ports).
"""

from __future__ import annotations

from connector.stack.base import ComponentStatus, StackConfig
from connector.stack.local import LocalStack, local_kafka_stack

__all__ = ["ComponentStatus", "LocalStack", "StackConfig", "local_kafka_stack"]
