"""``meshpacs recover`` records its run as an Import event in WORKDIR/trail, which the
rebuilt site's ``meshpacs audit verify --trail`` then checks with the same key."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.cli.recover import _record_import
from meshpacs.dicom.scu import Target
from meshpacs.keys import SiteSecret
from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.site import create_site
from meshpacs.recovery.command import RecoverRequest
from meshpacs.recovery.report import RecoveryReport
from meshpacs.recovery.session import RecoveryCredentials
from meshpacs.trail import trail_dir
from meshpacs.trail.log import read_entries


def a_report(delivered: int) -> RecoveryReport:
    return RecoveryReport(
        target="ORTHANC@127.0.0.1:4242", studies_planned=3, studies_delivered=delivered,
        instances_planned=30, instances_delivered=delivered * 10, instances_resumed=0,
        instances_this_run=delivered * 10, bytes_planned=300, bytes_delivered=delivered * 100,
        bytes_resumed=0, bytes_this_run=delivered * 100, seconds=1.0, unrecoverable=(),
        failed=(), failed_count=0,
    )  # fmt: skip


def test_each_run_is_an_import_event_verifiable_by_the_rebuilt_site(tmp_path: Path) -> None:
    secret = SiteSecret.generate()
    request = RecoverRequest(
        secret=secret,
        credentials=RecoveryCredentials("st-marys", b"", b"", b"", (("127.0.0.1", 1),)),
        workdir=tmp_path / "work",
        to_ae=Target("ORTHANC", "127.0.0.1", 4242, "MESHPACS_RCV"),
    )
    _record_import(request, a_report(3), "")
    _record_import(request, a_report(1), "")
    _record_import(request, None, "no catalog record of this site was found")

    key = audit_trail_key(secret)
    events = [ET.fromstring(e.message) for e in read_entries(trail_dir(request.workdir), key)]
    assert len(events) == 4
    start = events.pop(0).find("EventIdentification/EventTypeCode")
    assert start is not None and start.get("csd-code") == "110134"  # audit recording started
    outcomes = []
    for event in events:
        ident = event.find("EventIdentification")
        code = event.find("EventIdentification/EventID")
        assert ident is not None and code is not None
        assert (code.get("csd-code"), ident.get("EventActionCode")) == ("110107", "C")
        outcomes.append(ident.get("EventOutcomeIndicator"))
        users = [p.get("UserID") for p in event.findall("ActiveParticipant")]
        assert "ORTHANC@127.0.0.1:4242" in users and "federation of st-marys" in users
    assert outcomes == ["0", "4", "8"]
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode()
        for d in events[0].iter("ParticipantObjectDetail")
    }
    assert details == {"NumberOfStudies": "3", "NumberOfInstances": "30"}
    assert events[2].findtext("EventIdentification/EventOutcomeDescription") == (
        "no catalog record of this site was found"
    )

    rebuilt = create_site(tmp_path / "site", "st-marys", "MESH_STM", 11112, {}, secret=secret)
    runner = CliRunner()
    args = ["audit", "verify", "--config", str(rebuilt.config_path)]
    result = runner.invoke(app, [*args, "--trail", str(trail_dir(request.workdir))])
    assert result.exit_code == 0 and "4 entries" in result.stdout, result.output
    other = create_site(tmp_path / "other", "general", "MESH_GEN", 11112, {})
    result = runner.invoke(
        app,
        ["audit", "verify", "--config", str(other.config_path), "--trail",
         str(trail_dir(request.workdir))],
    )  # fmt: skip
    assert result.exit_code == 1 and "does not verify with this site's key" in result.stderr
