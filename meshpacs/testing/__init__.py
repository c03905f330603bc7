"""Test and demo helpers shipped in the package.

They live in ``meshpacs`` rather than under ``tests/`` so that the demo, the benchmarks and
downstream integration tests can use the same data as the unit tests. Nothing here is used
by the node itself.

* :mod:`meshpacs.testing.synth`: a deterministic synthetic DICOM study generator (CT and MR,
  Explicit VR Little Endian or RLE Lossless), with safe, counter-based file writing.
* :mod:`meshpacs.testing.orthanc`: a real Orthanc server as a test peer, a child process
  with its own config, free ports and storage directory, stopped by PID.
"""

from meshpacs.testing.orthanc import (
    ORTHANC_BINARY,
    Modality,
    OrthancError,
    OrthancProcess,
    OrthancUnavailable,
    free_port,
    orthanc_available,
)
from meshpacs.testing.synth import (
    DEFAULT_STUDY,
    MAX_SERIES_IMAGES,
    TRANSFER_SYNTAXES,
    UID_ROOT,
    SeriesSpec,
    StudySpec,
    SynthInstance,
    generate_archive,
    generate_study,
    spec_of_size,
    study_of_size,
    write_study,
)

__all__ = [
    "DEFAULT_STUDY",
    "MAX_SERIES_IMAGES",
    "ORTHANC_BINARY",
    "TRANSFER_SYNTAXES",
    "UID_ROOT",
    "Modality",
    "OrthancError",
    "OrthancProcess",
    "OrthancUnavailable",
    "SeriesSpec",
    "StudySpec",
    "SynthInstance",
    "free_port",
    "generate_archive",
    "generate_study",
    "orthanc_available",
    "spec_of_size",
    "study_of_size",
    "write_study",
]
