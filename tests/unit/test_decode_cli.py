"""`yespo-connector decode --input`: kcat -J lines in, one normalized JSON object per line out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from tests.unit.decode_fixtures import FIXTURES

CONFIG = """
source:
  format: auto
  column_types:
    public.customers: {birth_date: date, updated_at: zoned_timestamp}
    public.documents: {attachment: bytes, meta: json, amount: "decimal:2"}
"""


def kcat_line(name: str) -> str:
    doc = json.loads((FIXTURES / "json_plain" / f"{name}.json").read_text(encoding="utf-8"))
    headers: list[str] = []
    for key, value in doc["headers"]:
        headers += [key, value]
    return json.dumps(
        {
            "topic": doc["topic"],
            "partition": doc["partition"],
            "offset": doc["offset"],
            "tstype": "create",
            "ts": 1795166142500,
            "broker": 1,
            "headers": headers,
            "key": doc["key"],
            "payload": doc["value"],
        }
    )


def run(tmp_path: Path, lines: list[str]) -> list[dict]:
    config = tmp_path / "connector.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    source = tmp_path / "records.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["decode", "--config", str(config), "--input", str(source)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_decode_prints_normalized_events(tmp_path: Path) -> None:
    out = run(tmp_path, [kcat_line("update"), kcat_line("tombstone"), kcat_line("pk_change_delete")])
    assert out[0] == {
        "op": "u",
        "table": "public.customers",
        "key": {"id": 42},
        "before": None,
        "after": {
            "id": 42,
            "external_id": "6f1c2f5e-8d0a-4a43-9d8e-3c1b2a7f9e10",
            "first_name": "Ana",
            "last_name": "Silva-Costa",
            "email": "ana.silva@example.com",
            "phone": "+351210000000",
            "city": "Porto",
            "country": "PT",
            "birth_date": "1985-07-14",
            "loyalty_level": "platinum",
            "updated_at": "2026-11-21T10:00:00Z",
            "language_code": "pt",
            "time_zone": "Europe/Lisbon",
        },
        "position": ["pg", 24100300, 24100352],
        "ts_ms": 1795255200000,
        "snapshot": False,
        "tx_id": "775",
        "topic": "crm.public.customers",
        "partition": 0,
        "offset": 11,
    }
    assert out[1]["op"] == "d"
    assert out[1]["tombstone"] is True
    assert out[1]["key"] == {"id": 42}
    assert (out[1]["before"], out[1]["after"], out[1]["position"]) == (None, None, None)
    assert out[2]["new_key"] == {"id": 43}


def test_decode_renders_toast_decimals_and_json(tmp_path: Path) -> None:
    [toast, types] = run(tmp_path, [kcat_line("toast"), kcat_line("types")])
    assert toast["after"]["body"] == "__debezium_unavailable_value"
    assert toast["after"]["attachment"] == "__debezium_unavailable_value"
    assert toast["after"]["amount"] == "99.00"
    assert types["after"]["amount"] == "1234.50"
    assert types["after"]["meta"] == {"a": [1, 2], "b": "x"}


def test_decode_prints_errors_and_ignored_records(tmp_path: Path) -> None:
    garbage = json.dumps(
        {"topic": "crm.public.customers", "partition": 2, "offset": 7, "key": None, "payload": "{x"}
    )
    out = run(tmp_path, [garbage, "not json at all", kcat_line("truncate"), kcat_line("heartbeat")])
    assert out == [
        {"error": "value is not valid JSON", "topic": "crm.public.customers", "partition": 2, "offset": 7},
        {"error": "input line 2 is not a kcat -J record"},
        {"ignored": "truncate", "topic": "crm.public.customers", "partition": 0, "offset": 22},
        {"ignored": "heartbeat", "topic": "__debezium-heartbeat.crm", "partition": 0, "offset": 0},
    ]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--input", "x.jsonl", "--from-topic", "t"],
    ],
)
def test_decode_needs_exactly_one_source(tmp_path: Path, args: list[str]) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    result = CliRunner().invoke(app, ["decode", "--config", str(config), *args])
    assert result.exit_code == 2


SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "dryrun" / "sample.jsonl"
REPO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "connector.yaml"


def sample_line(offset: int, **after: object) -> bytes:
    """The first record of the dry-run sample at `offset`, with `after` columns replaced."""
    doc = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    payload = json.loads(doc["payload"])
    payload["after"].update(after)
    doc["payload"], doc["offset"] = json.dumps(payload), offset
    return json.dumps(doc).encode("utf-8")


def beyond_64_bits(offset: int) -> bytes:
    """A record whose source position (lsn, sequence) is beyond 64 bits: JSON output cannot hold it."""
    doc = json.loads(sample_line(offset))
    payload = json.loads(doc["payload"])
    payload["source"]["lsn"] = 2**64
    payload["source"]["sequence"] = json.dumps(["100", str(2**64)])
    doc["payload"] = json.dumps(payload)
    return json.dumps(doc).encode("utf-8")


def nested(levels: int) -> object:
    value: object = []
    for _ in range(levels):
        value = [value]
    return value


def decode_bytes(tmp_path: Path, data: bytes, *, stdin: bool = False) -> list[dict]:
    source = tmp_path / "records.jsonl"
    source.write_bytes(data)
    args = ["decode", "--config", str(REPO_CONFIG), "--input", "-" if stdin else str(source)]
    result = CliRunner().invoke(app, args, input=data if stdin else None)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_a_line_that_is_not_utf8_is_one_error_line(tmp_path: Path, stdin: bool) -> None:
    bad = b'{"topic":"t","partition":0,"offset":1,"key":"\xff\x00","payload":null}'
    out = decode_bytes(tmp_path, sample_line(0) + b"\n" + bad + b"\n" + sample_line(2) + b"\n", stdin=stdin)
    assert [line.get("offset") for line in out] == [0, None, 2]
    assert out[1] == {"error": "input line 2 is not a kcat -J record"}


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (beyond_64_bits(1), "Integer exceeds 64-bit range"),
        (sample_line(1, preferences=nested(300)), "Recursion limit reached"),
    ],
    ids=["beyond-64-bits", "nested-300-levels"],
)
def test_an_event_json_cannot_hold_is_one_error_line(tmp_path: Path, record: bytes, why: str) -> None:
    out = decode_bytes(tmp_path, sample_line(0) + b"\n" + record + b"\n" + sample_line(2) + b"\n")
    assert [line.get("op") for line in out] == ["c", None, "c"]
    assert out[1] == {
        "error": f"the decoded event cannot be written as JSON ({why})",
        "topic": "crm.public.customers",
        "partition": 0,
        "offset": 1,
    }
