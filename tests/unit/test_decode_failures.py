"""Failure reasons are short and free of record content; special records; options from settings."""

from __future__ import annotations

import orjson
import pytest

from connector.config import Settings
from connector.decode import DecodeOptions, Ignored, decode_event
from connector.errors import ConfigError, SchemaRegistryUnavailableError, UnknownSchemaError
from connector.models import ChangeEvent, DecodeFailure, Op, RawRecord, SourcePosition
from connector.registry import StaticSchemaLookup
from tests.unit.decode_fixtures import avro_lookup, load_record

PII = "ana.silva@example.com"
TOPIC = "crm.public.customers"


def decode(value: object, *, key: object = None, topic: str = TOPIC, options: DecodeOptions | None = None):
    raw_key = None if key is None else orjson.dumps(key)
    raw_value = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return decode_event(RawRecord(topic, 1, 99, raw_key, raw_value), options=options or DecodeOptions())


def envelope(**overrides: object) -> dict:
    doc = {
        "before": None,
        "after": {"id": 42, "email": PII},
        "source": {"schema": "public", "table": "customers", "lsn": 5, "ts_ms": 1},
        "op": "c",
    }
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff" + PII.encode(), "value is not valid JSON"),
        ([PII], "value is not an object"),
        (envelope(op=None), "envelope has an unknown op"),
        ({k: v for k, v in envelope().items() if k != "op"} | {"op": PII}, "envelope has an unknown op"),
        (envelope(after=PII), "after is not an object"),
        (envelope(source=PII), "envelope source is not an object"),
        (envelope(after=None), "create event has no after row"),
        (envelope(op="d", after=None), "delete event has neither a key nor a before row"),
        (
            {
                "schema": {
                    "type": "struct",
                    "fields": [{"type": "int32", "name": "io.debezium.time.Date", "field": "d"}],
                },
                "payload": {"d": PII},
            },
            "column 'd' is not a valid io.debezium.time.Date",
        ),
        (
            {
                "schema": {
                    "type": "struct",
                    "fields": [{"type": "string", "name": "io.debezium.data.Json", "field": "doc"}],
                },
                "payload": {"doc": "{" + PII},
            },
            "column 'doc' is not a valid io.debezium.data.Json",
        ),
        ({"schema": PII, "payload": {}}, "schema is not a Connect schema"),
    ],
)
def test_failure_reasons_hold_no_record_content(value: object, reason: str) -> None:
    result = decode(value)
    assert isinstance(result, DecodeFailure)
    assert result.reason == reason
    assert "ana" not in result.reason
    assert result.error_class in ("DecodeError", "ColumnError")
    assert result.stage == "decode"


def test_key_that_is_not_an_object_is_a_failure() -> None:
    result = decode(envelope(), key=[PII])
    assert isinstance(result, DecodeFailure)
    assert result.reason == "key is not an object"


def test_a_keyless_table_s_tombstone_is_a_delete_of_the_empty_key() -> None:
    # Debezium follows every delete with a tombstone, also for a table without a primary key (null
    # key): not a broken record, so not a decode failure; routing decides (test_routing)
    result = decode(None)
    assert isinstance(result, ChangeEvent)
    assert (result.op, result.key, result.tombstone, result.before, result.after) == (
        Op.DELETE,
        {},
        True,
        None,
        None,
    )


def test_unknown_avro_schema_id_is_a_failure() -> None:
    record = load_record("avro", "create")
    framed = b"\x00" + (999).to_bytes(4, "big") + record.value[5:]
    result = decode_event(
        RawRecord(TOPIC, 0, 1, record.key, framed), options=DecodeOptions(), schemas=avro_lookup()
    )
    assert isinstance(result, DecodeFailure)
    assert result.reason == "unknown Avro schema id 999"
    assert result.error_class == "UnknownSchemaError"


class DownRegistry:
    def get(self, schema_id: int) -> object:
        raise SchemaRegistryUnavailableError("schema registry unreachable")


def test_registry_unavailable_propagates() -> None:
    with pytest.raises(SchemaRegistryUnavailableError):
        decode_event(load_record("avro", "create"), options=DecodeOptions(), schemas=DownRegistry())


def test_unknown_id_in_static_lookup() -> None:
    with pytest.raises(UnknownSchemaError) as info:
        StaticSchemaLookup({}).get(3)
    assert info.value.schema_id == 3


def test_transaction_topic_with_a_table_row_is_not_ignored() -> None:
    # A table called "transaction" has the topic crm.public.transaction; its rows are data.
    row = {"id": 1, "status": "open", "__op": "c", "__table": "transaction", "__lsn": 9}
    result = decode(row, key={"id": 1}, topic="crm.public.transaction")
    assert isinstance(result, ChangeEvent)
    assert result.table == "public.transaction"
    assert result.after == {"id": 1, "status": "open"}


def test_unwrapped_row_without_metadata_is_an_upsert_keyed_from_config() -> None:
    options = DecodeOptions(key_columns={TOPIC: ("id",)}, topic_tables={TOPIC: "crm_public.customers"})
    result = decode({"id": 7, "city": "Faro"}, options=options)
    assert isinstance(result, ChangeEvent)
    assert (result.op, result.table, result.key, result.position) == (
        Op.UPDATE,
        "crm_public.customers",
        {"id": 7},
        None,
    )


def test_unwrapped_deleted_flag_alone_makes_a_delete() -> None:
    result = decode({"id": 7, "__deleted": "true"}, key={"id": 7})
    assert isinstance(result, ChangeEvent)
    assert result.op is Op.DELETE
    assert (result.before, result.after) == ({"id": 7}, None)


def test_unwrapped_sequence_field_gives_a_pg_position() -> None:
    row = {"id": 7, "__op": "u", "__source_sequence": '["10","20"]', "__lsn": 20, "__source_txId": 5}
    result = decode(row, key={"id": 7})
    assert isinstance(result, ChangeEvent)
    assert result.position == SourcePosition("pg", (10, 20))
    assert result.tx_id == "5"


def test_snapshot_flag_values() -> None:
    for snapshot, expected in [("true", True), ("last", True), ("false", False), (None, False), (True, True)]:
        value = envelope(source={"schema": "public", "table": "customers", "snapshot": snapshot})
        result = decode(value, key={"id": 42})
        assert isinstance(result, ChangeEvent)
        assert result.snapshot is expected, snapshot


def test_unparseable_pk_header_still_marks_a_key_change() -> None:
    # present but not JSON: the key is unknown, the primary-key change is not (routing's `moved`)
    record = RawRecord(
        TOPIC, 0, 1, b'{"id":42}', orjson.dumps(envelope()), headers=(("__debezium.newkey", b"\x00"),)
    )
    result = decode_event(record, options=DecodeOptions())
    assert isinstance(result, ChangeEvent)
    assert result.new_key == {}


def test_pk_header_in_schema_wrapper() -> None:
    header = b'{"schema":{"type":"struct","fields":[]},"payload":{"id":43}}'
    record = RawRecord(
        TOPIC, 0, 1, b'{"id":42}', orjson.dumps(envelope()), headers=(("__debezium.newkey", header),)
    )
    result = decode_event(record, options=DecodeOptions())
    assert isinstance(result, ChangeEvent)
    assert result.new_key == {"id": 43}


def test_message_topic_ignored_even_when_unwrapped_upstream() -> None:
    value = {"op": "m", "source": {"schema": "", "table": ""}, "message": {"prefix": "p", "content": "eA=="}}
    result = decode(value, key={"prefix": "p"}, topic="crm.message")
    assert isinstance(result, Ignored)
    assert result.kind == "message"


def test_custom_toast_placeholder() -> None:
    options = DecodeOptions(toast_placeholder="~unavailable~")
    result = decode(
        envelope(op="u", after={"id": 42, "bio": "~unavailable~"}), key={"id": 42}, options=options
    )
    assert isinstance(result, ChangeEvent)
    assert result.after is not None
    assert repr(result.after["bio"]) == "UNCHANGED"


def test_options_from_settings() -> None:
    settings = Settings.model_validate(
        {
            "source": {
                "format": "json",
                "customers": {"topic": "crm.public.customers", "key": ["id"], "table": "public.customers"},
                "children": [
                    {
                        "name": "groups",
                        "topic": "g",
                        "customer_key": "customer_id",
                        "key": ["customer_id", "group_id"],
                    }
                ],
                "column_types": {"public.customers": {"birth_date": "date"}},
            }
        }
    )
    options = DecodeOptions.from_settings(settings)
    assert options.format == "json"
    assert options.topic_tables == {"crm.public.customers": "public.customers"}
    assert options.key_columns == {"crm.public.customers": ("id",), "g": ("customer_id", "group_id")}
    assert options.table_converter("public.customers") is not None
    assert options.table_converter("public.other") is None


@pytest.mark.parametrize("type_name", ["no.such.Type", "decimal"])
def test_bad_column_types_are_config_errors(type_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        DecodeOptions(column_types={"public.customers": {"x": type_name}})
    assert info.value.key == "source.column_types.public.customers"


def test_column_error_reason_is_bounded() -> None:
    name = "x" * 500
    schema = {"type": "struct", "fields": [{"type": "int32", "name": "io.debezium.time.Date", "field": name}]}
    result = decode({"schema": schema, "payload": {name: "nope"}})
    assert isinstance(result, DecodeFailure)
    assert len(result.reason) < 160


def test_tombstone_keeps_the_pk_change_headers() -> None:
    # a PK change on a topic whose deletes arrive only as tombstones: the tombstone is the old key's delete
    headers = (("__debezium.newkey", b'{"id":43}'), ("__debezium.oldkey", b'{"id":42}'))
    for value in (None, b"null"):
        record = RawRecord(TOPIC, 0, 1, b'{"id":42}', value, headers=headers)
        result = decode_event(record, options=DecodeOptions())
        assert isinstance(result, ChangeEvent) and result.tombstone
        assert (result.old_key, result.new_key) == ({"id": 42}, {"id": 43})
    plain = decode_event(RawRecord(TOPIC, 0, 2, b'{"id":42}', None), options=DecodeOptions())
    assert isinstance(plain, ChangeEvent) and plain.new_key is None and plain.old_key is None
