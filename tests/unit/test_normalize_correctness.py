"""Correctness review of the normalizers: values Yespo would refuse or misread."""

from __future__ import annotations

import unicodedata
import zoneinfo

import pytest

from connector.normalize import Invalid, _time_zones, normalize_email, normalize_name, normalize_time_zone


@pytest.mark.parametrize("name", ["localtime", "LOCALTIME", "Factory", "posixrules", "posix/Europe/Kyiv"])
def test_tzdata_files_that_are_not_zone_names_are_refused(name: str) -> None:
    # "localtime" is the machine's own zone (a symlink), "Factory" a placeholder ("-00"): Yespo's
    # zone ids do not include them
    assert isinstance(normalize_time_zone(name), Invalid)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("europe/kyiv", "Europe/Kyiv"),
        ("UTC", "UTC"),
        ("etc/gmt+5", "Etc/GMT+5"),
        ("America/New_York", "America/New_York"),
    ],
)
def test_zone_names_keep_their_canonical_spelling(name: str, expected: str) -> None:
    assert normalize_time_zone(name) == expected


# --- e-mail: an internationalized domain is a valid address -----------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("jörg@Bücher.DE", None),  # a non-ASCII local part stays refused (most mail systems do)
        ("joerg@Bücher.DE", "joerg@xn--bcher-kva.de"),
        ("ivan@пример.рф", "ivan@xn--e1afmkfd.xn--p1ai"),
        ("a+tag@straße.de", "a+tag@xn--strae-oqa.de"),  # IDNA 2008: not "strasse.de", another domain
        (" Anna@Münster.example.com ", "anna@xn--mnster-3ya.example.com"),
    ],
)
def test_an_idn_domain_is_written_in_its_ascii_form(value: str, expected: str | None) -> None:
    # the address was refused as "not a valid email address": the contact lost its email channel
    result = normalize_email(value)
    if expected is None:
        assert isinstance(result, Invalid)
    else:
        assert result == expected


@pytest.mark.parametrize("value", ["x@bü..de", "x@-bü.de", "x@bü\u200d.de", "x@" + "ü" * 70 + ".de"])
def test_an_invalid_idn_domain_is_refused(value: str) -> None:
    assert isinstance(normalize_email(value), Invalid)


# --- names: the apostrophes of Yespo's name rules (yespo-openapi.json, file-import `link` text) ------

# Listed by Yespo as apostrophes allowed only inside a word, besides "'" (U+0027).
YESPO_APOSTROPHES = (
    "\u02bc`\u00b4\u02b9\u02bb\u02bd\u02be\u02bf\u02c8\u02ca\u02ee\u0384\u055a\u1fbd\u1fbf"
    "\u201b\u2032\u2035\ua78b\ua78c\uff07"
)


@pytest.mark.parametrize("apostrophe", list(YESPO_APOSTROPHES))
def test_every_yespo_apostrophe_is_accepted_inside_a_word(apostrophe: str) -> None:
    # "D\u00b4Angelo", "O`Neil": refused as bad punctuation, so the name was dropped and then cleared in Yespo
    for first in (True, False):
        assert normalize_name(f"D{apostrophe}Angelo", first_name=first) == f"D{apostrophe}Angelo"
        assert normalize_name(f"Anna D{apostrophe}Angelo", first_name=first) == f"Anna D{apostrophe}Angelo"


@pytest.mark.parametrize("apostrophe", list(YESPO_APOSTROPHES))
@pytest.mark.parametrize("template", ["{a}Angelo", "Angelo{a}", "Anna {a} Angelo", "{a}"])
def test_a_yespo_apostrophe_at_a_word_edge_is_refused(apostrophe: str, template: str) -> None:
    # Yespo allows them only inside words: a name with one there would fail the whole contact
    assert isinstance(normalize_name(template.format(a=apostrophe), first_name=True), Invalid)


# --- names: combining marks are part of a letter, not letters themselves -------------------------------


@pytest.mark.parametrize("name", ["\u0301", "\u0301\u0301", "\u093f 12", "- \u0301"])
def test_a_name_of_combining_marks_only_has_no_letters(name: str) -> None:
    # a mark counted as a letter: a name with no letter at all went to Yespo, which refuses it
    assert normalize_name(name, first_name=True) == Invalid("no letters (digits or specials only)")


@pytest.mark.parametrize("name", ["\u0301Anna", "Anna \u0301Lee", "12\u0301"])
def test_a_combining_mark_that_starts_a_word_is_refused(name: str) -> None:
    assert isinstance(normalize_name(name, first_name=False), Invalid)


@pytest.mark.parametrize(
    "name",
    [
        "\u0905\u092e\u093f\u0924",
        "\u0905\u092e\u093f-\u0905\u092e\u093f\u0924",
        "Zoe\u0308 Lee",
        "\u05e9\u05b8\u05dc\u05d5\u05b9\u05dd",
    ],
)
def test_marks_after_a_letter_stay_allowed(name: str) -> None:
    # Hindi vowel signs, a decomposed umlaut that NFC cannot compose away, Hebrew points
    assert normalize_name(name, first_name=True) == unicodedata.normalize("NFC", name)


# --- time zones do not depend on the machine's tzdata ------------------------------------------------


def test_time_zones_are_known_without_a_system_tz_database() -> None:
    # python:3.11-slim has no /usr/share/zoneinfo: every timeZone was dropped as invalid, and so
    # cleared in Yespo (timeZone is in contactFields); the tzdata package is the fallback
    saved = zoneinfo.TZPATH
    try:
        zoneinfo.reset_tzpath(to=[])
        _time_zones.cache_clear()
        assert normalize_time_zone("europe/kyiv") == "Europe/Kyiv"
        assert normalize_time_zone("America/New_York") == "America/New_York"
    finally:
        zoneinfo.reset_tzpath(to=saved)
        _time_zones.cache_clear()
