"""The transport's frames: round trips, and every bound enforced before allocating."""

from __future__ import annotations

import struct

import pytest

from meshpacs.errors import ProtocolViolation, UnknownVersion
from meshpacs.transport.frames import (
    REQUEST_HEAD_SIZE,
    RESPONSE_HEAD_SIZE,
    Op,
    RecordKind,
    Request,
    Response,
    Status,
    decode_request,
    decode_request_head,
    decode_response,
    decode_response_head,
    encode_request,
    encode_response,
)

NAME = "ab" * 32


@pytest.mark.parametrize(
    "request_",
    [
        Request(Op.PING),
        Request(Op.PUT_FRAGMENT, NAME, length=123_456_789),
        Request(Op.GET_FRAGMENT, NAME, offset=10, length=20),
        Request(Op.HAS_FRAGMENT, NAME),
        Request(Op.DELETE_FRAGMENT, NAME),
        Request(Op.PUT_RECORD, NAME, RecordKind.CATALOG, length=5),
        Request(Op.GET_RECORD, NAME, RecordKind.ESCROW),
        Request(Op.LIST_RECORDS, kind=RecordKind.CATALOG),
    ],
)
def test_requests_round_trip(request_: Request) -> None:
    wire = encode_request(request_)
    head = decode_request_head(wire[:REQUEST_HEAD_SIZE])
    assert decode_request(head, wire[REQUEST_HEAD_SIZE:]) == request_


def test_responses_round_trip_and_long_messages_are_cut() -> None:
    for response in [Response(Status.OK), Response(Status.QUOTA, "over quota", 0)]:
        wire = encode_response(response)
        head = decode_response_head(wire[:RESPONSE_HEAD_SIZE])
        assert decode_response(head, wire[RESPONSE_HEAD_SIZE:]) == response
    wire = encode_response(Response(Status.CORRUPT, "x" * 5000))
    head = decode_response_head(wire[:RESPONSE_HEAD_SIZE])
    assert head.message_length == 1024


@pytest.mark.parametrize(
    "name",
    ["../" + "a" * 61, "AB" * 32, "ab" * 31, "ab" * 33, "a\x00" * 32, "zz" * 32],
)
def test_names_that_are_not_64_hex_digits_are_refused(name: str) -> None:
    with pytest.raises(ProtocolViolation):
        Request(Op.GET_FRAGMENT, name)
    wire = struct.pack(">BBBBQQ", 1, Op.GET_FRAGMENT, 0, len(name.encode()), 0, 0)
    if len(name.encode()) <= 64:
        head = decode_request_head(wire)
        with pytest.raises(ProtocolViolation):
            decode_request(head, name.encode())


def test_heads_with_bad_fields_are_refused() -> None:
    good = struct.pack(">BBBBQQ", 1, Op.PING, 0, 0, 0, 0)
    assert decode_request_head(good).op is Op.PING
    with pytest.raises(UnknownVersion):
        decode_request_head(b"\x02" + good[1:])
    with pytest.raises(ProtocolViolation):
        decode_request_head(struct.pack(">BBBBQQ", 1, 99, 0, 0, 0, 0))
    with pytest.raises(ProtocolViolation):
        decode_request_head(struct.pack(">BBBBQQ", 1, Op.GET_FRAGMENT, 0, 65, 0, 0))
    with pytest.raises(ProtocolViolation):
        decode_request_head(good[:-1])
    with pytest.raises(ProtocolViolation):
        decode_response_head(struct.pack(">BBHQ", 1, 0, 1025, 0))
    with pytest.raises(ProtocolViolation):
        decode_response_head(struct.pack(">BBHQ", 1, 42, 0, 0))


def test_record_kind_must_match_the_op() -> None:
    with pytest.raises(ProtocolViolation):
        Request(Op.PUT_RECORD, NAME)
    with pytest.raises(ProtocolViolation):
        Request(Op.PUT_FRAGMENT, NAME, RecordKind.CATALOG)
    with pytest.raises(ProtocolViolation):
        Request(Op.PING, NAME)
