"""Settings: the YAML file of `../shared/examples/connector.yaml`, overridden by the environment.

Precedence (highest first): `YESPO_CONNECTOR_<SECTION>__<KEY>` environment variables, the YAML file,
defaults. Settings are loaded once, in `cli.py`, and handed down; `loading.py` is the only module that
reads `os.environ`. Config errors name the dotted key that is wrong (`kafka.commit_interval_ms: ...`),
or the `YESPO_CONNECTOR_*` variable that sets nothing (a typo), never a value.

One module per section (`kafka.py`, `source.py`, `topics.py`, `contact.py`, `yespo.py`,
`observability.py`), the root model (`settings.py`) and its sources (`settings_sources.py`), and the loading
(`loading.py`, reading the file in `yaml_file.py`, messages in `errortext.py`).
"""

from __future__ import annotations

from connector.config.contact import AddressMapping, ChannelMapping, ContactMapping, GroupsMapping
from connector.config.kafka import CONNECTOR_KAFKA_PROPERTIES, KafkaSettings
from connector.config.loading import load_settings
from connector.config.observability import ObservabilitySettings
from connector.config.settings import ENV_PREFIX, Settings
from connector.config.source import ChildSource, CustomersSource, SourceSettings
from connector.config.topics import OutputSettings, StateSettings
from connector.config.yespo import CONTACT_ZONE, YespoSettings

__all__ = [
    "CONNECTOR_KAFKA_PROPERTIES",
    "CONTACT_ZONE",
    "ENV_PREFIX",
    "AddressMapping",
    "ChannelMapping",
    "ChildSource",
    "ContactMapping",
    "CustomersSource",
    "GroupsMapping",
    "KafkaSettings",
    "ObservabilitySettings",
    "OutputSettings",
    "Settings",
    "SourceSettings",
    "StateSettings",
    "YespoSettings",
    "load_settings",
]
