"""dicom-gateway: a DICOMweb-first cloud gateway and hybrid DIMSE/DICOMweb bridge."""

__version__ = "0.1.0"
