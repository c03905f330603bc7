"""The site-ID field shared by releases, delegations and manifests: a length byte, then ASCII."""

from __future__ import annotations

import pytest

from meshpacs.errors import FormatError
from meshpacs.keys.fields import (
    ASCII,
    PRINTABLE_ASCII,
    SITE_FIELD_MAX,
    SITE_ID,
    SiteCharset,
    site_field,
    take_site_field,
)

CHARSETS = (SITE_ID, ASCII, PRINTABLE_ASCII)


def test_a_field_is_its_length_byte_then_the_site() -> None:
    assert site_field("st-marys", "site", SITE_ID) == b"\x08st-marys"
    assert site_field("a", "site", ASCII) == b"\x01a"


@pytest.mark.parametrize("charset", CHARSETS, ids=lambda c: c.name)
@pytest.mark.parametrize("site", ["a", "st-marys", "x" * SITE_FIELD_MAX])
def test_round_trip_from_the_middle_of_a_buffer(site: str, charset: SiteCharset) -> None:
    field = site_field(site, "site", charset)
    data = b"head" + field + b"tail"
    assert take_site_field(data, 4, "site", charset) == (site, 4 + len(field))
    # Two fields back to back: each read starts where the last one ended.
    both = field + site_field("b", "site", charset)
    first, offset = take_site_field(both, 0, "site", charset)
    assert (first, take_site_field(both, offset, "site", charset)) == (site, ("b", len(both)))


@pytest.mark.parametrize("charset", CHARSETS, ids=lambda c: c.name)
def test_empty_and_too_long_are_refused_both_ways(charset: SiteCharset) -> None:
    for site in ("", "x" * (SITE_FIELD_MAX + 1)):
        with pytest.raises(FormatError, match="owner site has a bad length"):
            site_field(site, "owner site", charset)
    for data in (b"\x00", b"\x00rest", bytes([SITE_FIELD_MAX + 1]) + b"x" * 100, b"\xffx"):
        with pytest.raises(FormatError, match="owner site has a bad length"):
            take_site_field(data, 0, "owner site", charset)


@pytest.mark.parametrize("charset", CHARSETS, ids=lambda c: c.name)
def test_truncated_input_is_refused_before_slicing(charset: SiteCharset) -> None:
    field = site_field("st-marys", "site", charset)
    for cut in range(len(field)):
        with pytest.raises(FormatError, match="holder is cut short"):
            take_site_field(field[:cut], 0, "holder", charset)
    with pytest.raises(FormatError, match="holder is cut short"):
        take_site_field(field, len(field), "holder", charset)  # nothing left at the offset


def test_each_charset_refuses_what_its_format_refused() -> None:
    cases = {
        # site: (site-ID rule, any ASCII, printable ASCII)
        "St Marys": (False, True, True),
        "line\nbreak": (False, True, False),
        "del\x7f": (False, True, False),
        "café": (False, False, False),
        "st-marys-2": (True, True, True),
    }
    for site, allowed in cases.items():
        raw = site.encode()
        data = bytes([len(raw)]) + raw
        for charset, ok in zip(CHARSETS, allowed, strict=True):
            if ok:
                assert take_site_field(data, 0, "site", charset) == (site, len(data))
                assert site_field(site, "site", charset) == data
                continue
            with pytest.raises(FormatError, match=f"site is not {charset.name}"):
                take_site_field(data, 0, "site", charset)
            with pytest.raises(FormatError, match=f"site is not {charset.name}"):
                site_field(site, "site", charset)


def test_errors_name_the_field_never_the_bytes_sent() -> None:
    with pytest.raises(FormatError) as caught:
        take_site_field(b"\x0bSECRET-NAME", 0, "delegate", SITE_ID)
    assert "SECRET" not in str(caught.value) and "delegate" in str(caught.value)
