"""Read a CT (volume file or DICOM folder) validated and canonical; read label maps; put labels back.

Every volume is returned as a :class:`ctbmd.types.CTVolume` in the canonical frame
(array ``(nx, ny, nz)``, axes toward patient L, P, S; affine to DICOM LPS mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from ctbmd.errors import InvalidInputError
from ctbmd.io.dicom import read_dicom_series
from ctbmd.io.image import (array_to_image, grid_of, image_to_array, image_to_array_view, resample_labels,
                            to_canonical)
from ctbmd.io.limits import AIR_HU, MIN_SLICES, MIN_Z_EXTENT_MM, VOXEL_SIZE_RANGE_MM
from ctbmd.io.quiet import quiet_libraries
from ctbmd.io.volume import read_volume_file, volume_format
from ctbmd.types import CTVolume, Grid, ScanInfo


def validate_ct(hu: np.ndarray, grid: Grid, source: str | Path) -> list[str]:
    """Check that a canonical HU array is a usable CT volume.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(nx, ny, nz)`` HU in the canonical frame.
    grid : Grid
        Its geometry (spacing in mm).
    source : str or Path
        Named in errors.

    Returns
    -------
    list of str
        Warnings (thick slices).

    Raises
    ------
    InvalidInputError
        Not 3-D; a voxel size outside :data:`VOXEL_SIZE_RANGE_MM`; fewer than :data:`MIN_SLICES` slices or less than
        :data:`MIN_Z_EXTENT_MM` of cranio-caudal coverage; a NaN or infinite
        voxel; a constant image; no voxel below -500 HU (no air, so not CT in HU).
    """
    warnings = []
    if hu.ndim != 3:
        raise InvalidInputError(f"expected a 3-D volume, got {hu.ndim} dimensions", source)
    lo, hi = VOXEL_SIZE_RANGE_MM
    for axis, size in zip("LPS", grid.spacing_mm):
        if not (np.isfinite(size) and lo <= size <= hi):
            raise InvalidInputError(f"voxel size {size:g} mm along {axis} is not {lo:g}-{hi:g} mm: the header's "
                                    "geometry is broken (pixdim, sform/qform or PixelSpacing)", source)
    nz = hu.shape[2]
    extent = nz * grid.spacing_mm[2]
    if nz < MIN_SLICES or extent < MIN_Z_EXTENT_MM:
        raise InvalidInputError(
            f"too few slices: {nz} slices cover {extent:.1f} mm, a vertebra needs at least "
            f"{MIN_SLICES} slices and {MIN_Z_EXTENT_MM:.0f} mm", source)
    lo, hi = float(hu.min()), float(hu.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):  # min and max carry any NaN; inf is itself the extreme
        bad = int(np.count_nonzero(~np.isfinite(hu)))
        raise InvalidInputError(f"{bad} of {hu.size} voxels are NaN or infinite: a CT in HU has only finite "
                                "values (a float volume with missing data?)", source)
    if hi - lo < 1.0:
        raise InvalidInputError(f"constant image (every voxel is {lo:g}): no CT data", source)
    if lo > -500:
        raise InvalidInputError(
            f"not a CT in Hounsfield units: no voxel below -500 HU (range {lo:g} to {hi:g}); "
            "raw stored values without RescaleSlope/Intercept?", source)
    if grid.spacing_mm[2] > 3.0:
        warnings.append(f"slice spacing {grid.spacing_mm[2]:.1f} mm > 3 mm: partial-volume and noise raise HU spread")
    return warnings


def read_ct(path: str | Path, series_uid: str | None = None,
            files: Sequence[str | Path] | None = None) -> CTVolume:
    """Read a CT from a NIfTI/NRRD/MHA file or a DICOM folder, validated and canonical.

    Parameters
    ----------
    path : str or Path
        Volume file, or folder holding a DICOM series.
    series_uid : str, optional
        SeriesInstanceUID to read when a DICOM folder holds several series.
    files : sequence of str or Path, optional
        For a DICOM folder: read the series from these files instead of
        searching the folder (:func:`scan_dicom_folder`).

    Returns
    -------
    CTVolume
        float32 HU, shape ``(nx, ny, nz)``, canonical L/P/S axes; values below
        -1024 HU (padding) set to -1024. Non-fatal remarks of the read (series
        choice, slice jitter, thick slices ...) are in ``ct.info.notes``.

    Raises
    ------
    InvalidInputError
        Missing path, unknown format, unreadable or corrupt file, not CT,
        too few slices, slice gaps, gantry tilt, constant image.
    """
    with quiet_libraries(native=False):  # pydicom's warnings; the C readers are quietened where they are called
        return _read_ct(Path(path), series_uid, files)


def _read_ct(path: Path, series_uid: str | None, files: Sequence[str | Path] | None) -> CTVolume:
    """:func:`read_ct` without the warnings capture; a lone DICOM file reads its folder."""
    if not path.exists():
        raise InvalidInputError("no such file or folder", path)
    if path.is_dir():
        image, info = read_dicom_series(path, series_uid, files)
    else:
        fmt = volume_format(path)
        if fmt is None:
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError):
                raise InvalidInputError(
                    "unknown format: expected .nii, .nii.gz, .nrrd, .mha or a DICOM folder", path) from None
            return _read_ct(path.parent, series_uid, None)
        image = read_volume_file(path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidInputError(f"expected a scalar 3-D volume, got {image.GetDimension()}-D with "
                                    f"{image.GetNumberOfComponentsPerPixel()} component(s)", path)
        info = ScanInfo(path=str(path), format=fmt, input_grid=grid_of(image))
    # reoriented in the stored type (int16 for most files: half the bytes of float32), then
    # converted to float32 and clipped at the padding floor in the one pass that leaves SimpleITK
    canonical = to_canonical(image)
    hu = np.maximum(image_to_array_view(canonical), np.float32(AIR_HU), dtype=np.float32)
    grid = grid_of(canonical)
    warnings = validate_ct(hu, grid, path)
    info = replace(info, notes=tuple(info.notes) + tuple(warnings))  # the read's remarks travel with the scan
    return CTVolume(hu=hu, grid=grid, info=info)


def read_label_map(path: str | Path, ct: CTVolume) -> np.ndarray:
    """Read a label map and resample it (nearest neighbour) onto ``ct``'s canonical grid.

    The map may be stored in any orientation (e.g. LAS or RAS NIfTI); geometry is
    taken from its header, so it must cover the same patient space as the CT.

    Returns
    -------
    numpy.ndarray
        uint8 or uint16 labels, shape ``ct.hu.shape``.

    Raises
    ------
    InvalidInputError
        Missing or unreadable file, non-integer labels, or no overlap with the CT.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("no such label file", path)
    image = read_volume_file(path)
    if image.GetDimension() != 3:
        raise InvalidInputError(f"expected a 3-D label map, got {image.GetDimension()}-D", path)
    labels = image_to_array(resample_labels(sitk.Cast(image, sitk.sitkUInt16), ct.grid))
    if not labels.any():
        raise InvalidInputError("label map does not overlap the CT (check that both are the same scan)", path)
    return labels


def labels_on_input_grid(labels: np.ndarray, ct: CTVolume) -> sitk.Image:
    """Put a canonical label array back onto the input's stored grid (nearest neighbour).

    The canonical grid is a permutation/flip of the input grid
    (:func:`to_canonical`), so this is exact: the array axes are permuted and
    flipped back in numpy (no interpolation, one copy) and the input's geometry
    is copied exactly. The permutation is read off the two direction matrices
    and checked against the sizes, spacings and origin; a grid that is not such
    a permutation is resampled (SimpleITK nearest neighbour).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, shape ``ct.hu.shape`` (canonical L, P, S axes).
    ct : CTVolume
        The scan, whose ``info.input_grid`` is the stored grid.

    Returns
    -------
    SimpleITK.Image
        Same pixel type as ``labels``, on the stored grid.
    """
    src = ct.info.input_grid
    canon = np.array(ct.grid.direction).reshape(3, 3)
    m = canon.T @ np.array(src.direction).reshape(3, 3)  # column i: stored axis i in canonical axes
    perm = np.argmax(np.abs(m), axis=0)
    sign = np.sign(m[perm, np.arange(3)])
    corner = [0 if sg > 0 else labels.shape[a] - 1 for a, sg in zip(perm, sign)]  # stored voxel 0, canonical index
    first = np.zeros(3)
    first[perm] = corner
    if (sorted(perm) == [0, 1, 2] and np.allclose(np.abs(m[perm, np.arange(3)]), 1.0, atol=1e-6)
            and all(labels.shape[a] == n for a, n in zip(perm, src.size))
            and np.allclose([ct.grid.spacing_mm[a] for a in perm], src.spacing_mm, rtol=1e-6)
            and np.allclose(ct.index_to_lps(first), src.origin_lps_mm, atol=1e-3)):
        stored = labels.transpose(perm)[tuple(slice(None, None, -1) if sg < 0 else slice(None) for sg in sign)]
        out = sitk.GetImageFromArray(np.ascontiguousarray(stored.transpose(2, 1, 0)))
        out.SetSpacing(src.spacing_mm)
        out.SetOrigin(src.origin_lps_mm)
        out.SetDirection(src.direction)
        return out
    return resample_labels(array_to_image(labels, ct.grid), src)
