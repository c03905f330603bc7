"""A whole federation on one machine, for tests, demos and disaster drills.

* :mod:`~meshpacs.testbed.layout`: CA, sites, configs and phrases laid out on disk.
* :mod:`~meshpacs.testbed.processes`: every node (and Orthanc) its own process, stopped by
  PID only while that PID still runs what the testbed started.
* :mod:`~meshpacs.testbed.orthanc`: with ``--with-orthanc``, a real Orthanc per site running
  the shipped auto-forward script (``docs/orthanc/``) towards its node.
* :mod:`~meshpacs.testbed.demo`: the short drill: protection, placement, no PHI outside.
* :mod:`~meshpacs.testbed.drill`: the disaster drill the README's main command runs:
  site A lost, recovered through DICOM into an empty Orthanc, compared byte for byte.
"""

from meshpacs.testbed.layout import (
    TESTBED_FILE,
    TestbedPlan,
    TestbedSite,
    create_testbed,
    load_testbed,
)

__all__ = ["TESTBED_FILE", "TestbedPlan", "TestbedSite", "create_testbed", "load_testbed"]
