"""Proof-of-storage challenges: an intact holder passes; one that dropped, altered or kept
only hashes of its fragment fails; every byte sent on the wire is bounded and versioned."""

from __future__ import annotations

import random
import secrets

import pytest

from meshpacs.audit.challenge import (
    MAX_CHALLENGES,
    MAX_RANGE,
    Challenge,
    ChallengeHasher,
    answer,
    check,
    pack_challenge_set,
    pack_request,
    pack_response,
    parse_challenge_set,
    parse_request,
    parse_response,
    plan_challenges,
)
from meshpacs.errors import FormatError, LimitExceeded, UnknownVersion

SEED = secrets.randbits(32)


@pytest.fixture
def rng() -> random.Random:
    print(f"seed={SEED}")
    return random.Random(SEED)


def _plan(rng: random.Random, fragment: bytes, count: int, range_size: int = 4096):
    return plan_challenges(
        len(fragment), count, range_size=range_size, token=rng.randbytes, randbelow=rng.randrange
    )


def _expected(fragment: bytes, challenges, chunk: int):
    hasher = ChallengeHasher(challenges)
    for start in range(0, len(fragment), chunk):
        hasher.feed(memoryview(fragment)[start : start + chunk])
    return hasher.finish()


def _holder_answer(stored: bytes, challenge: Challenge) -> bytes:
    request = parse_request(pack_request(challenge))
    data = stored[request.offset : request.offset + request.length]
    return parse_response(pack_response(answer(request.nonce, request.offset, data)))


@pytest.mark.parametrize("chunk", [1, 1000, 4096, 65536, 1 << 20])
def test_answers_computed_while_streaming_match_an_intact_holder(rng, chunk):
    fragment = rng.randbytes(300_000)
    expected = _expected(fragment, _plan(rng, fragment, 40), chunk)
    assert len(expected) == 40
    for item in expected:
        assert check(item, _holder_answer(fragment, item.challenge))


def test_an_altered_byte_inside_the_range_fails_and_outside_passes(rng):
    fragment = rng.randbytes(100_000)
    (item,) = _expected(fragment, _plan(rng, fragment, 1), 8192)
    c = item.challenge
    inside = bytearray(fragment)
    inside[c.offset + rng.randrange(c.length)] ^= 0x01
    assert not check(item, _holder_answer(bytes(inside), c))
    if c.offset > 0:
        outside = bytearray(fragment)
        outside[c.offset - 1] ^= 0x01
        assert check(item, _holder_answer(bytes(outside), c))


def test_truncated_or_zero_filled_fragments_fail(rng):
    fragment = rng.randbytes(50_000)
    expected = _expected(fragment, _plan(rng, fragment, 20), 4096)
    zeros = bytes(len(fragment))
    truncated = fragment[: len(fragment) // 2]
    failed_zero = sum(not check(e, _holder_answer(zeros, e.challenge)) for e in expected)
    assert failed_zero == len(expected)
    past_half = [e for e in expected if e.challenge.end > len(truncated)]
    assert all(not check(e, _holder_answer(truncated, e.challenge)) for e in past_half)


def test_a_holder_keeping_only_hashes_cannot_answer_a_fresh_nonce(rng):
    fragment = rng.randbytes(20_000)
    (item,) = _expected(fragment, _plan(rng, fragment, 1), 4096)
    c = item.challenge
    # Whatever the holder precomputed, it was not keyed by a nonce it had never seen.
    guess_key = rng.randbytes(32)
    guess = answer(guess_key, c.offset, fragment[c.offset : c.end])
    assert not check(item, guess)


def test_ranges_cover_the_whole_fragment_and_stay_inside_it(rng):
    size = 10_000
    plan = plan_challenges(size, 500, range_size=1000, token=rng.randbytes, randbelow=rng.randrange)
    assert all(c.offset >= 0 and c.end <= size and c.length == 1000 for c in plan)
    assert min(c.offset for c in plan) < 500 and max(c.end for c in plan) > size - 500
    assert len({c.nonce for c in plan}) == 500


def test_a_fragment_smaller_than_a_range_is_asked_whole(rng):
    fragment = rng.randbytes(100)
    (item,) = _expected(fragment, _plan(rng, fragment, 1, range_size=4096), 7)
    assert (item.challenge.offset, item.challenge.length) == (0, 100)
    assert check(item, _holder_answer(fragment, item.challenge))


def test_a_stream_ending_before_a_range_is_refused(rng):
    fragment = rng.randbytes(10_000)
    challenges = _plan(rng, fragment, 5)
    hasher = ChallengeHasher(challenges)
    hasher.feed(fragment[: challenges[-1].end - 1])
    with pytest.raises(FormatError, match="before 1 audit range"):
        hasher.finish()


def test_the_challenge_set_round_trips_and_rejects_bad_bytes(rng):
    fragment = rng.randbytes(30_000)
    expected = _expected(fragment, _plan(rng, fragment, 9), 5000)
    packed = pack_challenge_set(expected)
    assert parse_challenge_set(packed) == expected
    with pytest.raises(FormatError):
        parse_challenge_set(packed[:-1])
    with pytest.raises(UnknownVersion):
        parse_challenge_set(b"\x02" + packed[1:])
    with pytest.raises(LimitExceeded):
        parse_challenge_set(b"\x01" + (MAX_CHALLENGES + 1).to_bytes(2, "big"))


def test_a_request_over_the_range_bound_is_refused_before_reading(rng):
    good = pack_request(Challenge(rng.randbytes(32), 0, MAX_RANGE))
    too_long = good[:-4] + (MAX_RANGE + 1).to_bytes(4, "big")
    with pytest.raises(LimitExceeded):
        parse_request(too_long)
    with pytest.raises(LimitExceeded):
        parse_request(good[:-4] + (0).to_bytes(4, "big"))
    with pytest.raises(FormatError):
        parse_request(good + b"\x00")
    with pytest.raises(UnknownVersion):
        parse_request(b"\x09" + good[1:])
    with pytest.raises(FormatError):
        parse_request(b"")


def test_responses_are_exactly_one_versioned_answer(rng):
    digest = rng.randbytes(32)
    assert parse_response(pack_response(digest)) == digest
    with pytest.raises(FormatError):
        parse_response(pack_response(digest)[:-1])
    with pytest.raises(FormatError):
        pack_response(digest[:31])


def test_plans_are_bounded(rng):
    with pytest.raises(LimitExceeded):
        plan_challenges(1000, MAX_CHALLENGES + 1)
    with pytest.raises(FormatError):
        plan_challenges(0, 1)
    with pytest.raises(LimitExceeded):
        plan_challenges(10 * MAX_RANGE, 1, range_size=MAX_RANGE + 1)
    assert plan_challenges(1000, 0) == ()
