"""Reading and writing scans: NIfTI, NRRD, MetaImage, DICOM; finding cases in folders."""
