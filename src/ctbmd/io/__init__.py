"""Read and validate CT input; write outputs atomically.

Input formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) through SimpleITK, and DICOM folders (series chosen with
pydicom headers, pixels decoded by SimpleITK/GDCM, which reads JPEG 2000 and
JPEG-LS as is).

Every volume is returned as a :class:`ctbmd.types.CTVolume` in the canonical frame
(array ``(nx, ny, nz)``, axes toward patient L, P, S; affine to DICOM LPS mm).
See :mod:`ctbmd.types` for the conventions.

Modules, each re-exported here:

* :mod:`ctbmd.io.image`: grids, array <-> SimpleITK image, canonical orientation,
  :func:`resample_labels`;
* :mod:`ctbmd.io.volume`: volume files (NIfTI, NRRD, MetaImage) and their header checks;
* :mod:`ctbmd.io.dicom_header`, :mod:`ctbmd.io.dicom_series`, :mod:`ctbmd.io.dicom`:
  DICOM header checks, series discovery and choice, reading a series;
* :mod:`ctbmd.io.read`: :func:`read_ct`, :func:`validate_ct`, label maps;
* :mod:`ctbmd.io.output`: output folders and atomic writes;
* :mod:`ctbmd.io.limits`: limits of a usable CT and plausible header values;
* :mod:`ctbmd.io.quiet`: :func:`quiet_libraries`.
"""

from ctbmd.io.dicom import DicomRead, check_slice_geometry, read_dicom_series
from ctbmd.io.dicom_header import KvpReading, check_dicom_header, header_kvp
from ctbmd.io.dicom_series import DicomSeries, Reconstruction, SeriesMeta, choose_series, scan_dicom_folder
from ctbmd.io.image import (array_to_image, grid_of, grid_reference_image, image_to_array, image_to_array_view,
                            resample_labels, to_canonical)
from ctbmd.io.limits import (AIR_HU, CT_STORAGE_CLASSES, GAP_FACTOR, KVP_RANGE, MAX_MATRIX, MAX_TILT_DEG,
                             MIN_SLICES, MIN_Z_EXTENT_MM, NATIVE_TRANSFER_SYNTAXES, PIXEL_SPACING_RANGE_MM,
                             RESCALE_INTERCEPT_RANGE, RESCALE_SLOPE_RANGE, SLICE_THICKNESS_RANGE_MM,
                             VOXEL_SIZE_RANGE_MM)
from ctbmd.io.output import (_UMASK, LOCK_INFIX, OLD_INFIX, STAGING_INFIX, check_output_dir, clean_stale,
                             output_lock, replace_dir, staging_dir, write_atomic, write_image_atomic)
from ctbmd.io.quiet import quiet_libraries
from ctbmd.io.read import labels_on_input_grid, read_ct, read_label_map, validate_ct
from ctbmd.io.volume import read_volume_file, volume_format

__all__ = [
    "AIR_HU", "CT_STORAGE_CLASSES", "GAP_FACTOR", "KVP_RANGE", "LOCK_INFIX", "MAX_MATRIX", "MAX_TILT_DEG",
    "MIN_SLICES", "MIN_Z_EXTENT_MM", "NATIVE_TRANSFER_SYNTAXES", "OLD_INFIX", "PIXEL_SPACING_RANGE_MM",
    "RESCALE_INTERCEPT_RANGE", "RESCALE_SLOPE_RANGE", "SLICE_THICKNESS_RANGE_MM", "STAGING_INFIX",
    "VOXEL_SIZE_RANGE_MM",
    "DicomRead", "DicomSeries", "KvpReading", "Reconstruction", "SeriesMeta",
    "array_to_image", "check_dicom_header", "check_output_dir", "check_slice_geometry", "choose_series",
    "clean_stale", "grid_of", "grid_reference_image", "header_kvp", "image_to_array", "image_to_array_view",
    "labels_on_input_grid", "output_lock", "quiet_libraries", "read_ct", "read_dicom_series", "read_label_map",
    "read_volume_file", "replace_dir", "resample_labels", "scan_dicom_folder", "staging_dir", "to_canonical",
    "validate_ct", "volume_format", "write_atomic", "write_image_atomic",
    "_UMASK",  # the umask read once at import (ctbmd.io.output); tests compare file modes with it
]
