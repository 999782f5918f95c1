"""Correctness review of the normalizers: values Yespo would refuse or misread."""

from __future__ import annotations

import pytest

from connector.normalize import Invalid, normalize_email, normalize_time_zone


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
