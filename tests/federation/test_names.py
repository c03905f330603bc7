"""One rule for site IDs, shared by the node config and the certificates."""

from __future__ import annotations

import pytest

from meshpacs.errors import ConfigError
from meshpacs.federation import names
from meshpacs.node import config


@pytest.mark.parametrize("good", ["st-marys", "a", "0", "x" * 64, "north-2"])
def test_valid_site_ids_pass(good: str) -> None:
    assert names.validate_site_id(good) == good
    assert names.site_id_problem(good) is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("", "empty"),
        ("x" * 65, "at most 64"),
        ("St-Marys", "lower-case"),
        ("st marys", "lower-case"),
        ("st_marys", "lower-case"),
        ("st/../x", "lower-case"),
        ("é", "lower-case"),
    ],
)
def test_invalid_site_ids_are_refused_with_the_reason(bad: str, words: str) -> None:
    with pytest.raises(ConfigError, match="site ID") as caught:
        names.validate_site_id(bad)
    assert words in str(caught.value)


def test_the_node_config_uses_the_same_rule() -> None:
    assert config.validate_site_id is names.validate_site_id
    assert config.SITE_ID_MAX_LENGTH == names.SITE_ID_MAX_LENGTH == 64


def test_site_uri_round_trips_and_refuses_other_uris() -> None:
    uri = names.site_uri("st-marys")
    assert uri == "urn:meshpacs:site:st-marys"
    assert names.site_id_from_uri(uri) == "st-marys"
    assert names.site_id_from_uri("urn:meshpacs:site:") is None
    assert names.site_id_from_uri("urn:meshpacs:site:St-Marys") is None
    assert names.site_id_from_uri("https://st-marys.example") is None
    with pytest.raises(ConfigError):
        names.site_uri("Not Valid")


@pytest.mark.parametrize("good", ["Test Mesh", "north-region.pacs_2", "M"])
def test_valid_federation_names_pass(good: str) -> None:
    assert names.validate_federation_name(good) == good


@pytest.mark.parametrize("bad", ["", " leading", "x" * 65, "tab\there", "new\nline", "semi;colon"])
def test_invalid_federation_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="federation name"):
        names.validate_federation_name(bad)
