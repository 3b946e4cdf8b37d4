"""The HTTP front end: DICOMweb (STOW-RS, QIDO-RS, WADO-RS), health and admin endpoints."""
