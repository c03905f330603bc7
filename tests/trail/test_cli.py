"""``meshpacs audit verify`` on a real site, and the events the node and commands record."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import load_config
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.trail import TrailWriter, trail_dir
from meshpacs.trail.log import HEAD_FILE, LOG_FILE, Entry, read_entries
from meshpacs.trail.messages import AuditSource, application_activity

from ..cli.test_forget_cli import FORGET, a_site_with_two_studies


def run(*args: str | Path, answer: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, [str(a) for a in args], input=answer, env={"COLUMNS": "200", "NO_COLOR": "1"}
    )
    return result.exit_code, result.stdout, result.stderr


def read_entries_of(config_path: Path) -> list[Entry]:
    config = load_config(config_path)
    key = audit_trail_key(load_site_secret(config.key_file))
    return list(read_entries(trail_dir(config.data_dir), key))


def events_of(config_path: Path) -> list[ET.Element]:
    return [ET.fromstring(entry.message) for entry in read_entries_of(config_path)]


def outcome_of(root: ET.Element) -> str:
    ident = root.find("EventIdentification")
    assert ident is not None
    return str(ident.get("EventOutcomeIndicator"))


def event_code(root: ET.Element) -> str:
    element = root.find("EventIdentification/EventID")
    assert element is not None
    return str(element.get("csd-code"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    created = create_site(tmp_path / "site", "st-marys", "MESH_STM", 11112, {})
    config = load_config(created.config_path)
    writer = TrailWriter.for_site(
        config.data_dir, load_site_secret(config.key_file), AuditSource("MESH_STM", "st-marys")
    )
    for started in (True, False, True):
        writer.record(application_activity(writer.application, started=started))
    return created.config_path


def log_of(config_path: Path) -> Path:
    return trail_dir(load_config(config_path).data_dir) / LOG_FILE


def test_help_explains_what_is_checked_and_the_exit_statuses() -> None:
    code, out, _ = run("audit", "verify", "--help")
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0
    for words in ("--config", "--json", "--trail", "Exit status: 0 intact", "truncation",
                  "security officer", "3 there is no audit trail"):  # fmt: skip
        assert words in text, words


def test_an_intact_trail_exits_0(site: Path) -> None:
    code, out, err = run("audit", "verify", "--config", site)
    assert code == 0, err
    assert "Audit trail intact: 4 entries" in out  # the trail's start, then 3
    code, out, _ = run("audit", "verify", "--config", site, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["entries"] == 4
    assert report["exit_code"] == 0 and report["first_bad"] is None


def test_a_changed_byte_exits_1_naming_the_entry(site: Path) -> None:
    log = log_of(site)
    data = bytearray(log.read_bytes())
    first_end = read_entries_of(site)[0].end
    data[first_end + 60] ^= 0x20  # inside the second entry's message
    log.write_bytes(bytes(data))
    code, _, err = run("audit", "verify", "--config", site)
    assert code == 1
    assert "AUDIT TRAIL BROKEN at entry 2" in err and "chain hash" in err
    code, out, _ = run("audit", "verify", "--config", site, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["first_bad"] == 2
    assert report["exit_code"] == 1


def test_a_truncated_trail_exits_1(site: Path) -> None:
    last = read_entries_of(site)[-1]
    log = log_of(site)
    log.write_bytes(log.read_bytes()[: last.offset])
    code, _, err = run("audit", "verify", "--config", site)
    assert code == 1
    assert "entries were cut from the end" in err and "signed head records 4" in err


def test_no_trail_exits_3_and_an_unusable_key_2(tmp_path: Path, site: Path) -> None:
    fresh = create_site(tmp_path / "fresh", "general", "MESH_GEN", 11112, {})
    code, _, err = run("audit", "verify", "--config", fresh.config_path)
    assert code == 3 and "there is no audit trail" in err
    key_file = load_config(site).key_file
    key_file.chmod(0o644)
    code, _, err = run("audit", "verify", "--config", site)
    assert code == 2 and "chmod 600" in err


def test_a_trail_elsewhere_is_checked_with_the_sites_key(tmp_path: Path, site: Path) -> None:
    directory = trail_dir(load_config(site).data_dir)
    moved = tmp_path / "elsewhere"
    directory.rename(moved)
    code, out, _ = run("audit", "verify", "--config", site, "--trail", moved)
    assert code == 0 and "4 entries" in out
    (moved / HEAD_FILE).unlink()
    code, _, err = run("audit", "verify", "--config", site, "--trail", moved)
    assert code == 1 and "head file atna.head is missing" in err


def test_forget_records_a_study_deleted_event_without_the_uid(tmp_path: Path) -> None:
    config, _ = a_site_with_two_studies(tmp_path)
    code, _, err = run("forget", "--config", config, "--study", FORGET, "--yes", "--json")
    assert code == 0, err
    code, _, _ = run("forget", "--config", config, "--study", "9.9.9", "--yes")
    assert code == 2
    events = events_of(config)
    assert [event_code(e) for e in events] == ["110113", "110105", "110105"]
    done, unknown = events[1:]
    for event in (done, unknown):
        ident = event.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") == "D"
        assert FORGET.encode() not in ET.tostring(event) and b"9.9.9" not in ET.tostring(event)
    assert (outcome_of(done), outcome_of(unknown)) == ("0", "4")
    obj = done.find("ParticipantObjectIdentification")
    assert obj is not None and re.fullmatch(r"[0-9a-f]{64}", obj.get("ParticipantObjectID", ""))
    requestor = done.find("ActiveParticipant")
    assert requestor is not None and requestor.get("UserIsRequestor") == "true"
    code, out, _ = run("audit", "verify", "--config", config)
    assert code == 0 and "3 entries" in out
