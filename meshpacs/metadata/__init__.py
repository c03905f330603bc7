"""The catalog of patients, studies, series, instances and bundle keys, kept only at
the site and its trusted peers. Nothing lives here yet; the DICOM AE issue builds it."""
