"""A bound on the PDU length a peer may declare, enforced before anything is read.

pynetdicom reads a PDU's 32-bit length from its header and then reads that many bytes
into a growing buffer, with no check against the maximum PDU size it negotiated: a peer
can make it buffer up to 4 GiB per association (pynetdicom ``dul.py``; the same defect was
reported for io-dicom and dicom-rs). The node refuses any PDU longer than the maximum it
announced (P-DATA), or than :data:`MAX_CONTROL_PDU` when that is larger (association
requests carry no data and are small): the read fails at once, pynetdicom treats it as a
closed connection, and the association ends without having allocated anything.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import transport

__all__ = ["MAX_CONTROL_PDU", "install_pdu_limit"]

LOG = logging.getLogger("meshpacs.dicom")
# An A-ASSOCIATE-RQ proposing all 128 presentation contexts with every transfer syntax
# pynetdicom knows is about 40 KiB; 1 MiB leaves room for large user identity items.
MAX_CONTROL_PDU = 1024 * 1024
_MARK = "_meshpacs_pdu_limit"


class PduTooLong(OSError):
    """Raised inside pynetdicom's read: it ends the association as a lost connection."""


def _limit(sock: Any) -> int:
    assoc = getattr(sock, "_assoc", None)
    announced = int(getattr(getattr(assoc, "ae", None), "maximum_pdu_size", 0) or 0)
    if announced == 0:
        return 1 << 32  # the node never announces "unlimited"; a client AE might
    return max(announced, MAX_CONTROL_PDU)


def install_pdu_limit() -> None:
    """Wrap pynetdicom's socket read once per process."""
    socket_class = transport.AssociationSocket
    if getattr(socket_class.recv, _MARK, False):
        return
    original = socket_class.recv

    def recv(self: Any, nr_bytes: int) -> bytearray:
        limit = _limit(self)
        if nr_bytes > limit:
            LOG.warning("peer declared a %d-byte PDU, over the %d-byte limit: association ended",
                        nr_bytes, limit)  # fmt: skip
            raise PduTooLong(f"PDU of {nr_bytes} bytes exceeds the {limit}-byte limit")
        result: bytearray = original(self, nr_bytes)
        return result

    setattr(recv, _MARK, True)
    socket_class.recv = recv  # type: ignore[method-assign]
