from collections.abc import Callable
from typing import Any

from connector.models import ChangeEvent, RawRecord

LAYOUT: int

def decode_envelope(record: RawRecord, ctx: tuple[Any, ...], /) -> ChangeEvent | None: ...
def json_row(row: dict[str, Any], json_value: Callable[[Any], Any], /) -> dict[str, Any]: ...
