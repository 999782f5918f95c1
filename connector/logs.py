"""Logging set-up: one `configure()` used by the CLI; JSON lines or text, with key=value extras.

Call sites log a fixed message plus context as extras (`logger.info("committed", extra={"topic": t,
"partition": p, "offset": o})`). A redaction filter masks anything that looks like an email address,
a phone number or a registered secret: a safety net only, the code itself never logs PII.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from connector.config import Settings

__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "RepeatFilter",
    "TextFormatter",
    "clear_secrets",
    "configure",
    "configure_from",
    "redact",
    "register_secret",
    "reset",
]

logger = logging.getLogger(__name__)

EMAIL_MASK = "<redacted-email>"
PHONE_MASK = "<redacted-phone>"
SECRET_MASK = "<redacted-secret>"  # noqa: S105 - the mask, not a secret
UNFORMATTABLE = "<unformattable log message>"
"""The message of a record whose `msg % args` fails (its arguments do not fit its format)."""
_MIN_SECRET_LENGTH = 4

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Phone heuristics (digits counted by `_phone_or_keep`):
#   international: "+" then 8-15 digits, grouped by spaces, dots, dashes or "(..)";
#   national: a trunk "0" then 9-12 digits in all, plain or grouped by one separator kind, or "(0xx) ...".
# Offsets, epoch timestamps and ISO dates (no leading "+"/"0", or mixed separators) are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,4}(?:[ .\-]?\(?\d{1,5}\)?){1,6}"
    r"|\(0\d{1,4}\)[ .\-]?\d{2,4}(?:[ .\-]?\d{2,4}){1,3}"
    r"|0\d{1,4}(?:(?P<sep>[ .\-])\d{2,4}(?:(?P=sep)\d{2,4}){1,3})"
    r"|0\d{8,11}"
    r")(?![\w])"
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a log line (API keys, passwords).

    Values shorter than 4 characters are ignored: masking them would garble unrelated text.
    """
    global _secret_pattern
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_pattern
    with _secrets_lock:
        _secrets.clear()
        _secret_pattern = None


def _phone_or_keep(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    low, high = (8, 15) if text.startswith("+") else (9, 12)
    if low <= digits <= high:
        return PHONE_MASK
    return text


def redact(text: str) -> str:
    """`text` with registered secrets, email addresses and phone numbers masked."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(SECRET_MASK, text)
    if "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(_phone_or_keep, text)


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    return redact(str(value))


def _message(record: logging.LogRecord) -> str:
    """`record.getMessage()`; a fixed text when `msg % args` fails.

    Filters run outside logging's own error handling: an exception here would reach the caller of
    the log call (a library's `log.warning("%d", "x")`), where the handler would only report it.
    """
    try:
        return record.getMessage()
    except Exception:  # anything msg % args or an argument's __str__ raises; the record is kept
        return UNFORMATTABLE


class RedactionFilter(logging.Filter):
    """Masks secrets, emails and phones in a record's message, extras, exception and stack text.

    Attach it to a handler (handler filters see records from every logger). It renders the message
    (`msg % args`) once, so formatters downstream see the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops a record, and never raises.

        A message that cannot be rendered (its arguments do not fit its format) becomes `UNFORMATTABLE`.
        """
        record.msg = redact(_message(record))
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets one record per distinct message through every `window_s`; counts the ones it holds back.

    For librdkafka's own lines: while a broker is down each client logs its failed connect attempts
    several times a second. Messages that differ only in numbers (durations, ports, offsets) count as
    the same. The first record after the window carries `repeated=N`, the number held back since the
    last one let through. Attach it to the logger (not a handler).
    """

    def __init__(
        self, window_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 512
    ) -> None:
        super().__init__()
        self._window = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[tuple[int, str], list[float]] = OrderedDict()  # [last let through, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat inside the window; True (with `repeated` if any were held) otherwise."""
        key = (record.levelno, _DIGITS.sub("#", _message(record)))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self._window:
                entry[1] += 1
                return False
            if entry is not None and entry[1]:
                record.repeated = int(entry[1])
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extras, then exc/stack if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single JSON line."""
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-29T14:00:00.000Z INFO logger: message key=value key2="two words"`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as text, extras as key=value (values with spaces quoted)."""
        parts = [_timestamp(record), record.levelname, f"{record.name}:", record.getMessage()]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _ConfiguredHandler(logging.StreamHandler[IO[str]]):
    """The handler `configure` installs (a second call replaces it).

    Without an explicit stream it writes to whatever `sys.stderr` is at the time of each record, so
    output redirection (pytest's capture, contextlib.redirect_stderr) keeps working.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        logging.Handler.__init__(self)
        self._fixed = stream

    @property
    def stream(self) -> IO[str]:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._fixed = value


def reset() -> None:
    """Remove the handler `configure` installed (tests; the process normally keeps it)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ConfiguredHandler):
            root.removeHandler(handler)
            handler.close()


def configure(
    log_format: Literal["json", "text"] = "json",
    level: str | int = "INFO",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route all logging to `stream` (stderr) as JSON lines or text, with redaction.

    Idempotent: calling again replaces the handler a previous call installed and leaves other
    handlers (e.g. pytest's capture) alone.

    Args:
        log_format: `json` (default, `observability.log_format`) or `text`.
        level: Root level name or number (`observability.log_level`).
        stream: Where to write; stderr by default, so command output on stdout stays clean.

    Returns:
        The installed handler.
    """
    if log_format not in ("json", "text"):
        raise ValueError(f"unknown log format {log_format!r}")
    reset()
    root = logging.getLogger()
    handler = _ConfiguredHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RedactionFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx/httpcore log every request URL at INFO; delete URLs carry externalCustomerIds
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler


def configure_from(settings: Settings) -> logging.Handler:
    """`configure` with the settings' log format and level, and every secret they hold registered.

    The secrets: the Yespo API key and the secret `kafka.extra` values (`sasl.password`, ...).
    """
    handler = configure(settings.observability.log_format, settings.observability.log_level)
    if settings.yespo.api_key is not None:
        register_secret(settings.yespo.api_key.get_secret_value())
    for secret in settings.kafka.secret_values:
        register_secret(secret)
    return handler
