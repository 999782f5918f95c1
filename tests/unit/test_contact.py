"""The Contact model: the example's shape, canonical JSON, fingerprint, and the committed schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest

from connector.contact import Contact, _main, contact_json_schema
from tests.samples import example_contact

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "contact.schema.json"

# The "Add/Update a Contact Request Example", verbatim.
EXAMPLE: dict[str, Any] = example_contact()


def test_the_example_round_trips_exactly_including_key_order() -> None:
    contact = Contact.model_validate(EXAMPLE)
    out = contact.to_json()
    assert out == EXAMPLE
    assert list(out) == list(EXAMPLE)
    assert list(out["address"]) == list(EXAMPLE["address"])


def test_none_and_empty_are_omitted() -> None:
    contact = Contact(externalCustomerId="42")
    assert contact.to_json() == {"externalCustomerId": "42"}
    partial = Contact.model_validate({"externalCustomerId": "42", "address": {"city": "Kyiv"}})
    assert partial.to_json() == {"address": {"city": "Kyiv"}, "externalCustomerId": "42"}
    assert Contact.model_validate({"externalCustomerId": "1", "address": {}}).to_json() == {
        "externalCustomerId": "1"
    }


def test_group_without_name_and_groups_sorted_by_id() -> None:
    contact = Contact.model_validate(
        {"externalCustomerId": "1", "groups": [{"id": 9, "name": "b"}, {"id": 3}, {"id": -1, "name": "a"}]}
    )
    assert contact.to_json()["groups"] == [{"id": -1, "name": "a"}, {"id": 3}, {"id": 9, "name": "b"}]
    assert contact.group_ids == (-1, 3, 9)


def test_channels_and_fields_keep_their_order() -> None:
    data = {
        "channels": [{"type": "webPush", "value": "w"}, {"type": "email", "value": "a@b.io"}],
        "fields": [{"name": "z", "value": "1"}, {"name": "a", "value": "2"}],
    }
    out = Contact.model_validate(data).to_json()
    assert out["channels"] == data["channels"]
    assert out["fields"] == data["fields"]


def test_frozen_and_strict() -> None:
    contact = Contact.model_validate(EXAMPLE)
    with pytest.raises(pydantic.ValidationError):
        contact.firstName = "Jane"
    assert hash(contact) == hash(Contact.model_validate(EXAMPLE))
    with pytest.raises(pydantic.ValidationError):
        Contact.model_validate({**EXAMPLE, "unknown": 1})
    with pytest.raises(pydantic.ValidationError):
        Contact.model_validate({"channels": [{"type": "webpush", "value": "x"}]})  # example spelling only
    with pytest.raises(pydantic.ValidationError):
        Contact.model_validate({"firstName": "A" * 41})
    with pytest.raises(pydantic.ValidationError):
        Contact.model_validate({"address": {"country": "usa"}})


def test_fingerprint_equal_for_equal_contacts_and_key_order_independent() -> None:
    a = Contact.model_validate(EXAMPLE)
    b = Contact.model_validate(dict(reversed(list(EXAMPLE.items()))))
    assert a == b
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 32
    int(a.fingerprint(), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"firstName": "Jane"},
        {"channels": list(reversed(EXAMPLE["channels"]))},
        {"groups": []},
        {"groups": [{"id": 1001}]},
        {"fields": [{"name": "birthDate", "value": "1990-01-02"}, EXAMPLE["fields"][1]]},
        {"timeZone": None},
    ],
)
def test_fingerprint_changes_with_the_contact(change: dict[str, Any]) -> None:
    base = Contact.model_validate(EXAMPLE)
    changed = Contact.model_validate({**EXAMPLE, **change})
    assert changed.fingerprint() != base.fingerprint()


def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "import json,sys; from connector.contact import Contact; "
        "print(Contact.model_validate(json.loads(sys.argv[1])).fingerprint())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(EXAMPLE)], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == Contact.model_validate(EXAMPLE).fingerprint()


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == contact_json_schema(), (
        "run: python -m connector.contact --schema > schemas/contact.schema.json"
    )


def test_schema_is_valid_and_accepts_to_json_output() -> None:
    schema = contact_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(Contact.model_validate(EXAMPLE).to_json())
    validator.validate({"externalCustomerId": "1"})
    # to_json never writes null: the schema refuses it
    assert not validator.is_valid({"firstName": None})
    assert not validator.is_valid({"channels": [{"type": "fax", "value": "1"}]})
    assert not validator.is_valid({"groups": [{"id": "1"}]})


def test_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == contact_json_schema()
    assert _main([]) == 2
