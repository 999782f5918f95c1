"""The decode step: Debezium records -> `ChangeEvent`, `Ignored` or `DecodeFailure`.

JSON with or without schemas and Confluent Avro; envelopes and unwrapped rows. See `decode_event`.
"""

from __future__ import annotations

import logging

from connector.decode.avro import SchemaLookup
from connector.decode.decoder import decode_event
from connector.decode.options import DecodeOptions, Ignored, IgnoredKind
from connector.errors import UnknownSchemaError

__all__ = ["DecodeOptions", "Ignored", "IgnoredKind", "SchemaLookup", "UnknownSchemaError", "decode_event"]

logger = logging.getLogger(__name__)
