"""A whole federation on one machine, for tests, demos and disaster drills.

* :mod:`~meshpacs.testbed.layout`: CA, sites, configs and phrases laid out on disk.
"""

from meshpacs.testbed.layout import (
    TESTBED_FILE,
    TestbedPlan,
    TestbedSite,
    create_testbed,
    load_testbed,
)

__all__ = ["TESTBED_FILE", "TestbedPlan", "TestbedSite", "create_testbed", "load_testbed"]
