"""What recovery works on: studies, their bundles and instances, as the sealed records say.

A recovering site has lost everything but its phrase. It reads its sealed catalog
records back from its trusted peers (:mod:`meshpacs.metadata.replica`), and turns each into
a :class:`PlannedStudy`: the instances to restore (identity, transfer syntax, size and
SHA-256 of the exact bytes), and the bundles holding them (coding parameters, set hash,
wrapped data key, where each share was placed, every share's fragment ID).

Frozen dataclasses, no I/O: the fetcher, the decoder, the journal and the deliverers all
take these.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshpacs.erasure.layout import BundleRef

__all__ = ["PlannedBundle", "PlannedInstance", "PlannedStudy", "ShareHolder"]


@dataclass(frozen=True)
class PlannedInstance:
    """One instance to restore; ``position`` is its place in its bundle's index."""

    position: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: bytes


@dataclass(frozen=True)
class ShareHolder:
    """Share ``share`` was acknowledged by ``site_id`` under ``fragment_id``."""

    share: int
    site_id: str
    fragment_id: str


@dataclass(frozen=True)
class PlannedBundle:
    """A bundle to gather: any ``ref.params.k`` good fragments of it rebuild its instances.

    ``fragment_ids[i]`` is share i's fragment ID (recomputed from the site's key, so shares
    never recorded as placed can still be looked up in the DHT); ``holders`` are the
    placements the catalog recorded; ``wrapped_key`` is the data key as the catalog kept
    it (unwrapped with the site's key-wrap key only when decoding).
    """

    ref: BundleRef
    wrapped_key: bytes
    fragment_ids: tuple[str, ...]
    holders: tuple[ShareHolder, ...]
    instances: tuple[PlannedInstance, ...]

    @property
    def bundle_id(self) -> bytes:
        return self.ref.bundle_id

    @property
    def k(self) -> int:
        return self.ref.params.k

    @property
    def n(self) -> int:
        return self.ref.params.n


@dataclass(frozen=True)
class PlannedStudy:
    """A study to restore, with the attributes recovery filters and orders by."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    modalities: tuple[str, ...]
    last_received: float
    bundles: tuple[PlannedBundle, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(b.instances) for b in self.bundles)

    @property
    def size(self) -> int:
        return sum(i.size for b in self.bundles for i in b.instances)
