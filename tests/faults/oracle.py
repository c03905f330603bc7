"""The oracle every fault scenario ends with.

* :class:`Manifest`: the SHA-256 of the dataset part (the bytes after the file meta group)
  of every instance the node acknowledged with C-STORE Success before or during a fault,
  keyed by SOP Instance UID. A UID acknowledged with two different datasets (the node
  keeps both versions, see ``docs/conformance.md``) has two digests.
* :func:`assert_restored`: what a recovery wrote is that manifest, as a set: no instance
  missing, none extra, no digest different, none written twice.
* :func:`assert_no_phi_on_untrusted`: no byte of any file in an untrusted site's data
  directory spells a patient name, patient ID, study/series/SOP UID or study date.

UIDs appear in failure messages: the test studies are synthetic.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from meshpacs.dicom.scu import Delivery
from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import Federation, RunningSite
from tests.mesh.helpers import files_containing
from tests.mesh.test_recovery import dataset_part

__all__ = ["Manifest", "assert_no_phi_on_untrusted", "assert_restored", "untrusted_sites"]

_LISTED = 20  # UIDs named per kind of difference, at most


def digest(data: bytes) -> str:
    """SHA-256 (hex) of a Part 10 file's dataset part."""
    return hashlib.sha256(dataset_part(data)).hexdigest()


@dataclass
class Manifest:
    """SOP Instance UID -> digests of the datasets acknowledged (or found) under it."""

    digests: dict[str, set[str]] = field(default_factory=dict)
    studies: dict[str, str] = field(default_factory=dict)  # SOP UID -> study UID ("": none)
    copies: Counter[tuple[str, str]] = field(default_factory=Counter)  # (uid, digest) -> files

    def add(self, sop_instance_uid: str, data: bytes, study_uid: str = "") -> None:
        """One acknowledged instance (``data``: its whole Part 10 file)."""
        key = (sop_instance_uid, digest(data))
        self.digests.setdefault(sop_instance_uid, set()).add(key[1])
        self.copies[key] += 1
        if study_uid or sop_instance_uid not in self.studies:
            self.studies[sop_instance_uid] = study_uid

    def add_instances(self, instances: Iterable[SynthInstance]) -> None:
        for i in instances:
            self.add(i.sop_instance_uid, i.data, i.study_instance_uid)

    def add_acknowledged(
        self, deliveries: Sequence[Delivery], studies: dict[str, str] | None = None
    ) -> int:
        """Every delivery answered with Success (a warning counts: the PACS holds it);
        returns how many."""
        acknowledged = [d for d in deliveries if d.ok]
        for d in acknowledged:
            uid = d.item.sop_instance_uid
            self.add(uid, d.item.path.read_bytes(), (studies or {}).get(uid, ""))
        return len(acknowledged)

    @classmethod
    def of_instances(cls, instances: Iterable[SynthInstance]) -> Manifest:
        made = cls()
        made.add_instances(instances)
        return made

    @classmethod
    def of_files(cls, files: Iterable[Path]) -> Manifest:
        """What restored files hold, keyed by the SOP Instance UID of their file meta
        (which the node wrote from the C-STORE request, so it is there even for a dataset
        the node could not parse)."""
        made = cls()
        for path in files:
            meta = read_file_meta_info(path)
            made.add(str(meta.get("MediaStorageSOPInstanceUID", "")), path.read_bytes())
        return made

    def without_studies(self, study_uids: Iterable[str]) -> Manifest:
        """The manifest less every instance of these studies."""
        gone = set(study_uids)
        kept = Manifest()
        for uid, digests in self.digests.items():
            if self.studies.get(uid, "") in gone:
                continue
            kept.digests[uid] = set(digests)
            kept.studies[uid] = self.studies.get(uid, "")
            kept.copies.update({key: n for key, n in self.copies.items() if key[0] == uid})
        return kept

    def __len__(self) -> int:
        """Distinct acknowledged datasets (versions), not UIDs."""
        return sum(len(d) for d in self.digests.values())


def _listed(uids: Iterable[str]) -> str:
    ordered = sorted(uids)
    more = f" ... and {len(ordered) - _LISTED} more" if len(ordered) > _LISTED else ""
    return ", ".join(ordered[:_LISTED]) + more


def restored_files(root: Path) -> list[Path]:
    """The instance files a folder recovery wrote (``<root>/<folder>/<sha256>.dcm``)."""
    return sorted(root.rglob("*.dcm"))


def assert_restored(manifest: Manifest, restored: Iterable[Path] | Path) -> None:
    """The restored files are exactly the manifest: same UIDs, same digests, each once."""
    files = restored_files(restored) if isinstance(restored, Path) else list(restored)
    got = Manifest.of_files(files)
    missing = manifest.digests.keys() - got.digests.keys()
    extra = got.digests.keys() - manifest.digests.keys()
    different = {
        uid: (manifest.digests[uid], got.digests[uid])
        for uid in manifest.digests.keys() & got.digests.keys()
        if manifest.digests[uid] != got.digests[uid]
    }
    twice = {key: count for key, count in got.copies.items() if count > 1}
    problems = []
    if missing:
        problems.append(f"{len(missing)} acknowledged instance(s) missing: {_listed(missing)}")
    if extra:
        problems.append(f"{len(extra)} instance(s) never acknowledged: {_listed(extra)}")
    for uid, (want, have) in sorted(different.items())[:_LISTED]:
        problems.append(
            f"{uid}: dataset digest(s) differ: missing {sorted(want - have)},"
            f" unexpected {sorted(have - want)}"
        )
    if len(different) > _LISTED:
        problems.append(f"... and {len(different) - _LISTED} more with different digests")
    for (uid, sha), count in sorted(twice.items())[:_LISTED]:
        problems.append(f"{uid}: the same dataset ({sha[:16]}...) restored {count} times")
    assert not problems, (
        f"restore is not exact ({len(files)} files for {len(manifest)} acknowledged"
        " datasets):\n  " + "\n  ".join(problems)
    )


def untrusted_sites(federation: Federation, owner: RunningSite | str) -> list[RunningSite]:
    """Every site but the owner and the peers the owner trusts with its catalog."""
    site = federation.site(owner) if isinstance(owner, str) else owner
    trusted = set(site.plan.trusted) | {site.site_id}
    return [s for s in federation.sites if s.site_id not in trusted]


def _scan(root: Path, needles: set[bytes], attempts: int = 5) -> dict[str, list[str]]:
    """``files_containing``, again if a running node removed a file while it was read."""
    for _ in range(attempts - 1):
        try:
            return files_containing(root, needles)
        except FileNotFoundError:
            continue
    return files_containing(root, needles)


def assert_no_phi_on_untrusted(
    federation: Federation, owner: RunningSite | str, phi: Iterable[bytes | str]
) -> None:
    """No file (any file, all its bytes) under an untrusted site's data directory holds
    any of the ``phi`` strings; fails naming each file and what it holds."""
    needles = {p.encode() if isinstance(p, str) else p for p in phi}
    assert needles, "no PHI strings to look for: the check would prove nothing"
    sites = untrusted_sites(federation, owner)
    assert sites, "the owner trusts every other site: no untrusted disk to check"
    leaks = []
    for site in sites:
        if not site.data_dir.exists():  # a site lost for good in the scenario
            continue
        for name, found in sorted(_scan(site.data_dir, needles).items()):
            leaks.append(f"{site.site_id}: {site.data_dir / name} holds {sorted(found)}")
    assert not leaks, "PHI on an untrusted site's disk:\n  " + "\n  ".join(leaks)
