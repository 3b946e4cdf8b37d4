"""The DIMSE door: a pynetdicom listener whose handlers call the ingest use case."""
