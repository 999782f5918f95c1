"""`--help` text listing the config keys a command reads and their YESPO_CONNECTOR_… environment names."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from connector.config import ENV_PREFIX

__all__ = ["config_keys_epilog", "env_name"]

logger = logging.getLogger(__name__)


def env_name(key: str) -> str:
    """`kafka.bootstrap_servers` -> `YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS`."""
    return ENV_PREFIX + "__".join(part.upper() for part in key.split("."))


def config_keys_epilog(keys: Sequence[str]) -> str:
    """An epilog naming each key and its environment variable, one per line in `--help`."""
    lines = [f"{key} (env {env_name(key)})" for key in keys]
    return "Config keys read (the environment overrides the --config file):\n\n" + "\n".join(lines)
