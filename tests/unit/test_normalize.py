"""Normalizers and validators: valid and invalid inputs for each rule (table-driven)."""

from __future__ import annotations

import zoneinfo

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connector.jsonvalues import UNCHANGED_MARKER
from connector.models import UNCHANGED
from connector.normalize import (
    _ASCII_NAME,
    ISO_COUNTRIES,
    Invalid,
    _word_ok,
    field_text,
    normalize_country,
    normalize_email,
    normalize_language_code,
    normalize_name,
    normalize_phone,
    normalize_text,
    normalize_time_zone,
    scalar_text,
)


def assert_invalid(result: object, value: str) -> None:
    assert isinstance(result, Invalid)
    assert result.reason
    # the reason never repeats the value (no PII in DLQ/audit records)
    assert value.strip().lower() not in result.reason.lower() or len(value.strip()) < 3


# --- raw values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (UNCHANGED_MARKER, None),
        (UNCHANGED, None),
        ("  Gold ", "Gold"),
        ("1990-01-01", "1990-01-01"),
        ("2024-03-01T10:00:00.5Z", "2024-03-01T10:00:00.5Z"),
        ("12.50", "12.50"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-17, "-17"),
        (2.5, "2.5"),
    ],
)
def test_scalar_text(raw: object, expected: str | None) -> None:
    assert scalar_text(raw) == expected
    assert field_text(raw) == expected


@pytest.mark.parametrize("raw", [{"a": 1}, [1, 2]])
def test_scalar_text_rejects_objects_and_field_text_renders_them_as_json(raw: object) -> None:
    assert isinstance(scalar_text(raw), Invalid)
    text = field_text(raw)
    assert text in ('{"a":1}', "[1,2]")


# --- email -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john.smith@example.com", "john.smith@example.com"),
        ("  John.Smith@Example.COM ", "john.smith@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
        ("o'neil@example.ie", "o'neil@example.ie"),
        ("x@xn--80ak6aa92e.com", "x@xn--80ak6aa92e.com"),
        ("user@example.xn--p1ai", "user@example.xn--p1ai"),
        ("first_last-1@my-domain.io", "first_last-1@my-domain.io"),
    ],
)
def test_email_valid(value: str, expected: str) -> None:
    assert normalize_email(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "plainaddress",
        "@example.com",
        "john@",
        "john@example",
        "john@@example.com",
        "john smith@example.com",
        ".john@example.com",
        "john.@example.com",
        "jo..hn@example.com",
        "john@-example.com",
        "john@example-.com",
        "john@example..com",
        "john@example.c",
        "john@example.123",
        "jöhn@example.com",
        "a" * 65 + "@example.com",
        "john@" + "a" * 250 + ".com",
        "john@exa_mple.com",
        "user@xn--p1ai",
    ],
)
def test_email_invalid(value: str) -> None:
    assert_invalid(normalize_email(value), value)


# --- phone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+380501234567", None, "+380501234567"),
        ("+1 650-253-0000", None, "+16502530000"),
        ("+44 20 7946 0958", "US", "+442079460958"),  # an explicit country code wins
        ("(650) 253-0000", "US", "+16502530000"),
        ("050 123 4567", "UA", "+380501234567"),
        ("0044 20 7946 0958", "UA", "+442079460958"),  # international prefix of the region
        ("+1 650 253 0000 ext. 12", None, "+16502530000"),
    ],
)
def test_phone_valid(value: str, region: str | None, expected: str) -> None:
    assert normalize_phone(value, region) == expected


@pytest.mark.parametrize(
    ("value", "region"),
    [
        ("+1234567890", None),  # the example's placeholder: not a real number
        ("12", "US"),
        ("abc", "US"),
        ("+999 123", None),
        ("(650) 253-0000", "UA"),  # not valid as a Ukrainian number
        ("555-0100", "US"),  # too short for the region
    ],
)
def test_phone_invalid(value: str, region: str | None) -> None:
    assert_invalid(normalize_phone(value, region), value)


def test_phone_without_country_code_needs_a_default_region() -> None:
    result = normalize_phone("(650) 253-0000", None)
    assert isinstance(result, Invalid)
    assert "default_phone_region" in result.reason
    plus = normalize_phone("+999 123", None)
    assert isinstance(plus, Invalid)
    assert "default_phone_region" not in plus.reason


def test_phone_possible_is_looser_than_valid() -> None:
    # +1 200 ... : a possible length, but 200 is not an assigned North American area code
    assert isinstance(normalize_phone("+1 200 555 0123", None, "valid"), Invalid)
    assert normalize_phone("+1 200 555 0123", None, "possible") == "+12005550123"
    assert isinstance(normalize_phone("+1 555", None, "possible"), Invalid)


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "first", "expected"),
    [
        ("John", True, "John"),
        ("  John   Paul  ", True, "John Paul"),
        ("Jean-Luc", True, "Jean-Luc"),
        ("O'Neil", False, "O'Neil"),
        ("D\u2019Angelo", True, "D\u2019Angelo"),
        ("Martin Luther King Jr.", False, "Martin Luther King Jr."),
        ("Анна-Марія", True, "Анна-Марія"),
        ("李小龍", True, "李小龍"),
        ("Louis 14", True, "Louis 14"),
        ("Jose\u0301", True, "José"),  # NFC
        ("A" * 40, False, "A" * 40),
        ("Anna Mary Lou Kim Ann", True, "Anna Mary Lou Kim Ann"),  # 2 long, 3 short
        ("Anna Maria Luisa Kim Jo Al", True, "Anna Maria Luisa Kim Jo Al"),  # 3 long, 3 short
        ("Anna Maria Luisa Carla Kim", False, "Anna Maria Luisa Carla Kim"),  # last names: any count
    ],
)
def test_name_valid(value: str, first: bool, expected: str) -> None:
    assert normalize_name(value, first_name=first) == expected


@pytest.mark.parametrize(
    ("value", "first", "reason_part"),
    [
        ("A" * 41, True, "40"),
        ("Anna " * 8 + "X", False, "40"),
        ("12345", True, "letters"),
        ("---", False, "letters"),
        ("1.2", True, "letters"),
        ("John1234", True, "digits"),
        ("-John", True, "characters"),
        ("John-", True, "characters"),
        ("Jo--hn", True, "characters"),
        ("'John", False, "characters"),
        ("John.", True, "characters"),  # a dot only ends a word of at most 3 characters
        ("J.R.", True, "characters"),
        ("John, Paul", True, "characters"),
        ("John (Jack)", True, "characters"),
        ("john@example.com", True, "characters"),
        ("Anna Maria Luisa Carla", True, "words"),  # 4 long words in a first name
        ("Al Bo Cy Di", True, "words"),  # 4 short words in a first name
    ],
)
def test_name_invalid(value: str, first: bool, reason_part: str) -> None:
    result = normalize_name(value, first_name=first)
    assert_invalid(result, value)
    assert isinstance(result, Invalid)
    assert reason_part in result.reason


@pytest.mark.parametrize(
    ("value", "valid"),
    [("John, Paul", True), ("John1234", True), ("A" * 41, False), ("1234", False), ("Jr.Jr.", True)],
)
def test_name_basic_rules_only_check_length_and_letters(value: str, valid: bool) -> None:
    result = normalize_name(value, first_name=True, rules="basic")
    assert (not isinstance(result, Invalid)) is valid


# --- language, time zone, country ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en", "en"),
        ("EN", "en"),
        ("pt-BR", "pt-BR"),
        ("pt-br", "pt-BR"),
        ("pt_BR", "pt-BR"),
        ("es-419", "es-419"),
        ("zh-Hant-TW", "zh-Hant-TW"),
        ("ZH-HANT-TW", "zh-Hant-TW"),
        ("sr-latn", "sr-Latn"),
        ("de-CH-1996", "de-CH-1996"),
        ("en-US-u-ca-gregory", "en-US-u-ca-gregory"),
        ("en-US-x-twain", "en-US-x-twain"),
        ("zh-yue-HK", "zh-yue-HK"),
        ("uk", "uk"),
    ],
)
def test_language_code_valid(value: str, expected: str) -> None:
    assert normalize_language_code(value) == expected


@pytest.mark.parametrize(
    "value", ["english", "e", "en-", "en--US", "123", "x-foo", "en-US-", "en US", "en-USA1", "\u0440\u0443"]
)
def test_language_code_invalid(value: str) -> None:
    assert isinstance(normalize_language_code(value), Invalid)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("America/New_York", "America/New_York"),
        ("europe/london", "Europe/London"),
        (" Europe/Kyiv ", "Europe/Kyiv"),
        ("UTC", "UTC"),
        ("Asia/Kolkata", "Asia/Kolkata"),
    ],
)
def test_time_zone_valid(value: str, expected: str) -> None:
    assert normalize_time_zone(value) == expected
    assert expected in zoneinfo.available_timezones()


@pytest.mark.parametrize("value", ["EST5", "Mars/Olympus", "GMT+3", "+02:00", "New York", "America"])
def test_time_zone_invalid(value: str) -> None:
    assert_invalid(normalize_time_zone(value), value)


@pytest.mark.parametrize(("value", "expected"), [("US", "US"), ("us", "US"), (" ua ", "UA"), ("AQ", "AQ")])
def test_country_valid(value: str, expected: str) -> None:
    assert normalize_country(value) == expected


@pytest.mark.parametrize("value", ["USA", "UK", "XK", "Ukraine", "U", "ZZ", "840"])
def test_country_invalid(value: str) -> None:
    assert_invalid(normalize_country(value), value)


def test_iso_country_list_is_complete() -> None:
    assert len(ISO_COUNTRIES) == 249
    # every region the phone library knows is an ISO code, except its few non-ISO extras
    assert set(phonenumbers.SUPPORTED_REGIONS) - ISO_COUNTRIES == {"AC", "TA", "XK"}


@pytest.mark.parametrize(("value", "valid"), [("subscription-id-12345", True), (" x ", True), ("  ", False)])
def test_text(value: str, valid: bool) -> None:
    result = normalize_text(value)
    assert (result == value.strip()) if valid else isinstance(result, Invalid)


NAME_WORDS = st.one_of(
    st.builds(
        lambda a, sep, b, end: a + sep + b + end,
        st.text("aZ9", max_size=4),
        st.sampled_from(["", "'", "-", "\u2019", "`", ".", "''", "-'"]),
        st.text("aZ9", max_size=3),
        st.sampled_from(["", ".", "-", "'"]),
    ).filter(bool),
    st.text(alphabet="aZ9'-.\u2019`", min_size=1, max_size=6),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(NAME_WORDS, min_size=1, max_size=4))
@example(["aaa."])
@example(["ab.", "a."])
@example(["a'.", "a-b."])
@example(["a'b-c", "9"])
def test_ascii_name_fast_path_agrees_with_the_general_rule(words: list[str]) -> None:
    name = " ".join(words)
    slow = all(_word_ok(w) for w in name.split(" "))
    if name.isascii():
        assert (_ASCII_NAME.fullmatch(name) is not None) == slow
    result = normalize_name(name, first_name=False)
    if slow and len(name) <= 40 and any(c.isalpha() for c in name) and sum(c.isdigit() for c in name) <= 3:
        assert result == name
    else:
        assert isinstance(result, Invalid)
