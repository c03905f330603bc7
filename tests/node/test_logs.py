"""The node's log lines: both formats, one line per event, the UID net on and off."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from meshpacs.dicom.scp import configure_pynetdicom
from meshpacs.metadata import ledger
from meshpacs.node.logs import (
    UID_MARKER,
    VALUE_MARKER,
    configure_logging,
    formatter_for,
    scrub_uids,
)
from meshpacs.testing.loopback import free_port
from meshpacs.upkeep import Auditor, AuditSettings
from tests.backup.helpers import open_site
from tests.node.logfmt import parse_kv, parse_line
from tests.upkeep.helpers import DirHolders

UID = "1.2.840.113619.2.55.3.604688119.971.1234567890.123"
FORMS = ["kv", "json"]


def record(
    msg: str = "an event",
    *args: object,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
    name: str = "meshpacs.test",
    level: int = logging.INFO,
) -> logging.LogRecord:
    """A record as a logger call makes it (``extra`` set on it the same way)."""
    logger = logging.getLogger(name)
    return logger.makeRecord(name, level, __file__, 1, msg, args, exc_info, extra=extra)


def line(form: str, rec: logging.LogRecord, *, log_phi: bool = False) -> str:
    return formatter_for(form, log_phi=log_phi).format(rec)


def fields(form: str, rec: logging.LogRecord, *, log_phi: bool = False) -> dict[str, Any]:
    text = line(form, rec, log_phi=log_phi)
    assert "\n" not in text and "\r" not in text
    assert text.splitlines() == [text]
    return parse_line(text, form)


def failing() -> Any:
    try:
        raise RuntimeError(f"fragment of {UID} unreadable\nsecond line")
    except RuntimeError:
        return sys.exc_info()


def test_kv_line_has_the_fixed_keys_then_the_extras_in_call_order() -> None:
    extra = {"bundle": "3f9a1c2e", "bytes": 1024, "k": 4, "n": 6, "sites": ["b", "c"]}
    rec = record("bundle %s placed", "3f9a1c2e", extra=extra)
    text = line("kv", rec)
    assert text.startswith("ts=")
    assert text.endswith(
        ' level=INFO logger=meshpacs.test msg="bundle 3f9a1c2e placed"'
        " bundle=3f9a1c2e bytes=1024 k=4 n=6 sites=b,c"
    )
    assert [key for key, _ in parse_kv(text)] == [
        "ts", "level", "logger", "msg", "bundle", "bytes", "k", "n", "sites",
    ]  # fmt: skip


def test_json_line_has_the_same_keys_and_typed_values() -> None:
    extra = {"bundle": "3f9a", "bytes": 1024, "ok": True, "none": None, "sites": ("b", "c")}
    rec = record("bundle placed", extra={**extra, "by": {"b": 1}})
    got = fields("json", rec)
    assert list(got) == ["ts", "level", "logger", "msg", "bundle", "bytes", "ok", "none", "sites",
                         "by"]  # fmt: skip
    assert got["msg"] == "bundle placed" and got["level"] == "INFO"
    assert got["bytes"] == 1024 and got["ok"] is True and got["none"] is None
    assert got["sites"] == ["b", "c"] and got["by"] == {"b": 1}


NASTY = [
    "two words",
    'a "quoted" word',
    "key=value",
    "back\\slash",
    "line one\nline two\r\n",
    "tab\there",
    "bell\x07 and nul\x00 and del\x7f",
    "unicode line\u2028separator\u2029and next\x85line",
    "group\x1dseparators\x1c",
    "",
    "été",
]


@pytest.mark.parametrize("value", NASTY)
@pytest.mark.parametrize("form", FORMS)
def test_values_are_escaped_so_they_never_break_the_line(form: str, value: str) -> None:
    got = fields(form, record("said %s", value, extra={"note": value}))
    assert got["msg"] == f"said {value}"
    assert got["note"] == value


def test_kv_quotes_only_values_that_need_it() -> None:
    text = line("kv", record("x", extra={"plain": "abc-1.2", "spaced": "a b", "empty": ""}))
    assert ' plain=abc-1.2 spaced="a b" empty=""' in text
    assert 'msg="x"' in text  # the sentence is always quoted


def test_an_extra_named_like_a_fixed_key_does_not_shadow_it() -> None:
    for form in FORMS:
        got = fields(form, record("x", extra={"level": "mine", "ts": 1}))
        assert got["level"] == "INFO" and got["level_"] == "mine" and got["ts_"] in (1, "1")


def test_a_non_finite_float_still_makes_valid_json() -> None:
    text = line("json", record("x", extra={"ratio": float("nan")}))
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))["ratio"] == "nan"


@pytest.mark.parametrize("form", FORMS)
def test_an_exception_goes_into_exc_on_the_same_line(form: str) -> None:
    got = fields(form, record("audit failed", exc_info=failing(), level=logging.ERROR))
    assert got["msg"] == "audit failed" and got["level"] == "ERROR"
    assert list(got)[-1] == "exc"
    assert got["exc"].startswith("Traceback (most recent call last):\n")
    assert "RuntimeError: fragment of <uid> unreadable\nsecond line" in got["exc"]


@pytest.mark.parametrize("form", FORMS)
def test_uids_are_masked_in_msg_extras_and_exc(form: str) -> None:
    extra = {"study": UID, "uids": [UID, "2.25.1.2.3.4"], "wrapped": f"({UID})."}
    rec = record("study %s stored", UID, exc_info=failing(), extra=extra)
    text = line(form, rec)
    assert "1.2.840.113619" not in text and "2.25.1.2.3.4" not in text
    got = parse_line(text, form)
    assert got["msg"] == f"study {UID_MARKER} stored"
    assert got["study"] == UID_MARKER
    assert got["wrapped"] == f"({UID_MARKER})."
    assert UID_MARKER in got["exc"]
    expected_list = [UID_MARKER, UID_MARKER]
    assert got["uids"] == (expected_list if form == "json" else ",".join(expected_list))


@pytest.mark.parametrize("form", FORMS)
def test_log_phi_lets_uids_through(form: str) -> None:
    got = fields(form, record("study %s", UID, extra={"study": UID}, exc_info=failing()),
                 log_phi=True)  # fmt: skip
    assert got["msg"] == f"study {UID}" and got["study"] == UID
    assert UID in got["exc"] and UID_MARKER not in got["exc"]


# What pydicom and pynetdicom log at WARNING, values and all.
LIBRARY_LINES = {
    "pydicom": "Invalid value for VR DA: '20200101-2020'. Please see <https://dicom.nema.org>",
    "pynetdicom.utils": "Non-conformant 'Patient Name' value 'DOE^JANE'",
    "py.warnings": "valuerep.py:440: UserWarning: Invalid value for VR PN: 'DOE^JANE'",
}


@pytest.mark.parametrize("name", LIBRARY_LINES)
@pytest.mark.parametrize("form", FORMS)
def test_values_the_dicom_libraries_quote_are_masked(form: str, name: str) -> None:
    text = LIBRARY_LINES[name]
    got = fields(form, record(text, name=name, level=logging.WARNING))["msg"]
    assert "DOE^JANE" not in got and "20200101" not in got
    assert VALUE_MARKER in got and got.split(VALUE_MARKER)[0] == text.split("'")[0]
    assert fields(form, record(text, name=name), log_phi=True)["msg"] == text


def test_quoted_parts_of_the_nodes_own_lines_are_kept() -> None:
    text = "unknown option 'fast' in [backup]"
    assert fields("kv", record(text, name="meshpacs.node"))["msg"] == text


KEPT = [
    "peer at 10.0.0.1:11112",
    "listening on 192.168.100.254",
    "pynetdicom 3.0.4, python 3.11.7",
    "root 1.2.840.10008 (four components)",
    "took 0.25 s, 12.5 MB/s",
    "ts=2026-12-07T12:00:00.123Z",
]


@pytest.mark.parametrize("text", KEPT)
def test_ipv4_addresses_versions_and_numbers_are_kept(text: str) -> None:
    assert scrub_uids(text) == text
    assert fields("kv", record(text))["msg"] == text


def test_a_uid_at_the_end_of_a_sentence_is_masked_whole() -> None:
    assert scrub_uids(f"instance {UID}.") == f"instance {UID_MARKER}."
    assert scrub_uids("a 1.2.3.4.5 b") == f"a {UID_MARKER} b"  # five components: masked


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="kv, json"):
        formatter_for("xml")


@pytest.fixture
def configure() -> Iterator[Callable[..., io.StringIO]]:
    """configure_logging, its handler's stream kept for the test; the root given back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook)
    levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "kademlia")}

    def configured(*args: Any) -> io.StringIO:
        configure_logging(*args)
        stream = io.StringIO()
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
        handler.setStream(stream)
        return stream

    try:
        yield configured
    finally:
        root.handlers[:], level, threading.excepthook = saved
        root.setLevel(level)
        logging.captureWarnings(False)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)


def lines_of(stream: io.StringIO, form: str) -> list[dict[str, Any]]:
    return [parse_line(text, form) for text in stream.getvalue().splitlines()]


@pytest.mark.parametrize("form", FORMS)
def test_pynetdicom_lines_come_out_in_the_chosen_format(
    configure: Callable[..., io.StringIO], form: str
) -> None:
    stream = configure("INFO", form)
    configure_pynetdicom()  # pynetdicom at WARNING, as the node runs it
    ae = AE(ae_title="LOGTEST")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", free_port())  # nothing listens: pynetdicom logs why
    assert not assoc.is_established
    got = lines_of(stream, form)
    from_pynetdicom = [f for f in got if f["logger"].startswith("pynetdicom")]
    assert from_pynetdicom, stream.getvalue()
    assert {f["level"] for f in from_pynetdicom} <= {"WARNING", "ERROR", "CRITICAL"}


def test_warnings_and_thread_crashes_are_one_line_each(
    configure: Callable[..., io.StringIO],
) -> None:
    stream = configure("INFO", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"about {UID}", UserWarning, stacklevel=1)

    def crash() -> None:
        raise RuntimeError("thread died\nbadly")

    thread = threading.Thread(target=crash, name="crasher")
    thread.start()
    thread.join()
    got = lines_of(stream, "json")
    assert [f["logger"] for f in got] == ["py.warnings", "meshpacs"]
    assert UID not in got[0]["msg"] and UID_MARKER in got[0]["msg"]
    assert got[1]["level"] == "CRITICAL" and "crasher" in got[1]["msg"]
    assert "RuntimeError: thread died\nbadly" in got[1]["exc"]


def test_kademlia_stays_quiet_below_warning(configure: Callable[..., io.StringIO]) -> None:
    stream = configure("DEBUG", "kv")
    logging.getLogger("kademlia.crawling").info("crawling step")
    logging.getLogger("kademlia.network").warning("no known neighbours")
    logging.getLogger("meshpacs.node").debug("a debug line")
    got = lines_of(stream, "kv")
    assert [(f["logger"], f["msg"]) for f in got] == [
        ("kademlia.network", "no known neighbours"),
        ("meshpacs.node", "a debug line"),
    ]


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The JSON lines of the records of ``event``, as the node would write them."""
    json_lines = formatter_for("json")
    found = [json.loads(json_lines.format(r)) for r in caplog.records]
    return [fields for fields in found if fields.get("event") == event]


async def test_a_backup_pass_and_an_audit_log_their_figures_as_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_site(tmp_path) as site:
        await site.receive(3, size=20_000)
        await site.service().run_once()
        site.clock.advance(1)
        holders = DirHolders(site.partners.root)
        result = await Auditor(
            site.catalog, holders, AuditSettings(), clock=site.clock
        ).audit_once()
        assert result is not None
        length = (await site.catalog.read(partial(ledger.bundle, ref=1))).length
        placed = await site.catalog.read(lambda db: ledger.placements(db, 1))
    (stable,) = events(caplog, "studies_stable")
    assert stable["studies"] == 1 and stable["logger"] == "meshpacs.backup"
    (bundle,) = events(caplog, "bundle_placed")
    assert re.fullmatch(r"[0-9a-f]{8}", bundle["bundle"]) and bundle["bundle"] in bundle["msg"]
    assert (bundle["bytes"], bundle["k"], bundle["n"], bundle["state"]) == (length, 2, 4, "stored")
    assert bundle["sites"] == [p.holder_site for p in placed]
    assert len(set(bundle["sites"])) == 4 and "owner" not in bundle["sites"]
    (protected,) = events(caplog, "study_protected")
    assert protected["study_row"] == 1
    (audit,) = events(caplog, "audit")
    assert (audit["site"], audit["share"], audit["outcome"]) == (
        result.holder_site, result.share, "ok",
    )  # fmt: skip
    assert audit["bundle_row"] == 1 and audit["challenges_left"] == result.remaining
    assert isinstance(audit["latency_ms"], float) and 0 <= audit["reputation"] <= 1
    assert "1.2.3.4." not in caplog.text  # the instances' UIDs (short, but still)
