"""The decode fast path on what real Debezium writes with JsonConverter, schemas on and off.

The C fast path recognises a PostgreSQL envelope by its bytes (`{"before":` first, or the
`{"schema":...,"payload":...}` wrapper, and the `"connector":"postgresql"` member) and reads the
schema text the way the Python decoder keys its cache; this checks those assumptions against Kafka
Connect + Debezium 3.6.1 itself: snapshot, update (with a TOASTed column left unchanged) and delete
records of a real connector take the fast path and decode to exactly what the Python decoder gives.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import orjson
import pytest

from connector.decode import DecodeOptions, decode_event
from connector.decode import native as native_module
from connector.models import ChangeEvent, Op, RawRecord
from connector.stack.connect import delete_connector, register_connector, wait_running
from tests.integration.kafka_helpers import delete_topics, read_partition
from tests.integration.test_stack_cdc import _drop_slot_and_publication, _psql
from tests.unit.test_decode_native import same

pytestmark = pytest.mark.integration

COLUMN_TYPES = {"public.customers": {"birth_date": "date", "updated_at": "zoned_timestamp"}}


def _key_id(key: bytes) -> object:
    doc = orjson.loads(key)
    return (doc.get("payload") or {}).get("id") if "schema" in doc else doc.get("id")


def _records(bootstrap: str, topic: str, customer_id: int, count: int) -> list[RawRecord]:
    deadline = time.monotonic() + 90
    found: list[RawRecord] = []
    while time.monotonic() < deadline:
        try:
            pairs = read_partition(bootstrap, topic, timeout=20)
        except TimeoutError:
            pairs = []
        found = [
            RawRecord(topic, 0, offset, key, value)
            for offset, (key, value) in enumerate(pairs)
            if key is not None and _key_id(key) == customer_id
        ]
        if len(found) >= count:
            return found
        time.sleep(1)
    raise AssertionError(f"expected {count} records for customer {customer_id}, got {len(found)}")


@pytest.mark.skipif(
    not native_module.AVAILABLE and not os.environ.get("CI"),
    reason="the C extension is not built here (no compiler when installed); CI requires it",
)
@pytest.mark.parametrize("schemas", ["false", "true"])
def test_real_debezium_records_take_the_fast_path(
    schemas, kafka_bootstrap, kafka_admin, postgres_dsn, connect_url, debezium_connector_config
):
    assert native_module.AVAILABLE, "the C extension is not built"
    prefix = f"nat{uuid.uuid4().hex[:10]}"
    customer_id = random.randint(10**12, 10**13)
    _psql(
        postgres_dsn,
        "INSERT INTO public.customers (id, external_id, email, birth_date, notes, updated_at) "
        f"VALUES ({customer_id}, 'ext-{customer_id}', 'n@example.invalid', '1984-02-29', "
        "repeat('n', 5000), '2026-11-20 09:15:42.123456+00')",
    )
    name, config = debezium_connector_config(
        prefix=prefix,
        **{
            "slot.drop.on.stop": "true",
            "key.converter.schemas.enable": schemas,
            "value.converter.schemas.enable": schemas,
        },
    )
    register_connector(connect_url, name, config)
    try:
        wait_running(connect_url, name)
        _psql(postgres_dsn, f"UPDATE public.customers SET city = 'Porto' WHERE id = {customer_id}")
        _psql(postgres_dsn, f"DELETE FROM public.customers WHERE id = {customer_id}")
        records = _records(kafka_bootstrap, f"{prefix}.public.customers", customer_id, 4)
    finally:
        delete_connector(connect_url, name)
        _drop_slot_and_publication(postgres_dsn, prefix)
        ours = [t for t in kafka_admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
        delete_topics(kafka_admin, ours)

    from connector.decode import _speedups  # type: ignore[attr-defined]

    fast_options = DecodeOptions(column_types=COLUMN_TYPES)
    slow_options = DecodeOptions(column_types=COLUMN_TYPES, native=False)
    events = []
    for record in records:
        slow = decode_event(record, options=slow_options)
        assert same(decode_event(record, options=fast_options), slow), record.value
        native = _speedups.decode_envelope(record, fast_options.native_context)
        if record.value is not None:  # every envelope Debezium wrote, not only the fixtures
            assert native is not None and same(native, slow), record.value
        events.append(slow)
    snapshot, update, delete, tombstone = events
    assert isinstance(snapshot, ChangeEvent) and snapshot.op is Op.READ and snapshot.snapshot
    assert snapshot.after is not None and str(snapshot.after["birth_date"]) == "1984-02-29"
    assert isinstance(update, ChangeEvent) and update.op is Op.UPDATE and update.after is not None
    assert update.after["city"] == "Porto" and update.after["notes"] == "n" * 5000
    assert update.position is not None and snapshot.position is not None
    assert update.position > snapshot.position
    assert isinstance(delete, ChangeEvent) and delete.op is Op.DELETE and delete.before is not None
    assert isinstance(tombstone, ChangeEvent) and tombstone.tombstone
