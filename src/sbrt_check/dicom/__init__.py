"""Reading DICOM RT objects: which files are what, and what they say, checked on the way in."""
