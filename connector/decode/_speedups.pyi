from typing import Any

from connector.models import ChangeEvent, RawRecord

LAYOUT: int

def decode_envelope(record: RawRecord, ctx: tuple[Any, ...], /) -> ChangeEvent | None: ...
