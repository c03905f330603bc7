"""The node's DICOM face: C-STORE ingest of exact bytes, Query/Retrieve. Nothing lives
here yet; the DICOM AE issue builds it."""
