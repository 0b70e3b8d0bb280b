"""sbrt-check: protocol compliance checking of SBRT plans exported as DICOM RT."""

__version__ = "0.1.0"
