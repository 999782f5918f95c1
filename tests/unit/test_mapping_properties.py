"""Property: for random row changes, the emitted stream ends in mapping(final rows), with no repeats.

A few customers get random customers-row upserts/deletes and group-row adds/removes. After each change
the customer's view goes through map_contact + decide_emission, with the fingerprint and groups tracked
per customer exactly as the merge stage does (`track_emission`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import ContactMapping
from connector.contact import Contact, contact_json_schema
from connector.emission import Emission, EmittedState, decide_emission, track_emission
from connector.jsonvalues import UNCHANGED_MARKER
from connector.mapping import ContactMapper, map_contact
from connector.models import CustomerView

CUSTOMERS = ("1", "2", "3")

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "channels": [{"type": "email", "column": "email"}, {"type": "sms", "column": "phone"}],
        "address": {"city": "city", "country": "country"},
        "fields": {"loyaltyLevel": "loyalty", "birthDate": "birth_date"},
        "groups": {"child": "groups", "id": "group_id", "name": "group_name"},
        "languageCode": "language_code",
        "timeZone": "time_zone",
        "default_phone_region": "US",
    }
)

VALIDATOR = jsonschema.Draft202012Validator(contact_json_schema())

# Small pools, so that values repeat (unchanged contacts) and include null, empty, invalid and
# differently written equal values.
ROWS = st.fixed_dictionaries(
    {
        "external_id": st.sampled_from([None, "E1", "E2", 17, ""]),
        "first_name": st.sampled_from([None, "John", " John ", "Anna", "12345", "A" * 41]),
        "last_name": st.sampled_from([None, "Smith", "O'Neil", UNCHANGED_MARKER]),
        "email": st.sampled_from([None, "a@example.com", " A@Example.com", "b@example.com", "bad"]),
        "phone": st.sampled_from([None, "+16502530000", "(650) 253-0000", "+442079460958", "12"]),
        "city": st.sampled_from([None, "Kyiv", ""]),
        "country": st.sampled_from([None, "US", "us", "UA", "USA"]),
        "loyalty": st.sampled_from([None, "Gold", True, 3, "3"]),
        "birth_date": st.sampled_from([None, "1990-01-01"]),
        "language_code": st.sampled_from([None, "en", "EN", "pt_br", "english"]),
        "time_zone": st.sampled_from([None, "UTC", "utc", "Europe/Kyiv", "Mars/Olympus"]),
        "updated_at": st.integers(0, 3),  # not mapped: changes must not emit
    }
)

CUSTOMER = st.sampled_from(CUSTOMERS)
OPS = st.one_of(
    st.tuples(st.just("upsert"), CUSTOMER, ROWS),
    st.tuples(st.just("delete"), CUSTOMER),
    st.tuples(st.just("group_add"), CUSTOMER, st.integers(1, 4), st.sampled_from([None, "A", "B"])),
    st.tuples(st.just("group_remove"), CUSTOMER, st.integers(1, 4)),
)


@dataclass
class Customer:
    row: dict[str, Any] | None = None
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    state: EmittedState | None = None
    stream: list[Emission] = field(default_factory=list)
    emitted_groups: tuple[int, ...] = ()  # the test's own record of the last upsert's groups

    def view(self, key: str) -> CustomerView:
        rows = [self.groups[g] for g in sorted(self.groups)]
        return CustomerView(key, None if self.row is None else dict(self.row), {"groups": rows})


def apply(customer: Customer, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "upsert":
        customer.row = {"id": int(op[1]), **op[2]}
    elif kind == "delete":
        customer.row = None
    elif kind == "group_add":
        customer.groups[op[2]] = {"customer_id": int(op[1]), "group_id": op[2], "group_name": op[3]}
    else:
        customer.groups.pop(op[2], None)


def check_result_invariants(mapper: ContactMapper, v: CustomerView) -> None:
    result = mapper.map(v)
    assert result == map_contact(v, MAPPING)
    if result.contact is None:
        return
    body = result.contact.to_json()
    # what the upsert record carries is to_json(), key order included
    assert result.contact_json is not None
    assert orjson.dumps(result.contact_json) == orjson.dumps(body)
    if result.kept:  # unknown values: left out like nulls, but fingerprinted apart from them
        assert result.fingerprint != result.contact.fingerprint()
    else:
        assert result.fingerprint == result.contact.fingerprint()
    assert Contact.model_validate(body) == result.contact
    VALIDATOR.validate(body)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, max_size=40), on_delete=st.sampled_from(["delete", "erase", "ignore"]))
def test_emitted_stream_converges_to_the_mapping_of_the_final_rows(
    ops: list[tuple[Any, ...]], on_delete: str
) -> None:
    mapper = ContactMapper(MAPPING)
    customers = {key: Customer() for key in CUSTOMERS}
    for op in ops:
        key = op[1]
        customer = customers[key]
        apply(customer, op)
        v = customer.view(key)
        check_result_invariants(mapper, v)
        result = map_contact(v, MAPPING)
        state = customer.state
        emission = decide_emission(
            state.fingerprint if state else None, state.groups if state else None, result, on_delete
        )
        if emission is not None:
            if emission.op == "upsert":
                assert emission.contact is not None
                removed = sorted(set(customer.emitted_groups) - set(emission.group_ids))
                assert emission.groups_removed == removed
                customer.emitted_groups = emission.group_ids
            else:
                assert emission.groups_removed == []
                customer.emitted_groups = ()
            customer.stream.append(emission)
        customer.state = track_emission(state, emission)

    for key, customer in customers.items():
        final = map_contact(customer.view(key), MAPPING)
        stream = customer.stream
        # no two consecutive records for a customer are equal (the same contact with a field
        # unknown, then known empty, is two records: keep the field, then clear it)
        for before, after in itertools.pairwise(stream):
            assert (before.op, before.contact, before.keep_fields) != (
                after.op,
                after.contact,
                after.keep_fields,
            )
        if on_delete == "ignore":
            assert all(e.op == "upsert" for e in stream)
        else:
            assert all(e.erase == (on_delete == "erase") for e in stream if e.op == "delete")
        if final.contact is not None:
            assert stream, "a live contact was never emitted"
            assert stream[-1].op == "upsert"
            assert stream[-1].contact == final.contact.to_json()
            assert customer.state is not None
            assert customer.state.fingerprint == final.fingerprint
        elif final.error is None and stream and on_delete != "ignore":
            # the customers row is gone: the last record deletes what was emitted
            assert stream[-1].op == "delete"
            assert customer.state is None
