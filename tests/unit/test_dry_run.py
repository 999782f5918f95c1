from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import orjson
import pytest

from connector.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dryrun"
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "connector.yaml"


def run(capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict]:
    with pytest.raises(SystemExit) as info:
        main(["dry-run", "--config", str(CONFIG), "--input", str(FIXTURES / "sample.jsonl"), *extra])
    assert info.value.code == 0
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def golden(name: str) -> list[dict]:
    return [orjson.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_dry_run_matches_golden(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys) == golden("expected.jsonl")


def test_dry_run_final_matches_golden(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--final") == golden("expected-final.jsonl")


def test_dry_run_semantics(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys)
    john = [r for r in lines if r.get("customer_key") == "1"]
    # create, group join, (updated_at-only change emits nothing), city change
    assert [r["version"] for r in john] == [1, 2, 3]
    assert john[-1]["contact"]["address"]["city"] == "Boston"
    # the TOAST placeholder kept the previous address line
    assert john[-1]["contact"]["address"]["addressLine"] == "123 Main Street"
    assert john[0]["contact"]["channels"][0] == {"type": "email", "value": "john.smith@example.com"}
    assert {"type": "sms", "value": "+12125550100"} in john[0]["contact"]["channels"]
    bob = [r for r in lines if r.get("customer_key") == "2"]
    # the replayed create is stale and skipped; join, leave (groups_removed), delete
    assert [r["op"] for r in bob] == ["upsert", "upsert", "upsert", "delete"]
    assert bob[2]["groups_removed"] == [1002]
    assert bob[3]["external_customer_id"] == "EM555" and bob[3]["contact"] is None
    # invalid email, language and time zone were dropped, the rest kept
    assert "channels" not in bob[0]["contact"]
    assert "languageCode" not in bob[0]["contact"] and "timeZone" not in bob[0]["contact"]
    errors = [r for r in lines if "error" in r]
    assert errors == [
        {
            "error": "value is not valid JSON",
            "stage": "decode",
            "topic": "crm.public.customers",
            "partition": 0,
            "offset": 7,
        }
    ]


def run_on(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> list[dict]:
    with pytest.raises(SystemExit) as info:
        main(["dry-run", "--config", str(CONFIG), "--input", str(path), *extra])
    assert info.value.code == 0
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def first_record(offset: int, lsn: int | None = None) -> bytes:
    doc = orjson.loads((FIXTURES / "sample.jsonl").read_bytes().splitlines()[0])
    if lsn is not None:  # a later change, at a source position JSON cannot hold when beyond 64 bits
        payload = orjson.loads(doc["payload"])
        payload["source"]["lsn"] = lsn
        payload["source"]["sequence"] = json.dumps(["100", str(lsn)])
        payload["after"]["city"] = "Boston"
        doc["payload"] = json.dumps(payload)
    doc["offset"] = offset
    return json.dumps(doc).encode("utf-8")


def test_a_line_that_is_not_utf8_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = b'{"topic":"t","partition":0,"offset":1,"key":"\xff\x00","payload":null}'
    data = first_record(0) + b"\n" + bad + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    lines = run_on(capsys, Path("-"))
    assert [line.get("op") for line in lines] == ["upsert", None]
    assert lines[1] == {"error": "input line 2 is not a kcat -J record", "stage": "input"}


def test_a_record_json_cannot_hold_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "records.jsonl"
    source.write_bytes(first_record(0) + b"\n" + first_record(1, lsn=2**64) + b"\n")
    lines = run_on(capsys, source)
    assert lines[0]["op"] == "upsert"
    assert lines[1:] == [
        {
            "error": "the decoded event cannot be written as JSON (Integer exceeds 64-bit range)",
            "stage": "output",
            "topic": "crm.public.customers",
            "partition": 0,
            "offset": 1,
            "customer_key": "1",
        }
    ]
    assert run_on(capsys, source, "--final")[0]["error"].startswith("the decoded event cannot be written")
