"""Limits of a usable CT and plausible ranges of header values, shared by the readers and their checks.

The sources of the limits are given beside each one. ``KVP_RANGE`` is also
the range of the effective-energy table of :mod:`ctbmd.calibrate.energy`.
"""

#: Fewest slices and smallest cranio-caudal extent (mm) that can hold one
#: vertebral body: lumbar bodies are ~25-30 mm tall, thoracic ~20-25 mm
#: (Panjabi et al., Spine 1991/1992). Below this no level can be measured.
MIN_SLICES = 5
MIN_Z_EXTENT_MM = 30.0
#: HU assigned to padding / outside-FOV values (air). DICOM padding is often
#: -2000 or -3024 after rescale.
AIR_HU = -1024.0
#: A slice step larger than this multiple of the median step is a gap (missing slices).
GAP_FACTOR = 1.5
#: Tolerated in-plane shear of slice positions, degrees; more is gantry tilt.
MAX_TILT_DEG = 0.5


#: Plausible ranges of the header values :func:`check_dicom_header` checks: pixel spacing (mm), rescale slope
#: (HU per stored value; CT uses 1, sometimes 0.5-2), rescale intercept (HU); and the tube voltages (kV) the
#: effective-energy table of :mod:`ctbmd.calibrate.energy` covers, outside which a header's KVP is not used and
#: ``--kvp`` is refused.
PIXEL_SPACING_RANGE_MM = (0.05, 10.0)
RESCALE_SLOPE_RANGE = (1e-3, 100.0)
RESCALE_INTERCEPT_RANGE = (-10000.0, 10000.0)
#: Slice thicknesses (mm) taken from a header; outside, SliceThickness is not used (CT: 0.5-10 mm).
SLICE_THICKNESS_RANGE_MM = (0.1, 20.0)
#: Voxel sizes (mm) a volume may have along every axis; outside, the file's geometry is refused.
VOXEL_SIZE_RANGE_MM = (0.05, 20.0)
KVP_RANGE = (70.0, 150.0)

#: Transfer syntaxes whose pixel data is stored uncompressed (DICOM PS3.5 A.1-A.3): implicit and explicit VR
#: little endian, explicit VR big endian (deflate compresses the whole dataset, so it is not among them).
NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
#: Largest Rows or Columns of a CT slice taken (CT matrices are 512 to 2048).
MAX_MATRIX = 8192
#: SOP class of the single-frame CT images ctbmd reads (DICOM PS3.4 B.5, CT Image Storage).
CT_STORAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2",)
