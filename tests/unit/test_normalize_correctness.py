"""Correctness review of the normalizers: values Yespo would refuse or misread."""

from __future__ import annotations

import pytest

from connector.normalize import Invalid, normalize_email, normalize_name, normalize_time_zone


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
