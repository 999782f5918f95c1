"""Loading the golden Debezium records of tests/fixtures/debezium/ as RawRecords."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path

from connector.decode import DecodeOptions
from connector.models import RawRecord
from connector.registry import StaticSchemaLookup

FIXTURES = Path(__file__).parent.parent / "fixtures" / "debezium"
FORMATS = ("json_schema", "json_plain", "avro")

# What JSON without schemas cannot carry: the logical types, from `source.column_types`.
CUSTOMER_TYPES = {"birth_date": "io.debezium.time.Date", "updated_at": "zoned_timestamp"}
COLUMN_TYPES = {
    "public.customers": CUSTOMER_TYPES,
    "shop.customers": CUSTOMER_TYPES,
    "public.documents": {
        "attachment": "bytes",
        "meta": "json",
        "amount": "decimal:2",
        "balance": "variable_scale_decimal",
        "created_micro": "micro_timestamp",
        "created_ms": "timestamp",
        "created_nano": "nano_timestamp",
        "start_time": "micro_time",
    },
}


def load_record(fmt: str, name: str) -> RawRecord:
    doc = json.loads((FIXTURES / fmt / f"{name}.json").read_text(encoding="utf-8"))

    def raw(text: str | None) -> bytes | None:
        if text is None:
            return None
        return base64.b64decode(text) if doc.get("encoding") == "base64" else text.encode("utf-8")

    return RawRecord(
        topic=doc["topic"],
        partition=doc["partition"],
        offset=doc["offset"],
        key=raw(doc["key"]),
        value=raw(doc["value"]),
        headers=tuple((k, v.encode("utf-8")) for k, v in doc["headers"]),
    )


def case_names() -> list[str]:
    return sorted(p.stem for p in (FIXTURES / "json_plain").glob("*.json"))


@cache
def avro_lookup() -> StaticSchemaLookup:
    entries = json.loads((FIXTURES / "avro" / "schemas.json").read_text(encoding="utf-8"))
    return StaticSchemaLookup({int(k): v["schema"] for k, v in entries.items()})


def options_for(fmt: str) -> DecodeOptions:
    return DecodeOptions(column_types=COLUMN_TYPES if fmt == "json_plain" else {})


def pg_insert(
    table: str, after: dict[str, object], *, sequence: list[str] | None = None, lsn: object = 200
) -> RawRecord:
    """A schemaless PostgreSQL insert of `public.<table>` with row `after`, on topic crm.public.<table>."""
    value = {
        "before": None,
        "after": after,
        "source": {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": "crm",
            "ts_ms": 1,
            "snapshot": "false",
            "db": "appdb",
            "sequence": json.dumps(sequence or ["100", "200"]),
            "schema": "public",
            "table": table,
            "txId": 7,
            "lsn": lsn,
        },
        "op": "c",
        "ts_ms": 2,
    }
    return RawRecord(f"crm.public.{table}", 0, 1, b'{"id":1}', json.dumps(value).encode())
