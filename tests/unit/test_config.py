from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "examples" / "connector.yaml"
REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "connector.yaml"


@pytest.mark.parametrize("path", [EXAMPLE, REPO_EXAMPLE], ids=["shared-example", "repo-example"])
def test_example_config_loads(path: Path) -> None:
    if not path.exists() and path == EXAMPLE:
        pytest.fail(f"shared example missing at {path}")
    settings = load_settings(path)
    assert settings.source.customers.topic == "crm.public.customers"
    assert [c.name for c in settings.source.children] == ["groups"]
    assert settings.contact.groups is not None and settings.contact.groups.child == "groups"
    assert settings.yespo.field_ids == {"birthDate": 101, "loyaltyLevel": 102}
    assert settings.kafka.deliver_group == "yespo-connector-deliver"


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9999")
    monkeypatch.setenv("YESPO_CONNECTOR_STATE__PARTITIONS", "12")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9999"
    assert settings.state.partitions == 12
    assert settings.kafka.group_id == "yespo-connector"  # the rest still comes from the file


def test_bad_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  commit_interval_ms: soon\nyespo:\n  batch_size: 5000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    text = str(info.value)
    assert "kafka.commit_interval_ms" in text
    assert "yespo.batch_size" in text


def test_unknown_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("contact:\n  firstNme: first_name\n")
    with pytest.raises(ConfigError, match=r"contact\.firstNme"):
        load_settings(bad)


def test_groups_child_must_exist(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("contact:\n  groups: {child: nope, id: group_id}\n")
    with pytest.raises(ConfigError, match=r"contact\.groups\.child"):
        load_settings(bad)


def test_api_key_from_env_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_API_KEY", "key-123-secret")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.yespo.api_key is not None
    assert settings.yespo.api_key.get_secret_value() == "key-123-secret"
    assert "key-123-secret" not in repr(settings)
    assert "key-123-secret" not in str(settings.model_dump())


def test_api_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {key_file}\n")
    settings = load_settings(cfg)
    assert settings.yespo.api_key is not None
    assert settings.yespo.api_key.get_secret_value() == "from-file"


def test_missing_key_file_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {tmp_path / 'absent'}\n")
    with pytest.raises(ConfigError, match=r"yespo\.api_key_file"):
        load_settings(cfg)
