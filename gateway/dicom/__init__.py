"""DICOM helpers: wire-value checks, header parsing, transfer syntaxes."""
