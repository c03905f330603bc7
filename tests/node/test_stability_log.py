"""The node with the mesh off queues stable studies itself, and logs them as the backup
pass does: one ``studies_stable`` event with the count, no UID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from meshpacs.metadata import Catalog
from meshpacs.node.daemon import _watch_stability
from tests.metadata.helpers import make_record
from tests.node.logfields import event_fields

STUDIES = ("1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")


async def test_studies_found_stable_are_one_event_with_their_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshpacs.node")
    async with await Catalog.open(tmp_path / "catalog.sqlite") as catalog:
        for number, study in enumerate(STUDIES):
            record = make_record(f"{study}.1.1", data=bytes([number]) * 64, study_uid=study,
                                 series_uid=f"{study}.1")  # fmt: skip
            await catalog.add_instances([record])
        watcher = asyncio.create_task(_watch_stability(catalog, 0.0))
        try:
            for _ in range(100):
                if event_fields(caplog.records, "studies_stable"):
                    break
                await asyncio.sleep(0.05)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    (line,) = event_fields(caplog.records, "studies_stable")
    assert (line["level"], line["logger"], line["studies"]) == ("INFO", "meshpacs.node", 2)
    assert line["msg"] == "2 studies stable and queued for backup"
    assert not any(study in caplog.text for study in STUDIES)
