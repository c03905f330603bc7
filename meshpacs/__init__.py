"""meshpacs: a peer-to-peer federated PACS backup mesh.

Studies a PACS pushes to the node are kept as the exact bytes received, packed into
bundles, encrypted, erasure-coded k-of-n and spread over partner hospitals; after a
failure the site rebuilds its archive from any k fragments of each bundle, through DICOM.

Imports point one way, top to bottom (``tests/test_architecture.py`` checks it)::

    cli -> testbed -> node, selftest, sim -> upkeep -> backup, recovery -> dicom -> metadata
        -> transport -> store -> erasure, audit, dht -> federation, trail
        -> keys, durable, testing -> errors
"""

__version__ = "0.1.0"
