"""Query/Retrieve against real dcmtk peers: findscu, movescu (to storescp) and getscu.

The hierarchy is pydicom's dicomdirtests set (3 patients, 7 studies, 14 series, 81
instances); expectations are computed from the files themselves, not typed in. Retrieved
datasets must be byte-identical to what the node received, in the same transfer syntax.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AllStoragePresentationContexts

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.testing.dcmtk import dcmtk_tool

from .conftest import AE_TITLE, RECEIVER_AE, Node, dcmtk, dcmtk_env

TOOLS = {name: dcmtk_tool(name) or name for name in ("storescu", "storescp", "echoscu", "findscu")}
pytestmark = pytest.mark.skipif(dcmtk_tool("findscu") is None, reason="dcmtk not installed")

STANDARD_STORAGE = {str(c.abstract_syntax) for c in AllStoragePresentationContexts}
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
HIERARCHY = sorted(
    p for p in (TEST_FILES / "dicomdirtests").rglob("*")
    if p.is_file() and not p.name.upper().startswith(("DICOMDIR", "README"))
)  # fmt: skip


def dataset_part(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def headers() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in HIERARCHY]


def keys(*pairs: str) -> list[str]:
    """findscu/movescu/getscu "-k" arguments."""
    return [arg for pair in pairs for arg in ("-k", pair)]


async def scu(
    node: Node, tool: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk SCU against the node, calling itself after the tool."""
    aet = tool.upper()[:16]
    return await dcmtk(
        [tool, "-aet", aet, "-aec", AE_TITLE, *args, "127.0.0.1", str(node.port)], timeout
    )


async def load(node: Node) -> Node:
    args = [TOOLS["storescu"], "-aet", "LOADER", "-aec", AE_TITLE, "127.0.0.1", str(node.port)]
    done = await dcmtk([*args, *map(str, HIERARCHY)])
    assert done.returncode == 0, done.stderr
    return node


@pytest.fixture
async def loaded(node: Node) -> AsyncIterator[Node]:
    yield await load(node)


@pytest.fixture
async def find_loaded(either_find_node: Node) -> AsyncIterator[Node]:
    """Loaded, its C-FINDs answered by one path, then the other."""
    yield await load(either_find_node)


async def findscu(
    node: Node, root: str, level: str, *keys: str, out: Path
) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [TOOLS["findscu"], root, "-aet", "FINDER", "-aec", AE_TITLE, "-X", "-od", str(out),
            "-k", f"QueryRetrieveLevel={level}"]  # fmt: skip
    for key in keys:
        args += ["-k", key]
    done = await dcmtk([*args, "127.0.0.1", str(node.port)])
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.parametrize(
    ("root", "level", "keys", "expected"),
    [
        ("-P", "PATIENT", ("PatientID", "PatientName"), lambda hs: {h.PatientID for h in hs}),
        (
            "-S",
            "STUDY",
            ("StudyInstanceUID", "StudyDate"),
            lambda hs: {h.StudyInstanceUID for h in hs},
        ),
        (
            "-S",
            "SERIES",
            ("SeriesInstanceUID", "Modality"),
            lambda hs: {h.SeriesInstanceUID for h in hs},
        ),
        ("-P", "IMAGE", ("SOPInstanceUID",), lambda hs: {h.SOPInstanceUID for h in hs}),
    ],
    ids=["patient", "study", "series", "image"],
)
async def test_findscu_finds_exactly_the_hierarchy_at_each_level(
    find_loaded: Node, tmp_path: Path, root: str, level: str, keys: tuple[str, ...], expected
) -> None:  # type: ignore[no-untyped-def]
    answers = await findscu(find_loaded, root, level, *keys, out=tmp_path / "rsp")
    unique = keys[0]
    got = [str(a.get(unique)) for a in answers]
    assert len(got) == len(set(got))
    assert set(got) == expected(headers())
    assert len(set(got)) == {"PATIENT": 3, "STUDY": 7, "SERIES": 14, "IMAGE": 81}[level]


async def test_wildcard_and_date_range_match_what_the_files_say(
    find_loaded: Node, tmp_path: Path
) -> None:
    hs = headers()
    name = str(hs[0].PatientName)
    pattern = name[:2] + "*"
    want = {
        h.PatientID for h in hs if fnmatch.fnmatchcase(str(h.PatientName).upper(), pattern.upper())
    }
    answers = await findscu(
        find_loaded, "-P", "PATIENT", "PatientID", f"PatientName={pattern}", out=tmp_path / "a"
    )
    assert {a.PatientID for a in answers} == want

    dates = sorted({h.StudyDate for h in hs if h.get("StudyDate")})
    low, high = dates[0], dates[len(dates) // 2]
    want_studies = {
        h.StudyInstanceUID for h in hs if h.get("StudyDate") and low <= h.StudyDate <= high
    }
    answers = await findscu(
        find_loaded,
        "-S",
        "STUDY",
        "StudyInstanceUID",
        f"StudyDate={low}-{high}",
        out=tmp_path / "b",
    )
    assert {a.StudyInstanceUID for a in answers} == want_studies


async def test_universal_matching_returns_values_and_counts(
    find_loaded: Node, tmp_path: Path
) -> None:
    hs = headers()
    study = hs[0].StudyInstanceUID
    answers = await findscu(
        find_loaded, "-S", "STUDY", f"StudyInstanceUID={study}", "PatientName", "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances", out=tmp_path / "c",
    )  # fmt: skip
    assert len(answers) == 1
    mine = [h for h in hs if h.StudyInstanceUID == study]
    assert int(answers[0].NumberOfStudyRelatedInstances) == len(mine)
    modalities = answers[0].ModalitiesInStudy
    modalities = {modalities} if isinstance(modalities, str) else set(modalities)
    assert modalities == {h.Modality for h in mine}
    assert str(answers[0].PatientName) == str(mine[0].PatientName)


@pytest.fixture
def receiver(node: Node, tmp_path: Path) -> Iterator[Path]:
    """dcmtk storescp as the C-MOVE destination, bit-preserving, accepting every syntax."""
    out = tmp_path / "received"
    out.mkdir()
    args = [TOOLS["storescp"], "-aet", RECEIVER_AE, "+xa", "+B", "+uf", "-od", str(out),
            str(node.receiver_port)]  # fmt: skip
    proc = subprocess.Popen(
        args, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    echo = [TOOLS["echoscu"], "-aec", RECEIVER_AE, "127.0.0.1", str(node.receiver_port)]
    while subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.05)
    try:
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def received_datasets(directory: Path) -> dict[str, bytes]:
    found = {}
    for path in directory.iterdir():
        found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_part(
            path
        )
    return found


async def test_movescu_brings_back_the_exact_bytes(loaded: Node, receiver: Path) -> None:
    hs = headers()
    study = hs[0].StudyInstanceUID
    level = keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    done = await scu(loaded, "movescu", "-S", "-aem", RECEIVER_AE, *level)
    assert done.returncode == 0, done.stderr
    originals = {str(h.SOPInstanceUID): dataset_part(p) for p, h in zip(HIERARCHY, hs, strict=True)
                 if h.StudyInstanceUID == study}  # fmt: skip
    assert received_datasets(receiver) == originals
    if shutil.which("dciodvfy"):
        # An independent validator finds nothing new to complain about after the round trip.
        sources = {str(h.SOPInstanceUID): p for p, h in zip(HIERARCHY, hs, strict=True)}
        for path in receiver.iterdir():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert dciodvfy_errors(path) <= dciodvfy_errors(sources[uid]), path.name


def dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


async def test_movescu_to_an_unknown_destination_is_refused(loaded: Node) -> None:
    level = keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={headers()[0].StudyInstanceUID}")
    done = await scu(loaded, "movescu", "-S", "-aem", "NOSUCHAE", *level)
    report = (done.stdout + done.stderr).lower()
    assert "a801" in report or "destination unknown" in report or "movedestinationunknown" in report


async def test_getscu_brings_back_the_exact_bytes(loaded: Node, tmp_path: Path) -> None:
    hs = headers()
    series = hs[0].SeriesInstanceUID
    out = tmp_path / "got"
    out.mkdir()
    level = keys(
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={hs[0].StudyInstanceUID}",
        f"SeriesInstanceUID={series}",
    )
    done = await scu(loaded, "getscu", "-S", "+B", "-od", str(out), *level)
    assert done.returncode == 0, done.stderr
    originals = {str(h.SOPInstanceUID): dataset_part(p) for p, h in zip(HIERARCHY, hs, strict=True)
                 if h.SeriesInstanceUID == series}  # fmt: skip
    assert received_datasets(out) == originals


def _pydicom_data() -> Path | None:
    """The pydicom-data wheel's files: large real modalities (CR, MR, CT, US, SEG...)."""
    try:
        import data_store  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(data_store.__file__).parent / "data"


REAL_FILES = _pydicom_data()


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param(TEST_FILES, id="pydicom-test-files"),
        pytest.param(
            REAL_FILES,
            id="pydicom-data",
            marks=pytest.mark.skipif(REAL_FILES is None, reason="pydicom-data not installed"),
        ),
    ],
)
async def test_odd_files_and_compressed_syntaxes_come_back_byte_identical(
    node: Node, receiver: Path, folder: Path
) -> None:
    """Many SOP classes and transfer syntaxes, some malformed, some large real modalities."""
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    done = await dcmtk(["dcmsend", "-dn", "-nh", "-aet", "LOADER", "-aec", AE_TITLE,
                        "127.0.0.1", str(node.port), *map(str, files)], timeout=300)  # fmt: skip
    # Several test files share a SOP Instance UID in different syntaxes: versions, all kept.
    stored: list[tuple[str, bytes, str]] = []
    for path in node.store.instances_dir.rglob("*.dcm"):
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        if str(meta.MediaStorageSOPClassUID) not in STANDARD_STORAGE:
            continue  # a malformed test file says SOP class '31': storescp rightly refuses it
        uid, syntax = str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)
        stored.append((uid, dataset_part(path), syntax))
    # dcmsend itself refuses the malformed files (about ten of pydicom's 74 with file meta)
    # and a few are byte-identical copies of others.
    assert len(stored) >= 0.6 * len(files), done.stdout + done.stderr
    syntaxes = {syntax for _, _, syntax in stored}
    assert len(syntaxes) >= 5, syntaxes  # several transfer syntaxes, compressed ones among them

    uids = sorted({uid for uid, _, _ in stored})
    for chunk in (uids[i : i + 40] for i in range(0, len(uids), 40)):
        level = keys("QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(chunk))
        moved = await scu(node, "movescu", "-P", "-aem", RECEIVER_AE, *level, timeout=300)
        assert moved.returncode == 0, moved.stderr
    received = sorted(dataset_part(p) for p in receiver.iterdir())
    assert received == sorted(data for _, data, _ in stored)


async def test_c_find_with_an_over_long_value_fails_and_the_node_goes_on(
    either_find_node: Node, tmp_path: Path
) -> None:
    node = either_find_node
    done = await dcmtk([TOOLS["findscu"], "-v", "-P", "-aet", "FINDER", "-aec", AE_TITLE,
                        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=" + "A" * 5000,
                        "127.0.0.1", str(node.port)])  # fmt: skip
    report = (done.stdout + done.stderr).lower()
    assert "refused: outofresources" in report, report
    echo = await dcmtk([TOOLS["echoscu"], "-aec", AE_TITLE, "127.0.0.1", str(node.port)])
    assert echo.returncode == 0


async def test_a_move_that_includes_pruned_instances_reports_them_failed(
    loaded: Node, receiver: Path
) -> None:
    """Instances whose local copy the retention setting removed are not silently skipped:
    the C-MOVE delivers the others and reports the missing ones as failed sub-operations."""
    hs = headers()
    study = hs[0].StudyInstanceUID
    in_study = [(p, h) for p, h in zip(HIERARCHY, hs, strict=True) if h.StudyInstanceUID == study]
    assert len(in_study) >= 2
    _, gone = in_study[0]
    [location] = await loaded.catalog.locate("IMAGE", {"SOPInstanceUID": str(gone.SOPInstanceUID)})
    stored = loaded.store.path_for(location.sha256)
    assert stored.exists()
    stored.unlink()
    level = keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    done = await scu(loaded, "movescu", "-S", "-aem", RECEIVER_AE, *level)
    report = done.stdout + done.stderr
    received = received_datasets(receiver)
    assert str(gone.SOPInstanceUID) not in received
    assert len(received) == len(in_study) - 1
    assert "OneOrMoreFailures" in report, report  # 0xB000: the others went, these failed
    # The node goes on serving.
    again = await scu(loaded, "echoscu")
    assert again.returncode == 0
