"""End to end: an unchanged TOAST value the connector never saw is kept in Yespo, not cleared.

Under REPLICA IDENTITY DEFAULT, PostgreSQL leaves an UPDATE's unchanged out-of-line (TOASTed) values out
of the WAL and Debezium sends `__debezium_unavailable_value` instead. The merge stage fills them from
its state; when the state never held the value (here: Debezium started with `snapshot.mode=no_data` on
a table whose rows Yespo already holds; in production also a source topic whose retention dropped the
snapshot), the value is unknown. Clearing the field in Yespo would lose data: the upsert carries
`keep_fields` and the deliver stage leaves those fields out of `contactFields`/`customFieldsIDs`.
A NULL written later is known, and clears the field.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from connector.config import Settings
from connector.sink.client import YespoClient
from connector.stack.connect import delete_connector, register_connector, wait_running
from connector.standin import StandIn
from tests.integration.deliver_support import deliver_settings
from tests.integration.e2e_support import (
    CrmDatabase,
    Workload,
    delete_chain_topics,
    expected_contacts,
    pipeline_drained,
    psql,
    start_connector,
    stop_connector,
    wait_for_equality,
    write_json_config,
)
from tests.integration.merge_support import read_all

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_an_unknown_toasted_value_is_kept_in_yespo_and_a_later_null_clears_it(
    kafka_bootstrap: str,
    kafka_admin: Any,
    postgres_dsn: str,
    connect_url: str,
    debezium_connector_config: Callable[..., tuple[str, dict[str, str]]],
    create_topic: Callable[..., str],
    unique_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    prefix = f"toast{uuid.uuid4().hex[:10]}"
    db = CrmDatabase(postgres_dsn).create()
    psql(db.dsn, "ALTER TABLE public.customers REPLICA IDENTITY DEFAULT;")
    workload = Workload(random.Random(20261129))
    psql(db.dsn, workload.insert(big=True, groups=0))
    (cid,) = workload.live
    assert (
        int(psql(db.dsn, f"SELECT pg_column_size(loyalty_level) FROM public.customers WHERE id = {cid}"))
        > 2100
    )

    api_key = f"toast-key-{uuid.uuid4().hex}"
    # the big (TOASTed) rows carry a 3000-character loyalty level: a text area in this account
    # (a text input holds 1000 characters, and Yespo would refuse the contact)
    standin = StandIn(api_key=api_key, port=0, field_types={"loyaltyLevel": "TEXTAREA"})
    standin.start()
    sources = [
        create_topic(f"{prefix}.public.customers", partitions=2),
        create_topic(f"{prefix}.public.customer_groups", partitions=2),
    ]
    data = deliver_settings(kafka_bootstrap, unique_topic, standin.url).model_dump(
        exclude={"yespo": {"api_key"}}
    )
    data["source"]["customers"]["topic"] = sources[0]
    data["source"]["children"][0]["topic"] = sources[1]
    settings = Settings(**data)
    name, config = debezium_connector_config(
        prefix=prefix, **{"database.dbname": db.name, "snapshot.mode": "no_data"}
    )
    proc = None
    try:
        # Yespo already holds the customer (an earlier sync), long loyalty level included
        def expected() -> dict[str, dict[str, Any]]:
            return expected_contacts(settings, db.customers(), db.groups())

        seed = settings.yespo.model_copy(update={"api_key": SecretStr(api_key)})
        with httpx.Client() as http:
            client = YespoClient(http, seed, settings.contact)
            client.resolve_fields()
            contact = {
                "externalCustomerId": f"crm-{cid}",
                "firstName": workload.live[cid]["first_name"],
                "channels": [{"type": "email", "value": workload.live[cid]["email"]}],
                "fields": [{"name": "loyaltyLevel", "value": workload.live[cid]["loyalty_level"]}],
            }
            assert client.send_bulk([contact]).contacts[0].ok
        loyalty_id = str(settings.yespo.field_ids["loyaltyLevel"])
        held = next(c for c in standin.contacts()["contacts"] if c["externalCustomerId"] == f"crm-{cid}")
        assert held["fields"][loyalty_id] == workload.live[cid]["loyalty_level"]

        config_file = tmp_path / "connector.yaml"
        write_json_config(settings, config_file)
        drained = pipeline_drained(kafka_bootstrap, settings)
        proc = start_connector(config_file, api_key, tmp_path / "connector.log", f"toast-{prefix}")
        register_connector(connect_url, name, config)
        wait_running(connect_url, name)
        deadline = time.monotonic() + 60  # streaming starts once the slot is in use
        while (
            psql(db.dsn, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{prefix}_slot'") != "t"
        ):
            assert time.monotonic() < deadline, "Debezium's replication slot never became active"
            time.sleep(0.5)

        # 1. the first change the connector sees: loyalty_level and notes are left out (TOAST)
        psql(
            db.dsn,
            f"UPDATE public.customers SET first_name = 'Zoryana', updated_at = now() WHERE id = {cid};",
        )
        problems, _ = wait_for_equality(standin.contacts, expected(), [], 90, drained)
        assert problems == [], problems
        held = next(c for c in standin.contacts()["contacts"] if c["externalCustomerId"] == f"crm-{cid}")
        assert held["firstName"] == "Zoryana"
        assert held["fields"][loyalty_id] == workload.live[cid]["loyalty_level"]  # kept, not cleared

        # 2. a NULL is known: it clears the field
        psql(db.dsn, f"UPDATE public.customers SET loyalty_level = NULL WHERE id = {cid};")
        problems, _ = wait_for_equality(standin.contacts, expected(), [], 90, drained)
        assert problems == [], problems
        held = next(c for c in standin.contacts()["contacts"] if c["externalCustomerId"] == f"crm-{cid}")
        assert loyalty_id not in held["fields"]

        upserts = [orjson.loads(r.value()) for r in read_all(kafka_bootstrap, settings.output.upserts_topic)]
        assert [u.get("keep_fields") for u in upserts] == [["fields.loyaltyLevel"], None]
        assert proc.poll() is None
    finally:
        if proc is not None:
            stop_connector(proc)
        with contextlib.suppress(Exception):
            delete_connector(connect_url, name)
        standin.stop()
        db.drop(f"{prefix}_slot", f"{prefix}_pub")
        with contextlib.suppress(Exception):
            delete_chain_topics(kafka_admin, settings, prefix)
