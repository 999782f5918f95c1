"""The DLQ record shape for a decode failure: original bytes and headers plus yespo.* headers."""

from __future__ import annotations

from connector.decode import DecodeOptions, decode_event
from connector.dlq import dlq_headers, dlq_record
from connector.models import DecodeFailure, RawRecord


def failure() -> DecodeFailure:
    record = RawRecord(
        "crm.public.customers",
        3,
        1234,
        b'{"id":42}',
        b'{"after": "ana.silva@example.com"',
        headers=(("trace", b"abc"), ("empty", None)),
    )
    result = decode_event(record, options=DecodeOptions())
    assert isinstance(result, DecodeFailure)
    return result


def test_dlq_headers() -> None:
    assert dlq_headers(failure()) == [
        ("trace", b"abc"),
        ("empty", b""),
        ("yespo.error.class", b"DecodeError"),
        ("yespo.error.reason", b"value is not valid JSON"),
        ("yespo.source.topic", b"crm.public.customers"),
        ("yespo.source.partition", b"3"),
        ("yespo.source.offset", b"1234"),
        ("yespo.stage", b"decode"),
    ]


def test_dlq_record_keeps_original_bytes_and_no_pii_in_headers() -> None:
    fail = failure()
    record = dlq_record(fail, stage="merge")
    assert record.key == b'{"id":42}'
    assert record.value == b'{"after": "ana.silva@example.com"'
    assert ("yespo.stage", b"merge") in record.headers
    assert not any(b"ana" in value for _, value in record.headers)
