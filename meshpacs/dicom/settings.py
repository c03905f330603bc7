"""The AE's settings, shared by the listener (:mod:`scp`) and the receiver (:mod:`acceptor`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["AeSettings"]


@dataclass(frozen=True)
class AeSettings:
    """What the AE needs from the node's configuration."""

    ae_title: str
    bind: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 10
    max_pdu: int = 65536
    allowed_calling_aets: Sequence[str] = field(default_factory=tuple)
    network_timeout: float = 60
    acse_timeout: float = 30
    dimse_timeout: float = 30
    max_instance_bytes: int = 4 * 1024**3
    # Serve plain storage associations with the node's own receiver (meshpacs.dicom.receiver)
    # instead of pynetdicom's; off only to compare the two.
    direct_storage: bool = True
    # Serve associations that only query (C-FIND, C-ECHO) with the node's own
    # meshpacs.dicom.find_receiver instead of pynetdicom's; off only to compare the two.
    direct_find: bool = True
