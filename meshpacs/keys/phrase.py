"""The recovery phrase: a site secret written on paper and typed back by a person.

The phrase exists for the day the site's disks are gone and someone has to rebuild the
site from a sheet in a safe, so it is designed around the mistakes people make when copying
and typing, not around compactness:

* Crockford base32 (``0123456789ABCDEFGHJKMNPQRSTVWXYZ``): no U, and no I/L/O that look
  like 1 and 0. Decoding forgives case and reads I and L as 1 and O as 0, because those are
  exactly the characters a tired reader substitutes.
* The 256-bit secret is followed by a 4-bit checksum over the whole secret, giving 260 bits,
  i.e. 52 characters, cut into 13 groups of 4.
* Each group carries a fifth character, a Luhn mod 32 check over the group's position
  (as a virtual leading character, value 1..13) followed by its 4 data characters. A
  single wrong character in a group always makes that group fail, so the operator is told
  *which* group to re-read rather than "the phrase is wrong". Because the position takes
  part in the check, a group written or typed at another position always fails there
  too, so swapped groups are named as well. Luhn mod N also catches every transposition
  of two adjacent characters except the pair ``0``/``Z`` (values 0 and N-1).
* The overall checksum catches what slips past the group checks (one time in 16).

Format: 13 groups of 5 characters joined by ``-``, e.g. ``7KQ2M-...``. On input any run of
whitespace and hyphens separates groups; a phrase typed with no separators at all, or with
a stray space inside a group, is accepted when it has exactly 65 characters.

Errors never echo the phrase or any of its characters: it is secret material, and error
messages end up in logs. They name groups by position only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from meshpacs.errors import KeyMaterialError, PhraseError

__all__ = [
    "ALPHABET",
    "GROUPS",
    "GROUP_LENGTH",
    "PHRASE_SECRET_SIZE",
    "decode_phrase",
    "encode_phrase",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PHRASE_SECRET_SIZE = 32
GROUPS = 13
GROUP_LENGTH = 5

_BASE = len(ALPHABET)
_DATA_PER_GROUP = GROUP_LENGTH - 1
_DATA_CHARS = GROUPS * _DATA_PER_GROUP
_CHECKSUM_BITS = 4
_CHECKSUM_LABEL = b"meshpacs/phrase/v1"
# Far above any honest typing of 77 characters plus stray whitespace; refusing early keeps
# a pasted file from being split and scanned.
_MAX_TEXT_LENGTH = 1024


def _build_values() -> dict[str, int]:
    """Character -> value, including lower case and the look-alikes I, L and O.

    A lookup table rather than ``str.upper()``: Unicode upper-casing can change the length
    of the text (``"ß"`` -> ``"SS"``), which would shift characters between groups.
    """
    values: dict[str, int] = {}
    for index, char in enumerate(ALPHABET):
        values[char] = values[char.lower()] = index
    for alias, target in (("I", "1"), ("L", "1"), ("O", "0")):
        values[alias] = values[alias.lower()] = values[target]
    return values


_VALUES = _build_values()

# Word processors turn "-" into Unicode hyphens and dashes; a pasted phrase should still parse.
_SEPARATORS = re.compile("[\\s\\-\u2010\u2011\u2012\u2013\u2014\u2212]+")


def encode_phrase(secret: bytes) -> str:
    """Write a 32-byte secret as 13 checked groups of 5 characters joined by ``-``."""
    if len(secret) != PHRASE_SECRET_SIZE:
        raise KeyMaterialError(
            f"a recovery phrase holds a {PHRASE_SECRET_SIZE}-byte secret, not {len(secret)} bytes"
        )
    number = (int.from_bytes(secret, "big") << _CHECKSUM_BITS) | _checksum(secret)
    digits = _to_digits(number, _DATA_CHARS)
    groups = []
    for position in range(1, GROUPS + 1):
        data = digits[(position - 1) * _DATA_PER_GROUP : position * _DATA_PER_GROUP]
        values = [*data, _check_value(position, data)]
        groups.append("".join(ALPHABET[value] for value in values))
    return "-".join(groups)


def decode_phrase(text: str) -> bytes:
    """Read back the secret from a typed phrase, or say which groups to re-read.

    Raises ``PhraseError`` whose ``bad_groups`` holds the 1-based positions of the groups
    that are malformed or fail their check; it is empty when the number of groups is wrong
    or when only the overall checksum fails.
    """
    groups = _split_groups(text)
    values = _parse_groups(groups)
    _verify_groups(values)
    digits = [digit for group in values for digit in group[:_DATA_PER_GROUP]]
    number = _from_digits(digits)
    secret = (number >> _CHECKSUM_BITS).to_bytes(PHRASE_SECRET_SIZE, "big")
    if number & ((1 << _CHECKSUM_BITS) - 1) != _checksum(secret):
        raise PhraseError(
            "the phrase does not check as a whole: two groups may be swapped or mistyped"
        )
    return secret


def _checksum(secret: bytes) -> int:
    """Top 4 bits of a labelled SHA-256, so the checksum is tied to this format version."""
    return hashlib.sha256(_CHECKSUM_LABEL + secret).digest()[0] >> (8 - _CHECKSUM_BITS)


def _to_digits(number: int, count: int) -> list[int]:
    digits = [0] * count
    for index in range(count - 1, -1, -1):
        number, digits[index] = divmod(number, _BASE)
    return digits


def _from_digits(digits: Sequence[int]) -> int:
    number = 0
    for digit in digits:
        number = number * _BASE + digit
    return number


def _check_value(position: int, data: Sequence[int]) -> int:
    """Luhn mod 32 check character over ``[position, *data]``.

    Doubling with the digits of the product folded back (``2v // N + 2v % N``) is a
    permutation of 0..N-1 for even N, which is why every single substitution, including
    one of the position, changes the sum.
    """
    total = 0
    factor = 2
    for value in reversed([position, *data]):
        addend = factor * value
        total += addend // _BASE + addend % _BASE
        factor = 3 - factor
    return -total % _BASE


def _split_groups(text: str) -> list[str]:
    if len(text) > _MAX_TEXT_LENGTH:
        raise PhraseError(
            f"the text is far longer than a recovery phrase "
            f"({GROUPS} groups of {GROUP_LENGTH} characters)"
        )
    groups = [group for group in _SEPARATORS.split(text) if group]
    if len(groups) == GROUPS:
        return groups
    compact = "".join(groups)
    if len(compact) == GROUPS * GROUP_LENGTH:
        # Typed without separators, or with a space inside a group: the length alone tells
        # where the groups are.
        return [compact[i : i + GROUP_LENGTH] for i in range(0, len(compact), GROUP_LENGTH)]
    found = f"{len(groups)} group" + ("" if len(groups) == 1 else "s")
    raise PhraseError(
        f"found {found}; a recovery phrase has {GROUPS} groups of {GROUP_LENGTH} characters"
    )


def _parse_groups(groups: Sequence[str]) -> list[list[int]]:
    """Map characters to values, naming every group that cannot be read at all."""
    problems: list[str] = []
    bad: list[int] = []
    for position, group in enumerate(groups, start=1):
        if len(group) != GROUP_LENGTH:
            problems.append(f"group {position} has {len(group)} characters, not {GROUP_LENGTH}")
            bad.append(position)
        elif any(char not in _VALUES for char in group):
            # The offending character is not named: it is part of the secret.
            problems.append(f"group {position} has a character outside the phrase alphabet")
            bad.append(position)
    if bad:
        raise PhraseError("; ".join(problems) + ": re-read from the paper copy", bad)
    return [[_VALUES[char] for char in group] for group in groups]


def _verify_groups(values: Sequence[Sequence[int]]) -> None:
    failing = [
        position
        for position, group in enumerate(values, start=1)
        if _check_value(position, group[:_DATA_PER_GROUP]) != group[_DATA_PER_GROUP]
    ]
    if not failing:
        return
    if len(failing) == 1:
        message = f"group {failing[0]} does not check: re-read it from the paper copy"
    else:
        message = (
            f"groups {_join_positions(failing)} do not check: re-read them from the paper copy"
        )
    raise PhraseError(message, failing)


def _join_positions(positions: Sequence[int]) -> str:
    """``[3, 5, 7]`` -> ``"3, 5 and 7"``, for messages read by a person."""
    names = [str(position) for position in positions]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]
