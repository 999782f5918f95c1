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


def test_a_dlq_copy_above_the_limit_keeps_only_its_headers() -> None:
    from connector.dlq import DlqRecord, fit_record, record_size

    dead = dlq_record(failure())
    assert fit_record(dead, 10_000) is dead  # fits: unchanged
    big = DlqRecord(b'{"id":42}', b"x" * 20_000, dead.headers)
    fitted = fit_record(big, 10_000)
    assert fitted.value is None and fitted.key == b'{"id":42}'
    assert fitted.headers[: len(dead.headers)] == dead.headers  # the yespo.source.* headers name it
    name, note = fitted.headers[-1]
    assert name == "yespo.error.value_dropped"
    assert note.startswith(b"20")
    assert b"above the record size limit (10000 bytes: the producer's message.max.bytes" in note
    assert record_size(fitted.key, fitted.value, fitted.headers) <= 10_000
    # original headers too large for any copy: only the yespo.* headers are kept
    noisy = DlqRecord(None, b"x" * 20_000, (("trace", b"t" * 20_000), *dead.headers[2:]))
    trimmed = fit_record(noisy, 10_000)
    assert [h for h, _ in trimmed.headers if not h.startswith("yespo.")] == []
    assert record_size(trimmed.key, trimmed.value, trimmed.headers) <= 10_000


def test_record_limit_is_the_lowest_of_the_producer_and_the_written_topics():
    from connector.kafka.topics import record_limit

    limits = {"dlq": 4096, "state": 2_000_000}
    assert record_limit(1_000_000, limits, ["dlq"]) == 4096
    assert record_limit(1_000_000, limits, ["state", "unknown"]) == 1_000_000
    assert record_limit(1_000_000, limits, ["state", "dlq"]) == 4096
    assert record_limit(1_000_000, {}, []) == 1_000_000


def test_producer_batches_shrink_only_below_librdkafkas_default_batch_size():
    from connector.kafka.topics import batch_size_for

    assert batch_size_for(1_048_588) == {}
    assert batch_size_for(1_000_000) == {}
    assert batch_size_for(4096) == {"batch.size": 4096 - 512}
