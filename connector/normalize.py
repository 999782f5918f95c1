"""Pure normalizers and validators for contact values: email, phone, names, language, time zone, country.

Each takes a non-empty, already trimmed string and returns the normalized string, or an `Invalid` whose
`reason` is short and never contains the value (no PII). Costly checks are cached per distinct input.
"""

from __future__ import annotations

import decimal
import functools
import json
import logging
import math
import re
import unicodedata
import zoneinfo
from dataclasses import dataclass
from typing import Any, Final, Literal

import idna
import orjson
import phonenumbers

from connector.jsonvalues import UNCHANGED_MARKER
from connector.models import Unchanged

__all__ = [
    "ISO_COUNTRIES",
    "Invalid",
    "NameRules",
    "PhoneValidation",
    "field_text",
    "normalize_country",
    "normalize_email",
    "normalize_language_code",
    "normalize_name",
    "normalize_phone",
    "normalize_text",
    "normalize_time_zone",
    "scalar_text",
]

logger = logging.getLogger(__name__)

NameRules = Literal["yespo", "basic"]
PhoneValidation = Literal["valid", "possible"]

_CACHE_SIZE: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Invalid:
    """A value that failed validation; `reason` never contains the value itself."""

    reason: str


NOT_A_SCALAR: Final = Invalid("not a scalar value")
NOT_FINITE: Final = Invalid("not a finite number")
NOT_JSON: Final = Invalid("not a JSON value")


# --- raw JSON values -> text -------------------------------------------------------------------


def scalar_text(value: Any) -> str | Invalid | None:
    """A row value as trimmed text for a standard field; None for null, empty or unchanged.

    Strings are trimmed; integers and floats become their plain decimal text (`1e-07` is written
    `0.0000001`: Yespo's NUMBER and DECIMAL fields take digits); booleans `true`/`false`; NaN and
    infinities, objects and arrays are `Invalid`. The TOAST marker counts as "no value".
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or text == UNCHANGED_MARKER:
            return None
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Unchanged):
        return None
    return NOT_A_SCALAR


def _float_text(value: float) -> str | Invalid:
    text = repr(value)  # the shortest text that reads back as the same float
    if "e" in text or "n" in text:  # an exponent, "inf" or "nan"
        if not math.isfinite(value):
            return NOT_FINITE
        text = format(decimal.Decimal(text), "f")
    return text


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


def field_text(value: Any) -> str | Invalid | None:
    """A row value as a custom-field string; None for null, empty or unchanged.

    Like `scalar_text`, except that objects and arrays (JSON columns) become compact JSON text
    (`Invalid` if they hold NaN or an infinity, which JSON cannot carry). Dates, timestamps and
    decimals are already strings in the row (`connector.jsonvalues`).
    """
    text = scalar_text(value)
    if text is not NOT_A_SCALAR:
        return text
    try:
        if not _all_finite(value):
            return NOT_FINITE
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # beyond 64 bits or 255 levels: the standard library writes it
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # not JSON, or nested too deep to write
        return NOT_JSON


# --- email ---------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"  # local part, dot-atoms
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"  # domain labels
    r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"  # top-level domain: letters or punycode
)
INVALID_EMAIL: Final = Invalid("not a valid email address")


def normalize_email(value: str) -> str | Invalid:
    """Trim, lower-case and syntax-check an email address (ASCII dot-atom, no DNS lookup).

    An internationalized domain is written in its ASCII form (IDNA 2008 with UTS 46 mapping:
    `Bücher.de` -> `xn--bcher-kva.de`); the part before the `@` must be ASCII. Limits: 64 characters
    before the `@`, 254 in total.
    """
    email = value.strip().lower()
    if not email.isascii():
        email = _ascii_domain(email)
    if len(email) > 254 or _EMAIL.fullmatch(email) is None or email.index("@") > 64:
        return INVALID_EMAIL
    return email


def _ascii_domain(email: str) -> str:
    """`email` with a non-ASCII domain in IDNA form; unchanged (so refused) if that is impossible."""
    local, at, domain = email.rpartition("@")
    if not at or not local.isascii():
        return email
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return email


# --- phone ---------------------------------------------------------------------------------------

INVALID_PHONE: Final = Invalid("not a valid phone number")
NO_REGION: Final = Invalid("phone number without country code and no default_phone_region")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def normalize_phone(
    value: str, default_region: str | None = None, validation: PhoneValidation = "valid"
) -> str | Invalid:
    """A phone number in E.164 with its leading `+` (`+380501234567`).

    Args:
        value: the number as written (`+1 650-253-0000`, `(650) 253-0000`, `0044 20 ...`).
        default_region: ISO 3166 region for numbers written without a country code; without one,
            such numbers are invalid.
        validation: `valid` accepts only numbers in an allocated range of their region
            (`phonenumbers.is_valid_number`); `possible` only checks the length.
    """
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as exc:
        if (
            exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
            and not default_region
            and not value.lstrip().startswith(("+", "\uff0b"))
        ):
            return NO_REGION
        return INVALID_PHONE
    ok = (
        phonenumbers.is_valid_number(number)
        if validation == "valid"
        else phonenumbers.is_possible_number(number)
    )
    if not ok:
        return INVALID_PHONE
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- names ---------------------------------------------------------------------------------------

_NAME_MAX: Final = 40
NAME_TOO_LONG: Final = Invalid("longer than 40 characters")
NAME_NO_LETTERS: Final = Invalid("no letters (digits or specials only)")
NAME_TOO_MANY_DIGITS: Final = Invalid("more than 3 digits")
NAME_BAD_CHARACTERS: Final = Invalid("characters or punctuation not allowed in a name")
NAME_TOO_MANY_WORDS: Final = Invalid("too many words")
_INNER_SPECIALS: Final = frozenset(
    "-'\u2019"  # hyphen, apostrophe, right single quotation mark
    # the other apostrophes of Yespo's name rules (yespo-openapi.json, file-import `link` text)
    "\u02bc`\u00b4\u02b9\u02bb\u02bd\u02be\u02bf\u02c8\u02ca\u02ee\u0384\u055a\u1fbd\u1fbf"
    "\u201b\u2032\u2035\ua78b\ua78c\uff07"
)
"""Allowed only inside a word: the hyphen and the apostrophes (some are letters, e.g. U+02BC)."""


_ASCII_LETTER: Final = re.compile(r"[A-Za-z]")
_ASCII_WORD: Final = r"(?:[A-Za-z0-9]+(?:['`-][A-Za-z0-9]+)*|[A-Za-z0-9]{1,2}\.)"
_ASCII_NAME: Final = re.compile(rf"{_ASCII_WORD}(?: {_ASCII_WORD})*")


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "L"


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M"


def _is_plain(ch: str) -> bool:
    """A digit, letter or mark that is not one of the inner specials (may stand next to one)."""
    return (ch.isalnum() or _is_mark(ch)) and ch not in _INNER_SPECIALS


def _word_ok(word: str) -> bool:
    last = len(word) - 1
    for i, ch in enumerate(word):
        if ch in _INNER_SPECIALS:  # before the letter test: some apostrophes are letters (Lm)
            if 0 < i < last and _is_plain(word[i - 1]) and _is_plain(word[i + 1]):
                continue
            return False
        if ch.isdigit() or _is_letter(ch):
            continue
        if _is_mark(ch) and i > 0 and (_is_letter(word[i - 1]) or _is_mark(word[i - 1])):
            continue  # a combining mark belongs to the letter before it (Hindi vowel signs, ...)
        if ch == "." and i == last and 1 < len(word) <= 3:
            continue
        return False
    return True


@functools.lru_cache(maxsize=_CACHE_SIZE)
def normalize_name(value: str, *, first_name: bool, rules: NameRules = "yespo") -> str | Invalid:
    """A first or last name within Yespo's limits, with whitespace trimmed and collapsed (NFC).

    Over-long names are invalid, never truncated. `basic` rules: at most 40 characters and at least one
    letter. `yespo` rules add the rest of the API's name rules: at most 3 digits; apostrophes and hyphens
    only inside a word; a dot only ending a word of at most 3 characters ("Jr."); no other punctuation;
    a first name has at most 3 words longer than 3 characters and 3 words of 3 characters or fewer.
    """
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if len(name) > _NAME_MAX:
        return NAME_TOO_LONG
    ascii_only = name.isascii()
    if not (_ASCII_LETTER.search(name) if ascii_only else any(_is_letter(ch) for ch in name)):
        return NAME_NO_LETTERS
    if rules == "basic":
        return name
    if sum(map(str.isdigit, name)) > 3:
        return NAME_TOO_MANY_DIGITS
    words = name.split(" ")
    # the regex is the ASCII-only equivalent of `_word_ok` for every word, several times faster
    if not (_ASCII_NAME.fullmatch(name) if ascii_only else all(_word_ok(w) for w in words)):
        return NAME_BAD_CHARACTERS
    if first_name:
        long_words = sum(len(w) > 3 for w in words)
        if long_words > 3 or len(words) - long_words > 3:
            return NAME_TOO_MANY_WORDS
    return name


# --- language, time zone, country ----------------------------------------------------------------

# BCP 47 (RFC 5646) langtag syntax, matched on the lower-cased tag. The primary language is an
# ISO 639 code of 2-3 letters (the 4-8 letter registered form would accept words like "english").
_BCP47 = re.compile(
    r"(?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3})"
    r"(?:-(?P<script>[a-z]{4}))?"
    r"(?:-(?P<region>[a-z]{2}|[0-9]{3}))?"
    r"(?P<rest>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"  # variants
    r"(?:-[a-wyz0-9](?:-[a-z0-9]{2,8})+)*"  # extensions
    r"(?:-x(?:-[a-z0-9]{1,8})+)?)"  # private use
)
INVALID_LANGUAGE: Final = Invalid("not a BCP 47 language tag")


@functools.lru_cache(maxsize=4096)
def normalize_language_code(value: str) -> str | Invalid:
    """A BCP 47 tag in canonical case: `pt-BR`, `es-419`, `zh-Hant-TW` (`_` is accepted for `-`)."""
    match = _BCP47.fullmatch(value.strip().lower().replace("_", "-"))
    if match is None:
        return INVALID_LANGUAGE
    parts = [match["language"]]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    return "-".join(parts) + match["rest"]


_NOT_ZONES: Final = frozenset({"localtime", "factory", "posixrules"})
"""Files of a tzdata directory that are no zone name: the machine's own zone and placeholders."""


@functools.cache
def _time_zones() -> dict[str, str]:
    zones = {name.lower(): name for name in zoneinfo.available_timezones()}
    for name in _NOT_ZONES:
        zones.pop(name, None)
    return zones


INVALID_TIME_ZONE: Final = Invalid("not an IANA time zone")


def normalize_time_zone(value: str) -> str | Invalid:
    """An IANA time-zone name (`Europe/Kyiv`), matched case-insensitively, in its canonical spelling.

    `localtime` (the machine's own zone) and the `Factory` placeholder are not zone names. The names
    come from the machine's tz database and the `tzdata` package (a dependency: slim images have no
    system database, and every zone would be refused).
    """
    name = _time_zones().get(value.strip().lower())
    return INVALID_TIME_ZONE if name is None else name


ISO_COUNTRIES: Final = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT
    BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH
    ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT
    HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS
    LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI
    NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG
    SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG
    UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 - a table is easier to check than 249 quoted strings
)
"""The 249 officially assigned ISO 3166-1 alpha-2 codes."""

INVALID_COUNTRY: Final = Invalid("not an ISO 3166-1 alpha-2 country code")


def normalize_country(value: str) -> str | Invalid:
    """An ISO 3166-1 alpha-2 code, upper-cased (`us` -> `US`); names and alpha-3 codes are invalid."""
    code = value.strip().upper()
    return code if code in ISO_COUNTRIES else INVALID_COUNTRY


def normalize_text(value: str) -> str | Invalid:
    """Any other value (web push subscription, address line): the trimmed string, which is non-empty."""
    text = value.strip()
    return text if text else Invalid("empty")
