"""A real Orthanc that counts every instance it receives, for "nothing delivered twice" tests.

Orthanc calls the Lua callback ``ReceivedInstanceFilter`` for every instance a C-STORE (or
REST) hands it, before it looks in its index: also for an instance it already holds, which
it then answers with Success without storing it again (``/statistics`` does not move). The
script prints one marker line per call, with the SOP Instance UID, to Orthanc's log (its
``print`` becomes ``Lua says: ...``, a WARNING line OrthancProcess captures in
``orthanc.log``); :meth:`CountingOrthanc.received` counts those lines. Whether a repeat is
counted is proven by each test that relies on it, by storing one instance twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.scu import Target
from meshpacs.testing.orthanc import OrthancProcess, orthanc_available

needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")

MARKER = "MESHPACS-RECEIVED"
_LINE = re.compile(rf"Lua says: {MARKER} ([0-9.]+)\s*$", re.MULTILINE)
_SCRIPT = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  print('{MARKER} ' .. dicom.SOPInstanceUID)
  return true
end
"""


class CountingOrthanc(OrthancProcess):
    """Orthanc with the counting script; ``allow_find``: answer C-FIND from any AE."""

    def __init__(self, directory: Path, *, allow_find: bool = True, **options: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "count-received.lua"
        script.write_text(_SCRIPT, encoding="utf-8")
        config = {"DicomAlwaysAllowFind": allow_find, **options.pop("config", {})}
        super().__init__(directory, lua_script=script, config=config, **options)

    def target(self, calling: str = "MESHRECOVER") -> Target:
        return Target(self.aet, "127.0.0.1", self.dicom_port, calling)

    def received(self) -> Counter[str]:
        """How many times each SOP Instance UID reached Orthanc, repeats included."""
        return Counter(_LINE.findall(self.log_path.read_text(errors="replace")))

    def received_settled(self, expected: int, timeout: float = 10.0) -> Counter[str]:
        """:meth:`received` once it counts at least ``expected`` calls (the log is written
        by Orthanc's threads; give the last line a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            counted = self.received()
            if sum(counted.values()) >= expected or time.monotonic() > deadline:
                return counted
            time.sleep(0.05)

    def datasets(self) -> dict[str, bytes]:
        """SOP Instance UID -> the dataset bytes (after the file meta group) Orthanc holds."""
        found: dict[str, bytes] = {}
        for orthanc_id in self.rest("GET", "/instances"):
            tags = self.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
            data = self.rest_raw("GET", f"/instances/{orthanc_id}/file")
            found[str(tags["SOPInstanceUID"])] = data[dataset_offset(data) :]
        return found
