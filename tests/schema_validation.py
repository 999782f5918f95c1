"""Validators for the JSON Schemas in schemas/ (resolving their references to each other)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@cache
def registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        doc = json.loads(path.read_text())
        resources.append((doc.get("$id", path.name), Resource.from_contents(doc)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    doc = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc, registry=registry())
