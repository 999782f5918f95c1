"""Request-body validation for the Yespo stand-in against the official OpenAPI schema.

The spec is loaded and its validators compiled once. Bulk bodies are checked in two parts for speed:
the envelope with the full OpenAPI validator (contacts' items left out), then each contact with a
compiled per-contact check (`compile_schema`) that is equivalent to the full validator on the
keywords the spec uses (a unit test compares the two). Path parameters are checked against their
operation's parameter schemas (int32/int64 ids). Messages name the JSON path, never the value.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker

__all__ = [
    "DEFAULT_SPEC_PATH",
    "MAX_BULK_CONTACTS",
    "MAX_EVENT_KEY",
    "Check",
    "RequestValidator",
    "compile_schema",
    "load_spec",
]

logger = logging.getLogger(__name__)

DEFAULT_SPEC_PATH: Final = Path(__file__).resolve().parents[2] / "schemas" / "yespo-openapi.json"
MAX_BULK_CONTACTS: Final = 3000
MAX_EVENT_KEY: Final = 100
"""`eventKeyForNewContacts`: "Max length: 100 symbols" (ContactsBulkUpdate, spec section 4)."""
# "All characters are allowed, except < ; \u2019 \\ / | " ` ' ^ ? ! , >" (ContactsBulkUpdate)
_EVENT_KEY_FORBIDDEN: Final = frozenset("<;\u2019\\/|\"`'^?!,>")
_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]+")
"""An integer path parameter as Java's Long.parseLong reads it (ASCII digits, optional sign)."""

Check = Callable[[Any, str], "str | None"]
"""(instance, JSON path) -> the first violation as a message, or None."""

_ANNOTATIONS: Final = frozenset(
    {"description", "example", "xml", "title", "default", "readOnly", "writeOnly", "deprecated"}
)
_INT_RANGES: Final = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def load_spec(path: Path | None = None) -> dict[str, Any]:
    """Read the OpenAPI document and repair its known defect.

    `ContactsBulkUpdate.contactFields` carries, besides the `items.enum`, an array-level `enum` of
    strings; applied literally it rejects every array, so it is removed (the item enum stays).
    """
    spec: dict[str, Any] = json.loads((path or DEFAULT_SPEC_PATH).read_text(encoding="utf-8"))
    fields = spec["components"]["schemas"]["ContactsBulkUpdate"]["properties"]["contactFields"]
    if fields.get("type") == "array":
        fields.pop("enum", None)
    return spec


def _type_ok(kind: str, value: Any) -> bool:
    if value is None:
        if kind not in ("string", "integer", "number", "boolean", "array", "object"):
            raise ValueError(f"unsupported type {kind!r}")
        return False
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unsupported type {kind!r}")


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


_KEYWORDS: Final = frozenset(
    {"$ref", "type", "nullable", "enum", "format", "properties", "required", "items"}
)


_Inner = Callable[[Any], "str | None"]
"""instance -> the violation as "<relative path>: <message>" (the path is built only on failure)."""


def _typed(node: Mapping[str, Any], build: Callable[[Mapping[str, Any]], _Inner]) -> _Inner:
    """One fused closure per schema node, specialised by `type` (the hot path of bulk validation)."""
    kind = node.get("type")
    if kind is not None:
        _type_ok(kind, None)  # rejects an unknown type at compile time
    nullable = node.get("nullable") is True
    allowed = list(node.get("enum", ()))
    allowed_set = frozenset(a for a in allowed if isinstance(a, str))
    exotic = [a for a in allowed if not isinstance(a, str)]
    has_enum = "enum" in node
    enum_text = f"must be one of {sorted(set(map(str, allowed)))}"
    low, high = _INT_RANGES.get(node.get("format", ""), (None, None))
    required = tuple(node.get("required", ()))
    props = {name: build(sub) for name, sub in node.get("properties", {}).items()}
    item = build(node["items"]) if "items" in node else None

    def check(v: Any) -> str | None:
        if v is None:
            if kind is not None and not nullable:
                return ": must not be null"
        elif kind is not None and not _type_ok(kind, v):
            return f": must be of type {kind}"
        if has_enum and not (
            (isinstance(v, str) and v in allowed_set) or any(_json_equal(v, a) for a in exotic)
        ):
            return f": {enum_text}"
        if (
            low is not None
            and high is not None
            and isinstance(v, int)
            and not isinstance(v, bool)
            and not low <= v <= high
        ):
            return f": out of {node['format']} range"
        if isinstance(v, dict):
            for name in required:
                if name not in v:
                    return f": {name!r} is a required property"
            for name, value in v.items():
                sub = props.get(name)
                if sub is not None and (err := sub(value)) is not None:
                    return f".{name}{err}"
        elif item is not None and isinstance(v, list):
            for i, value in enumerate(v):
                if (err := item(value)) is not None:
                    return f"[{i}]{err}"
        return None

    return _fast_path(kind, has_enum, allowed_set, low, high, required, props, item, check)


def _fast_path(
    kind: str | None,
    has_enum: bool,
    allowed: frozenset[str],
    low: int | None,
    high: int | None,
    required: tuple[str, ...],
    props: Mapping[str, _Inner],
    item: _Inner | None,
    check: _Inner,
) -> _Inner:
    """`check` behind a shortcut that accepts the common valid values of exactly the node's type.

    The shortcut only ever answers None (valid) where `check` would; anything else, including every
    violation, goes to `check`, which builds the message.
    """
    if kind == "string":

        def string(v: Any) -> str | None:
            if type(v) is str and (not has_enum or v in allowed):
                return None
            return check(v)

        return string
    if has_enum:
        return check
    if kind == "integer":

        def integer(v: Any) -> str | None:
            if type(v) is int and (low is None or high is None or low <= v <= high):
                return None
            return check(v)

        return integer
    if kind == "boolean":
        return lambda v: None if type(v) is bool else check(v)
    if kind == "object":

        def obj(v: Any) -> str | None:
            if type(v) is not dict:
                return check(v)
            for name in required:
                if name not in v:
                    return check(v)
            for name, value in v.items():
                sub = props.get(name)
                if sub is not None and sub(value) is not None:
                    return check(v)
            return None

        return obj
    if kind == "array":

        def array(v: Any) -> str | None:
            if type(v) is not list:
                return check(v)
            if item is not None:
                for value in v:
                    if item(value) is not None:
                        return check(v)
            return None

        return array
    return check


def compile_schema(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Check:
    """Compile an OpenAPI 3.0 schema into a fast check.

    Supports `$ref` (to `#/components/schemas/...`), `type` (with `nullable`), `enum`, `format`
    int32/int64, `properties`, `required` and `items`; annotations are ignored.

    Raises:
        ValueError: the schema uses a keyword this compiler does not implement.
    """
    return _with_path(_compile(schema, components))


def _compile(schema: Mapping[str, Any], components: Mapping[str, Any]) -> _Inner:
    cache: dict[str, _Inner] = {}

    def resolve(ref: str) -> _Inner:
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported $ref {ref!r}")
        name = ref[len(prefix) :]
        if name not in cache:
            slot: list[_Inner] = []
            cache[name] = lambda v: slot[0](v)  # a forward reference, for recursive schemas
            slot.append(build(components[name]))
            cache[name] = slot[0]
        return cache[name]

    def build(node: Mapping[str, Any]) -> _Inner:
        unknown = set(node) - _ANNOTATIONS - _KEYWORDS
        if unknown:
            raise ValueError(f"unsupported keywords {sorted(unknown)}")
        checks: list[_Inner] = []
        if "$ref" in node:
            checks.append(resolve(node["$ref"]))
        rest = {k: v for k, v in node.items() if k in _KEYWORDS and k != "$ref"}
        if rest:
            checks.append(_typed(rest, build))
        if len(checks) == 1:
            return checks[0]
        if not checks:
            return lambda v: None
        first, second = checks

        def check_both(v: Any) -> str | None:
            return first(v) or second(v)

        return check_both

    return build(schema)


def _with_path(inner: _Inner) -> Check:
    def check(instance: Any, path: str) -> str | None:
        err = inner(instance)
        return None if err is None else path + err

    return check


def _describe(error: ValidationError, root: str) -> str:
    path = root
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if error.validator == "required":
        return f"{path}: {error.message}"
    if error.validator == "type":
        return f"{path}: must be of type {error.validator_value}"
    if error.validator == "enum":
        return f"{path}: must be one of {sorted(set(map(str, error.validator_value)))}"
    return f"{path}: violates {error.validator!r}"


class RequestValidator:
    """Validators for the request bodies the stand-in accepts, compiled once.

    Args:
        spec: the OpenAPI document from `load_spec`.
    """

    BODY_SCHEMAS: Final = ("Contact", "ContactsBulkUpdate", "ContactUpdate", "ModifyContactsInGroup")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        components = spec["components"]
        schemas = components["schemas"]
        self._full = {name: self._validator(components, name) for name in self.BODY_SCHEMAS}
        envelope = copy.deepcopy(dict(schemas["ContactsBulkUpdate"]))
        envelope["properties"]["contacts"].pop("items")
        self._envelope = OAS30Validator(
            {**envelope, "components": components}, format_checker=oas30_format_checker
        )
        self._contact_inner = _compile({"$ref": "#/components/schemas/Contact"}, schemas)
        self._contact = _with_path(self._contact_inner)
        self.failed_contact_keys: frozenset[str] = frozenset(schemas["FailedContact"]["properties"])
        """What a `failedContacts` entry of a bulk answer holds (`FailedContact`): no externalCustomerId."""
        self._path_params = _path_parameters(spec, schemas)

    @staticmethod
    def _validator(components: Mapping[str, Any], name: str) -> Any:
        root = {"$ref": f"#/components/schemas/{name}", "components": components}
        return OAS30Validator(root, format_checker=oas30_format_checker)

    def full_errors(self, schema: str, body: Any) -> list[str]:
        """Every violation of `body` against component `schema`, by the full OpenAPI validator."""
        return [_describe(e, "body") for e in self._full[schema].iter_errors(body)]

    def validate(self, schema: str, body: Any) -> str | None:
        """The first violation of `body` against component `schema` (full validator), or None."""
        for error in self._full[schema].iter_errors(body):
            return _describe(error, "body")
        return None

    def contact_error(self, contact: Any, path: str = "contact") -> str | None:
        """The first schema violation of one `Contact` (compiled check), or None."""
        return self._contact(contact, path)

    def validate_bulk(self, body: Any) -> str | None:
        """A `ContactsBulkUpdate` body: envelope by the full validator, contacts by the compiled check.

        Also enforces the documented limits the schema states only in prose: 1 to 3000 contacts, and an
        `eventKeyForNewContacts` of at most 100 characters without the forbidden ones.
        """
        for error in self._envelope.iter_errors(body):
            return _describe(error, "body")
        contacts = body["contacts"]
        if not contacts:
            return "body.contacts: at least 1 contact per request"
        if len(contacts) > MAX_BULK_CONTACTS:
            return f"body.contacts: at most {MAX_BULK_CONTACTS} contacts per request"
        event_key = body.get("eventKeyForNewContacts")
        if event_key is not None and (problem := _event_key_problem(event_key)) is not None:
            return f"body.eventKeyForNewContacts: {problem}"
        check = self._contact_inner
        for i, contact in enumerate(contacts):
            if (err := check(contact)) is not None:
                return f"body.contacts[{i}]{err}"
        return None

    def path_error(self, method: str, template: str, values: Mapping[str, str]) -> str | None:
        """The first path parameter of operation `method template` breaking its schema, or None.

        `template` is the OpenAPI path (`/api/v1/contact/{id}`), `values` the raw path segments by
        parameter name. An integer parameter must be ASCII digits with an optional sign and lie in its
        `format`'s range (int32 segment ids, int64 contact ids); others are checked as strings.
        """
        for name, (kind, check) in self._path_params.get((method.lower(), template), {}).items():
            raw = values.get(name)
            if raw is None:
                continue
            value: Any = raw
            if kind == "integer":
                if not _INTEGER_TEXT.fullmatch(raw):
                    return f"path.{name}: must be of type integer"
                value = int(raw)
            if (error := check(value, f"path.{name}")) is not None:
                return error
        return None


_PathParams = dict[tuple[str, str], dict[str, tuple[str | None, Check]]]


def _path_parameters(spec: Mapping[str, Any], schemas: Mapping[str, Any]) -> _PathParams:
    """(method, path template) -> {path parameter name: (schema type, compiled check)}."""
    found: _PathParams = {}
    for template, item in spec.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method, operation in item.items():
            if method == "parameters" or not isinstance(operation, dict):
                continue
            params = {
                p["name"]: (p["schema"].get("type"), compile_schema(p["schema"], schemas))
                for p in [*shared, *operation.get("parameters", [])]
                if p.get("in") == "path" and "schema" in p
            }
            if params:
                found[(method, template)] = params
    return found


def _event_key_problem(key: str) -> str | None:
    if len(key) > MAX_EVENT_KEY:
        return f"longer than {MAX_EVENT_KEY} characters"
    if not _EVENT_KEY_FORBIDDEN.isdisjoint(key):
        return "holds a forbidden character (< ; \u2019 \\ / | \" ` ' ^ ? ! , >)"
    return None
