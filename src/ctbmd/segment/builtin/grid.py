"""The 2 mm isotropic working grid on which the builtin labeller runs.

Every step of :mod:`ctbmd.segment.builtin` works on one resampled copy of the
CT: 2 mm isotropic voxels in the canonical LPS frame (array ``(nx, ny, nz)``,
axes toward patient Left, Posterior, Superior). Thin-slice CTs are Gaussian
smoothed to the working resolution before resampling (anti-aliasing), thick
slices are interpolated linearly. Labels made on this grid go back to the CT
grid by nearest neighbour (:func:`labels_to_ct_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ctbmd.io import array_to_image, grid_reference_image, image_to_array
from ctbmd.masks import largest_component
from ctbmd.types import CTVolume, Grid

#: Voxel size (mm) of the working grid.
WORK_SPACING_MM = 2.0
#: Threshold (HU) of the body outline: everything denser than lung and air.
BODY_HU = -400.0


@dataclass(frozen=True)
class WorkGrid:
    """A CT resampled to the working grid.

    Attributes
    ----------
    hu : numpy.ndarray
        float32, shape ``(nx, ny, nz)``, HU on 2 mm isotropic voxels, axes L, P, S.
    grid : Grid
        Geometry of ``hu`` (LPS mm).
    body : numpy.ndarray
        bool, same shape: the body outline (largest region above -400 HU after a
        4 mm opening), which keeps the table and the air outside out of every step.
    """

    hu: np.ndarray
    grid: Grid
    body: np.ndarray

    @property
    def spacing_mm(self) -> float:
        """Isotropic voxel size in mm."""
        return self.grid.spacing_mm[0]

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map working-grid indices, shape ``(..., 3)``, to LPS mm, shape ``(..., 3)``."""
        a = self.grid.affine_lps
        return np.asarray(ijk, float) @ a[:3, :3].T + a[:3, 3]


def to_working_grid(ct: CTVolume) -> WorkGrid:
    """Resample ``ct`` to the 2 mm working grid and find the body outline.

    The first working voxel keeps the outer corner of the first CT voxel, so the
    two grids cover the same box. Raises nothing; an empty body outline is
    reported by the caller.
    """
    image = array_to_image(ct.hu, ct.grid)
    sigma = [max(0.0, (WORK_SPACING_MM - s) / 2.0) for s in ct.grid.spacing_mm]
    if max(sigma) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma])
    size = [max(1, int(round(n * s / WORK_SPACING_MM))) for n, s in zip(ct.grid.size, ct.grid.spacing_mm)]
    origin = ct.index_to_lps(np.array([(WORK_SPACING_MM / s - 1.0) / 2.0 for s in ct.grid.spacing_mm]))
    grid = Grid(size=tuple(size), spacing_mm=(WORK_SPACING_MM,) * 3,
                origin_lps_mm=tuple(float(v) for v in origin), direction=ct.grid.direction)
    ref = grid_reference_image(grid, sitk.sitkFloat32)
    hu = image_to_array(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    body = largest_component(ndi.binary_opening(hu > BODY_HU, iterations=2))
    return WorkGrid(hu=hu, grid=grid, body=body)


def labels_to_ct_grid(labels: np.ndarray, work_grid: Grid, ct: CTVolume) -> np.ndarray:
    """Resample a uint8 label map from the working grid onto ``ct``'s grid (nearest neighbour).

    Returns a uint8 array of shape ``ct.hu.shape``.
    """
    image = array_to_image(labels.astype(np.uint8), work_grid)
    ref = grid_reference_image(ct.grid, sitk.sitkUInt8)
    return image_to_array(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
