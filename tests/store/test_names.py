"""Site IDs from peers: the federation's one rule, refused with the store's FormatError."""

from __future__ import annotations

import pytest

from meshpacs import store
from meshpacs.errors import ConfigError, FormatError
from meshpacs.federation import names as federation_names
from meshpacs.store import names

# Valid and invalid by the federation's rule; the store must agree on every one.
SAMPLES = ["st-marys", "a", "0", "x" * 64, "north-2", "", "x" * 65, "St-Marys", "st marys"]
SAMPLES += ["st_marys", "st/../x", "é", "a\x00", "st-marys\n"]


@pytest.mark.parametrize("value", SAMPLES, ids=repr)
def test_the_store_follows_the_federation_rule(value: str) -> None:
    problem = federation_names.site_id_problem(value)
    if problem is None:
        assert names.validate_site_id(value) == value
        return
    with pytest.raises(FormatError, match="site ID") as caught:
        names.validate_site_id(value)
    assert not isinstance(caught.value, ConfigError)  # a peer's mistake, not the config's
    assert str(caught.value) == f"site ID {problem}"


def test_refusals_never_quote_the_value() -> None:
    for value in ("Secret-Name", "y" * 500, "st/../x"):
        with pytest.raises(FormatError) as caught:
            names.validate_site_id(value)
        assert value not in str(caught.value)


@pytest.mark.parametrize("value", [None, 42, b"st-marys", ["st-marys"]], ids=repr)
def test_non_text_is_refused(value: object) -> None:
    with pytest.raises(FormatError, match="site ID must be text"):
        names.validate_site_id(value)


def test_one_rule_one_bound() -> None:
    assert store.validate_site_id is names.validate_site_id
    assert names.SITE_ID_MAX_LENGTH is federation_names.SITE_ID_MAX_LENGTH
