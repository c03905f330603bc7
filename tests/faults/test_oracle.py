"""The oracle can fail: each kind of difference it exists to catch makes it raise."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpacs.node.config import load_config
from meshpacs.testbed import create_testbed
from meshpacs.testing.synth import SeriesSpec, StudySpec, SynthInstance, write_study
from tests.mesh.conftest import Federation, RunningSite
from tests.mesh.helpers import phi_strings, study
from tests.mesh.test_recovery import dataset_part

from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored, untrusted_sites

TINY = StudySpec(series=(SeriesSpec("CT", 3, 16, 16),))


@pytest.fixture
def instances() -> list[SynthInstance]:
    return study(seed=601, spec=TINY)


def test_the_exact_set_passes(instances: list[SynthInstance], tmp_path: Path) -> None:
    assert_restored(Manifest.of_instances(instances), write_study(tmp_path, instances))


def test_a_missing_instance_fails(instances: list[SynthInstance], tmp_path: Path) -> None:
    files = write_study(tmp_path, instances[:-1])
    with pytest.raises(AssertionError, match=r"1 acknowledged instance.s. missing") as failed:
        assert_restored(Manifest.of_instances(instances), files)
    assert instances[-1].sop_instance_uid in str(failed.value)


def test_an_extra_instance_fails(instances: list[SynthInstance], tmp_path: Path) -> None:
    other = study(seed=602, spec=TINY)[0]
    files = write_study(tmp_path, [*instances, other])
    with pytest.raises(AssertionError, match=r"1 instance.s. never acknowledged") as failed:
        assert_restored(Manifest.of_instances(instances), files)
    assert other.sop_instance_uid in str(failed.value)


def test_a_changed_byte_fails(instances: list[SynthInstance], tmp_path: Path) -> None:
    files = write_study(tmp_path, instances)
    data = bytearray(files[1].read_bytes())
    data[len(data) - len(dataset_part(bytes(data))) + 10] ^= 0x01  # in the dataset part
    files[1].write_bytes(bytes(data))
    with pytest.raises(AssertionError, match=r"digest.s. differ") as failed:
        assert_restored(Manifest.of_instances(instances), files)
    assert instances[1].sop_instance_uid in str(failed.value)


def test_a_changed_file_meta_alone_does_not_count(
    instances: list[SynthInstance], tmp_path: Path
) -> None:
    """The comparison is of datasets: the node writes its own file meta group."""
    files = write_study(tmp_path, instances)
    data = bytearray(files[0].read_bytes())
    data[5] ^= 0x01  # the preamble, before the file meta group and the dataset
    files[0].write_bytes(bytes(data))
    assert_restored(Manifest.of_instances(instances), files)


def test_a_second_version_lost_or_an_instance_written_twice_fails(
    instances: list[SynthInstance], tmp_path: Path
) -> None:
    manifest = Manifest.of_instances(instances)
    changed = bytearray(instances[0].data)
    changed[-1] ^= 0xFF
    manifest.add(instances[0].sop_instance_uid, bytes(changed))  # acknowledged twice
    with pytest.raises(AssertionError, match=r"digest.s. differ"):
        assert_restored(manifest, write_study(tmp_path / "one", instances))
    twice = write_study(tmp_path / "a", instances) + write_study(tmp_path / "b", instances[:1])
    with pytest.raises(AssertionError, match=r"restored 2 times"):
        assert_restored(Manifest.of_instances(instances), twice)


def test_without_studies_drops_exactly_their_instances(tmp_path: Path) -> None:
    first, second = study(seed=603, spec=TINY), study(seed=604, patient=1, spec=TINY)
    manifest = Manifest.of_instances(first + second)
    kept = manifest.without_studies({second[0].study_instance_uid})
    assert_restored(kept, write_study(tmp_path, first))


@pytest.fixture
def laid_out(tmp_path: Path) -> Federation:
    """A federation's directories (not started): the PHI scan reads only disks."""
    plan = create_testbed(tmp_path / "federation", 5, k=2, n=3)
    return Federation(plan, [RunningSite(s, load_config(Path(s.config))) for s in plan.sites])


def test_phi_planted_on_an_untrusted_disk_fails_naming_the_file(
    laid_out: Federation, instances: list[SynthInstance]
) -> None:
    owner = laid_out.site("site-a")
    phi = phi_strings(instances)
    untrusted = untrusted_sites(laid_out, owner)
    assert {s.site_id for s in untrusted} == {"site-d", "site-e"}  # a trusts b and c
    assert_no_phi_on_untrusted(laid_out, owner, phi)  # nothing there yet

    # The owner's own disk and its trusted peers' are not the check's business.
    (owner.data_dir / "mine.bin").write_bytes(instances[0].data)
    assert_no_phi_on_untrusted(laid_out, "site-a", phi)

    for needle in sorted(phi):  # each kind of value: names, IDs, UIDs, the date
        planted = untrusted[1].data_dir / "fragments" / "ab" / "planted"
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(b"\x00opaque\x00" + needle + b"\xff")
        with pytest.raises(AssertionError, match=r"PHI on an untrusted") as failed:
            assert_no_phi_on_untrusted(laid_out, owner, phi)
        assert str(planted) in str(failed.value) and needle.decode() in str(failed.value)
        planted.unlink()
