"""C-FIND against a realistic hierarchy: pydicom's dicomdirtests, 3 patients, 7 studies,
14 series, 81 instances, at every level of both information models."""

from __future__ import annotations

from collections import defaultdict

import pytest

from meshpacs.errors import InvalidQuery, LimitExceeded, MeshError, QueryTooLarge
from meshpacs.metadata import MAX_UIDS, Catalog, FindQuery, InstanceRecord

from .helpers import dicomdir_files, dicomdir_records, make_record

ARCHIBALD = "77654033"
PETER = "98890234"
JAN = "12345678"
CR_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196527414.5534.0.1"
HEAD_CT_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.1"
SCORE_CT_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.1"
MRA_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.1"
BRAIN_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.133"
CAROTIDS_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.427"
ANGIO_SERIES = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.118"


def placed() -> list[InstanceRecord]:
    return [r for r in dicomdir_records() if r.series is not None]


def tree() -> dict[str, dict[str, dict[str, set[str]]]]:
    """patient ID -> study UID -> series UID -> SOP Instance UIDs, from the files."""
    out: dict[str, dict[str, dict[str, set[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(set))
    )
    for r in placed():
        assert r.patient and r.study and r.series
        out[r.patient.patient_id][r.study.study_uid][r.series.series_uid].add(r.sop_instance_uid)
    return out


async def find(catalog: Catalog, root: str, level: str, **keys: str) -> list[dict[str, str]]:
    return await catalog.find(FindQuery(root, level, keys))  # type: ignore[arg-type]


def test_fixture_is_the_documented_hierarchy() -> None:
    assert len(dicomdir_files()) == 81
    t = tree()
    assert len(t) == 3
    assert sum(len(studies) for studies in t.values()) == 7
    assert sum(len(s) for studies in t.values() for s in studies.values()) == 14
    assert len(placed()) == 81


async def test_patient_level_with_related_counts(loaded: Catalog) -> None:
    answers = await find(
        loaded,
        "PATIENT",
        "PATIENT",
        PatientName="",
        PatientSex="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    t = tree()
    assert {a["PatientID"] for a in answers} == set(t)
    for a in answers:
        studies = t[a["PatientID"]]
        assert a["QueryRetrieveLevel"] == "PATIENT"
        assert a["NumberOfPatientRelatedStudies"] == str(len(studies))
        assert a["NumberOfPatientRelatedSeries"] == str(sum(len(s) for s in studies.values()))
        assert a["NumberOfPatientRelatedInstances"] == str(
            sum(len(i) for s in studies.values() for i in s.values())
        )
    by_id = {a["PatientID"]: a for a in answers}
    assert by_id[PETER]["PatientName"] == "Doe^Peter" and by_id[PETER]["PatientSex"] == "M"
    assert by_id[ARCHIBALD]["PatientSex"] == ""
    assert by_id[JAN]["NumberOfPatientRelatedInstances"] == "50"
    assert list(by_id[PETER]) == [
        "QueryRetrieveLevel",
        "PatientID",
        "PatientName",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ]


async def test_study_root_has_no_patient_level(loaded: Catalog) -> None:
    with pytest.raises(InvalidQuery):
        await find(loaded, "STUDY", "PATIENT")


@pytest.mark.parametrize("root", ["PATIENT", "STUDY"])
async def test_study_level(loaded: Catalog, root: str) -> None:
    answers = await find(
        loaded,
        root,
        "STUDY",
        PatientID=PETER,
        StudyDate="",
        StudyTime="",
        AccessionNumber="",
        StudyID="",
        StudyDescription="",
        ReferringPhysicianName="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    studies = tree()[PETER]
    assert {a["StudyInstanceUID"] for a in answers} == set(studies)
    for a in answers:
        series = studies[a["StudyInstanceUID"]]
        assert a["PatientID"] == PETER
        assert a["NumberOfStudyRelatedSeries"] == str(len(series))
        assert a["NumberOfStudyRelatedInstances"] == str(sum(len(i) for i in series.values()))
    carotids = next(a for a in answers if a["StudyInstanceUID"] == CAROTIDS_STUDY)
    assert carotids == {
        "QueryRetrieveLevel": "STUDY",
        "PatientID": PETER,
        "StudyInstanceUID": CAROTIDS_STUDY,
        "StudyDate": "20030505",
        "StudyTime": "050743",
        "AccessionNumber": "428",
        "StudyID": "428",
        "StudyDescription": "Carotids",
        "ReferringPhysicianName": "",
        "ModalitiesInStudy": "MR",
        "NumberOfStudyRelatedSeries": "2",
        "NumberOfStudyRelatedInstances": "2",
    }


async def test_unique_keys_returned_per_root(loaded: Catalog) -> None:
    [patient_root] = await find(loaded, "PATIENT", "SERIES", SeriesInstanceUID=ANGIO_SERIES)
    assert list(patient_root) == [
        "QueryRetrieveLevel",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ]
    [study_root] = await find(loaded, "STUDY", "SERIES", SeriesInstanceUID=ANGIO_SERIES)
    assert list(study_root) == ["QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID"]
    assert study_root["StudyInstanceUID"] == MRA_STUDY


@pytest.mark.parametrize("root", ["PATIENT", "STUDY"])
async def test_series_level(loaded: Catalog, root: str) -> None:
    answers = await find(
        loaded,
        root,
        "SERIES",
        StudyInstanceUID=MRA_STUDY,
        Modality="",
        SeriesNumber="",
        SeriesDescription="",
        BodyPartExamined="",
        NumberOfSeriesRelatedInstances="",
    )
    series = tree()[PETER][MRA_STUDY]
    assert [a["SeriesNumber"] for a in answers] == ["1", "2", "700"]  # series-number order
    for a in answers:
        assert a["NumberOfSeriesRelatedInstances"] == str(len(series[a["SeriesInstanceUID"]]))
        assert a["Modality"] == "MR" and a["StudyInstanceUID"] == MRA_STUDY
    assert answers[0]["SeriesDescription"] == "FAST LOCALIZER"
    [cr] = await find(loaded, root, "SERIES", StudyInstanceUID=CR_STUDY, SeriesNumber="1")
    [cr_full] = await find(loaded, root, "SERIES", SeriesInstanceUID=cr["SeriesInstanceUID"],
                           BodyPartExamined="")  # fmt: skip
    assert cr_full["BodyPartExamined"] == "CSPINE"


@pytest.mark.parametrize("root", ["PATIENT", "STUDY"])
async def test_image_level(loaded: Catalog, root: str) -> None:
    answers = await find(
        loaded,
        root,
        "IMAGE",
        StudyInstanceUID=MRA_STUDY,
        SeriesInstanceUID=ANGIO_SERIES,
        InstanceNumber="",
        SOPClassUID="",
    )
    assert {a["SOPInstanceUID"] for a in answers} == tree()[PETER][MRA_STUDY][ANGIO_SERIES]
    numbers = [int(a["InstanceNumber"]) for a in answers]
    assert numbers == sorted(numbers) and len(numbers) == 7
    assert {a["SOPClassUID"] for a in answers} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert all(a["QueryRetrieveLevel"] == "IMAGE" for a in answers)
    assert ("PatientID" in answers[0]) == (root == "PATIENT")
    every = await find(loaded, root, "IMAGE")
    assert len(every) == 81


async def test_wildcards_and_case(loaded: Catalog) -> None:
    async def patients(name: str) -> set[str]:
        return {
            a["PatientName"] for a in await find(loaded, "PATIENT", "PATIENT", PatientName=name)
        }

    assert await patients("Doe*") == {"Doe^Archibald", "Doe^Peter"}
    assert await patients("DOE^P?TER") == {"Doe^Peter"}  # PN: case-insensitive
    assert await patients("*an") == {"Citizen^Jan"}
    assert await patients("doe^peter") == {"Doe^Peter"}
    assert await patients("Doe") == set()  # single value: the whole name
    assert await patients("D?e*") == {"Doe^Archibald", "Doe^Peter"}
    assert await patients("*") == {"Doe^Archibald", "Doe^Peter", "Citizen^Jan"}

    async def descriptions(value: str) -> set[str]:
        answers = await find(loaded, "STUDY", "STUDY", StudyDescription=value)
        return {a["StudyDescription"] for a in answers}

    # LO is case-sensitive (PS3.4): "BRAIN" in the head CT does not match "*Brain*".
    assert await descriptions("*Brain*") == {"Brain", "Brain-MRA"}
    assert await descriptions("*brain*") == set()
    assert await descriptions("Brain") == {"Brain"}
    assert await descriptions("Brain?MRA") == {"Brain-MRA"}
    modalities = await find(loaded, "STUDY", "SERIES", Modality="?R")
    assert {a["Modality"] for a in modalities} == {"CR", "MR"}


async def test_sql_wildcards_in_values_are_literal(catalog: Catalog) -> None:
    names = ["100%_Name", "100xxName", "A[b]c^D", "Ab^D", "back\\slash"]
    await catalog.add_instances(
        [
            make_record(f"1.3.{i}", data=bytes([i]), patient_id=f"P{i}", patient_name=name)
            for i, name in enumerate(names)
        ]
    )

    async def hits(value: str) -> list[str]:
        answers = await catalog.find(FindQuery("PATIENT", "PATIENT", {"PatientName": value}))
        return sorted(a["PatientName"] for a in answers)

    assert await hits("100%_name") == ["100%_Name"]
    assert await hits("100%*") == ["100%_Name"]
    assert await hits("a[b]*") == ["A[b]c^D"]
    assert await hits("[ab]*") == []
    assert await hits("*[b]*") == ["A[b]c^D"]
    assert await hits("back\\slash") == ["back\\slash"]


async def test_date_and_time_ranges(loaded: Catalog) -> None:
    async def studies(**keys: str) -> set[str]:
        return {a["StudyInstanceUID"] for a in await find(loaded, "STUDY", "STUDY", **keys)}

    may_2003 = {MRA_STUDY, BRAIN_STUDY, CAROTIDS_STUDY}
    tiny = {uid for uid in tree()[JAN]}
    assert await studies(StudyDate="20030505") == may_2003
    assert await studies(StudyDate="20020101-") == may_2003 | tiny
    assert await studies(StudyDate="-20021231") == {CR_STUDY, HEAD_CT_STUDY, SCORE_CT_STUDY}
    assert await studies(StudyDate="20010101-20030505") == may_2003 | {CR_STUDY, SCORE_CT_STUDY}
    assert await studies(StudyDate="19950903-19950903") == {HEAD_CT_STUDY}
    assert await studies(StudyDate="20050101-20060101") == set()
    assert await studies(StudyDate="20030505", StudyTime="0400-0500") == {MRA_STUDY}
    assert await studies(StudyTime="05") == {CAROTIDS_STUDY}  # the whole hour
    assert await studies(StudyTime="-000000") == {CR_STUDY, SCORE_CT_STUDY}
    assert await studies(StudyTime="173032.5-") == {HEAD_CT_STUDY}
    assert await studies(StudyTime="1619-1619") == tiny  # 16:19:00 within the minute
    assert await studies(PatientBirthDate="19000101-") == set()  # all empty here


async def test_empty_dates_never_match_a_range(catalog: Catalog) -> None:
    await catalog.add_instances(
        [
            make_record("1.4.1", data=b"1", study_uid="1.4.10", study_date="", study_time=""),
            make_record("1.4.2", data=b"2", study_uid="1.4.20", study_date="20240102"),
        ]
    )
    for key, value in [("StudyDate", "-20301231"), ("StudyDate", "19000101-")]:
        answers = await catalog.find(FindQuery("STUDY", "STUDY", {key: value}))
        assert [a["StudyInstanceUID"] for a in answers] == ["1.4.20"]
    answers = await catalog.find(FindQuery("STUDY", "STUDY", {"StudyTime": "-235959"}))
    assert [a["StudyInstanceUID"] for a in answers] == ["1.4.20"]


async def test_uid_lists(loaded: Catalog) -> None:
    wanted = f"{CR_STUDY}\\{CAROTIDS_STUDY}\\1.2.3.4.5.6"
    answers = await find(loaded, "STUDY", "STUDY", StudyInstanceUID=wanted)
    assert {a["StudyInstanceUID"] for a in answers} == {CR_STUDY, CAROTIDS_STUDY}
    many = "\\".join([CR_STUDY] + [f"1.2.{i}" for i in range(MAX_UIDS - 1)])
    assert len(await find(loaded, "STUDY", "STUDY", StudyInstanceUID=many)) == 1
    with pytest.raises(QueryTooLarge):
        await find(loaded, "STUDY", "STUDY", StudyInstanceUID=many + "\\1.2.3")
    with pytest.raises(InvalidQuery):
        await find(loaded, "STUDY", "STUDY", StudyInstanceUID="1." + "2" * 64)


async def test_modalities_in_study(loaded: Catalog, catalog: Catalog) -> None:
    async def studies(value: str) -> dict[str, str]:
        answers = await find(loaded, "STUDY", "STUDY", ModalitiesInStudy=value)
        return {a["StudyInstanceUID"]: a["ModalitiesInStudy"] for a in answers}

    assert await studies("CR") == {CR_STUDY: "CR"}
    assert set(await studies("MR")) == {MRA_STUDY, BRAIN_STUDY, CAROTIDS_STUDY}
    assert set(await studies("CT\\CR")) == {CR_STUDY, HEAD_CT_STUDY, SCORE_CT_STUDY} | set(
        tree()[JAN]
    )
    assert set(await studies("C?")) == set(await studies("CT\\CR"))
    assert await studies("US") == {}
    # A study with two modalities lists both, sorted and backslash-joined.
    await catalog.add_instances(
        [
            make_record("1.6.1", data=b"1", study_uid="1.6.0", series_uid="1.6.2", modality="MR"),
            make_record("1.6.3", data=b"3", study_uid="1.6.0", series_uid="1.6.4", modality="CT"),
        ]
    )
    [mixed] = await find(catalog, "STUDY", "STUDY", StudyInstanceUID="1.6.0", ModalitiesInStudy="")
    assert mixed["ModalitiesInStudy"] == "CT\\MR"


async def test_hierarchical_constraints(loaded: Catalog) -> None:
    [series] = await find(loaded, "PATIENT", "SERIES", PatientName="Doe^Archibald", Modality="CT")
    assert series["StudyInstanceUID"] == HEAD_CT_STUDY
    images = await find(loaded, "STUDY", "IMAGE", StudyDescription="Brain", InstanceNumber="2")
    assert len(images) == 1 and images[0]["StudyInstanceUID"] == BRAIN_STUDY
    [angio] = await find(loaded, "STUDY", "SERIES", SeriesNumber="700")
    assert angio["SeriesInstanceUID"] == ANGIO_SERIES
    assert await find(loaded, "PATIENT", "STUDY", PatientID=JAN, StudyDate="20030505") == []


async def test_unknown_and_lower_level_keys_are_returned_empty(loaded: Catalog) -> None:
    answers = await find(
        loaded, "STUDY", "STUDY", PatientComments="anything", Modality="XX", StudyID=""
    )
    assert len(answers) == 7
    assert all(a["PatientComments"] == "" and a["Modality"] == "" for a in answers)
    # Counts are return keys only; a value given for them is ignored.
    assert len(await find(loaded, "STUDY", "STUDY", NumberOfStudyRelatedSeries="99")) == 7


@pytest.mark.parametrize(
    "keys",
    [
        {"PatientName": "' OR 1=1 --"},
        {"PatientID": "x' OR '1'='1"},
        {"StudyInstanceUID": "1' OR 1=1 --"},
        {"StudyDescription": "'; DROP TABLE patients; --"},
        {"AccessionNumber": '" OR ""="'},
        {"ModalitiesInStudy": "CT') OR 1=1 --"},
        {"PatientName": "*' OR 1=1 --*"},
    ],
)
async def test_injection_looking_values_match_nothing(
    loaded: Catalog, keys: dict[str, str]
) -> None:
    before = await loaded.counts()
    assert await loaded.find(FindQuery("STUDY", "STUDY", keys)) == []
    assert await loaded.counts() == before


async def test_bounds_and_malformed_values_are_refused(loaded: Catalog) -> None:
    with pytest.raises(QueryTooLarge) as caught:
        await find(loaded, "STUDY", "STUDY", PatientName="A" * 1025)
    assert isinstance(caught.value, LimitExceeded) and isinstance(caught.value, MeshError)
    assert "A" * 20 not in str(caught.value)  # names the key, never the value
    assert await find(loaded, "STUDY", "STUDY", PatientName="A" * 1024) == []
    with pytest.raises(QueryTooLarge):
        await loaded.find(FindQuery("STUDY", "STUDY", {f"K{i}": "" for i in range(300)}))
    with pytest.raises(QueryTooLarge):
        await loaded.find(FindQuery("STUDY", "IMAGE", {}), limit=80)
    assert len(await loaded.find(FindQuery("STUDY", "IMAGE", {}), limit=81)) == 81
    for keys in (
        {"StudyDate": "2003-05-05"},
        {"StudyDate": "yesterday"},
        {"StudyDate": "-"},
        {"StudyDate": "2003*"},
        {"StudyTime": "25:00"},
        {"StudyTime": "1"},
        {"SeriesNumber": "one"},
        {"SeriesNumber": "1*"},
    ):
        with pytest.raises(InvalidQuery):
            await loaded.find(FindQuery("STUDY", "SERIES", keys))
    for root, level in (("STUDY", "FRAME"), ("WORKLIST", "STUDY")):
        with pytest.raises(InvalidQuery):
            await find(loaded, root, level)
