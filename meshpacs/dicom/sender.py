"""Send a stored instance as a C-STORE straight onto a pynetdicom association's socket.

The mirror of :mod:`receiver`. pynetdicom sends a C-STORE by encoding the request into
one P-DATA primitive per PDU (33 for a 513 KiB slice at dcmtk's 16 KiB), queueing them
for the association's DUL thread, which sends one per reactor iteration: about 4.6 ms of
CPU per instance split over two threads under one GIL (docs/benchmarks.md, "DICOM
retrieve"). Here the sending thread writes the command and the file's dataset bytes as
P-DATA PDUs itself, each read into one reused buffer behind its 12-byte header and sent
with one ``sendall``. The response still arrives through pynetdicom (its DUL thread
decodes it, ``dimse.get_msg`` hands it over), and so do every status, timeout and abort
rule of ``Association.send_c_store``.

The DUL thread may itself be sending on the same socket (a C-GET's pending responses go
through its queue), so both writers hold one lock per socket: the DUL's ``send`` is
wrapped to take it (:func:`install_send_lock`), and whole PDUs never interleave.

P-DATA-TF PDU as written here (one PDV per PDU; PS3.8 9.3.5)::

    04 00 | PDU length (BE u32) | PDV length (BE u32) | context id | control | data
    control: 0x03 last command fragment; 0x00 dataset fragment; 0x02 last dataset fragment
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import transport

from meshpacs.dicom import pdu
from meshpacs.dicom.part10 import META_SCAN_LIMIT, dataset_offset
from meshpacs.dicom.reactor import reactor_held

__all__ = ["install_send_lock", "send_stored"]

LOG = logging.getLogger("meshpacs.dicom")
_HEADER = struct.Struct(">BxIIBB")  # PDU type, PDU length, PDV length, context, control
# When the peer announces no maximum (0), PDUs of this size.
_UNLIMITED_CHUNK = 1024 * 1024
_LOCK = "_meshpacs_send_lock"
_MARK = "_meshpacs_send_lock_installed"
_C_STORE_RQ = 0x0001
_DATASET_PRESENT = 0x0000


def _lock_of(sock: Any) -> threading.Lock:
    lock = getattr(sock, _LOCK, None)
    if lock is None:
        # Created under the GIL by the first writer; a race would make two locks, so the
        # association socket's __init__ path is wrapped too (install_send_lock).
        lock = threading.Lock()
        setattr(sock, _LOCK, lock)
    return lock


def install_send_lock() -> None:
    """Make pynetdicom's socket writes take the per-socket lock (once per process)."""
    socket_class = transport.AssociationSocket
    if getattr(socket_class.send, _MARK, False):
        return
    original_send = socket_class.send
    original_init = socket_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        setattr(self, _LOCK, threading.Lock())
        original_init(self, *args, **kwargs)

    def send(self: Any, bytestream: bytes) -> None:
        with _lock_of(self):
            original_send(self, bytestream)

    setattr(send, _MARK, True)
    socket_class.__init__ = __init__  # type: ignore[method-assign]
    socket_class.send = send  # type: ignore[method-assign]


def send_stored(
    assoc: Any,
    path: Path,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` for a stored Part 10 file, sent byte for byte.

    Returns the status dataset as pynetdicom's does (empty when no valid response came).
    """
    if not assoc.is_established:
        raise RuntimeError("the association must be established before sending a C-STORE")
    context = assoc._get_valid_context(
        sop_class_uid, transfer_syntax_uid, "scu", allow_conversion=False
    )
    command = _command(
        sop_class_uid, sop_instance_uid, msg_id, priority, originator_aet, originator_id
    )
    peer_max = int(assoc.dimse.maximum_pdu_size or 0)
    chunk = peer_max - 6 if peer_max > 6 else _UNLIMITED_CHUNK
    with reactor_held(assoc):
        with path.open("rb", buffering=0) as f:
            head = f.read(META_SCAN_LIMIT)
            f.seek(dataset_offset(head))
            _write_message(assoc, int(context.context_id), command, f, chunk)
        _, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(rsp)
    return status


def _command(
    sop_class_uid: str,
    sop_instance_uid: str,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> bytes:
    elements = {
        0x0002: pdu.uid_value(sop_class_uid),
        0x0100: pdu.us_value(_C_STORE_RQ),
        0x0110: pdu.us_value(msg_id),
        0x0700: pdu.us_value(priority),
        0x0800: pdu.us_value(_DATASET_PRESENT),
        0x1000: pdu.uid_value(sop_instance_uid),
    }
    if originator_aet:
        raw = originator_aet.encode("ascii")
        elements[0x1030] = raw + b" " if len(raw) % 2 else raw
    if originator_id is not None:
        elements[0x1031] = pdu.us_value(originator_id)
    return pdu.encode_command(elements)


def _write_message(assoc: Any, context_id: int, command: bytes, f: Any, chunk: int) -> None:
    """The command, then every dataset fragment, as whole PDUs under the socket's lock."""
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    association_socket = assoc.dul.socket
    sock = association_socket.socket
    buffer = bytearray(_HEADER.size + min(chunk, max(remaining, 0)))
    view = memoryview(buffer)
    with _lock_of(association_socket):
        sock.sendall(_HEADER.pack(pdu.P_DATA_TF, len(command) + 6, len(command) + 2,
                                  context_id, 0x03) + command)  # fmt: skip
        while True:
            n = min(chunk, remaining)
            _read_exactly(f, view[_HEADER.size : _HEADER.size + n])
            remaining -= n
            control = 0x00 if remaining else 0x02
            _HEADER.pack_into(buffer, 0, pdu.P_DATA_TF, n + 6, n + 2, context_id, control)
            sock.sendall(view[: _HEADER.size + n])
            if not remaining:
                return


def _read_exactly(f: Any, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise OSError("the stored file is shorter than when it was opened")
        got += n
