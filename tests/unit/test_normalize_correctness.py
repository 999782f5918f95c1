"""Correctness review of the normalizers: values Yespo would refuse or misread."""

from __future__ import annotations

import pytest

from connector.normalize import Invalid, normalize_time_zone


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
