"""Voxel grids and SimpleITK images: array <-> image, canonical orientation, label resampling.

Arrays are ``(nx, ny, nz)``, indexed ``(i, j, k)``; SimpleITK's own arrays are
``(nz, ny, nx)``. Geometry follows :class:`ctbmd.types.Grid` (LPS mm, ITK
direction layout). The canonical frame has its index axes toward patient L, P, S.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ctbmd.types import Grid

def grid_of(image: sitk.Image) -> Grid:
    """The geometry (size, spacing, origin, direction) of a 3-D SimpleITK image as a :class:`Grid`."""
    return Grid(
        size=tuple(int(s) for s in image.GetSize()),
        spacing_mm=tuple(float(s) for s in image.GetSpacing()),
        origin_lps_mm=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def grid_reference_image(grid: Grid, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
    """Return an empty SimpleITK image with ``grid``'s geometry (for resampling onto it)."""
    ref = sitk.Image([int(s) for s in grid.size], pixel_id)
    ref.SetSpacing(grid.spacing_mm)
    ref.SetOrigin(grid.origin_lps_mm)
    ref.SetDirection(grid.direction)
    return ref


def array_to_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    """Wrap a canonical ``(nx, ny, nz)`` array as a SimpleITK image with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(grid.spacing_mm)
    image.SetOrigin(grid.origin_lps_mm)
    image.SetDirection(grid.direction)
    return image


def image_to_array(image: sitk.Image) -> np.ndarray:
    """Return a SimpleITK image's voxels as an ``(nx, ny, nz)`` array (index order i, j, k)."""
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def image_to_array_view(image: sitk.Image) -> np.ndarray:
    """Read-only ``(nx, ny, nz)`` view of a SimpleITK image's voxels, without a copy.

    Valid only while ``image`` lives: copy it (e.g. ``.astype``) before the image goes.
    """
    return np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Reorient (permute/flip, no interpolation) so the index axes point toward L, P, S."""
    return sitk.DICOMOrient(image, "LPS")


def resample_labels(image: sitk.Image, reference: sitk.Image | Grid, pixel_id: int | None = None) -> sitk.Image:
    """Resample a label image onto another grid by nearest neighbour: every value is one of the input's.

    Each output voxel takes the label of the input voxel nearest to its centre
    (physical LPS positions, identity transform), so labels are never blended
    into values between them, as linear or spline interpolation would.

    Parameters
    ----------
    image : SimpleITK.Image
        Integer labels on any grid.
    reference : SimpleITK.Image or Grid
        The output geometry: size, spacing (mm), origin (LPS mm) and direction.
        An image's voxel values are not used.
    pixel_id : int, optional
        SimpleITK pixel type of the result (e.g. ``sitk.sitkUInt16``); by
        default ``image``'s.

    Returns
    -------
    SimpleITK.Image
        The labels on ``reference``'s grid; 0 (background) where the output
        voxel's centre lies outside ``image``.
    """
    if isinstance(reference, Grid):
        reference = grid_reference_image(reference)
    out_type = image.GetPixelID() if pixel_id is None else pixel_id
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, out_type)
