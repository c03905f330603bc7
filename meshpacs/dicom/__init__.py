"""The node's DICOM face: C-STORE ingest of exact bytes (``scp``, ``acceptor``,
``receiver``, ``ingest``), Query/Retrieve (``qr``), and the SCU side that delivers exact
files to a PACS (``scu``, ``sender``)."""
