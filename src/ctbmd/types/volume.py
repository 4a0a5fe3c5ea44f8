"""The CT volume and its grid: :class:`Grid`, :class:`ScanInfo`, :class:`CTVolume` (frames: see :mod:`ctbmd.types`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Geometry of a voxel grid in the ITK/DICOM convention (LPS, mm).

    Attributes
    ----------
    size : tuple of int
        ``(nx, ny, nz)``, voxels along the index axes ``(i, j, k)``.
    spacing_mm : tuple of float
        Voxel size along ``(i, j, k)`` in mm.
    origin_lps_mm : tuple of float
        LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
    direction : tuple of float
        3x3 direction-cosine matrix, row-major; column ``c`` is the LPS unit
        vector of index axis ``c`` (the ITK ``GetDirection()`` layout).
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction, float).reshape(3, 3) * np.asarray(self.spacing_mm, float)
        a[:3, 3] = self.origin_lps_mm
        return a


@dataclass(frozen=True)
class ScanInfo:
    """What is known about the scan and where it came from.

    Attributes
    ----------
    path : str
        The file or DICOM folder given by the user.
    format : str
        ``"nifti"``, ``"nrrd"``, ``"mha"`` or ``"dicom"``.
    input_grid : Grid
        Geometry of the input as stored (before reorientation); outputs that must
        lie "on the input's grid" are resampled onto it.
    series_uid, kvp, contrast_agent, convolution_kernel, manufacturer, patient_id :
        DICOM attributes when available, else ``None``. ``kvp`` is in kV.
    slice_thickness_mm : float or None
        DICOM SliceThickness (mm) when known.
    notes : tuple of str
        Human-readable remarks from reading, e.g. which DICOM series was chosen.
    source_files : tuple of str
        For a DICOM series: its slice files in the order of the input grid's
        slice index k (inferior to superior for axial), so that slice k of any
        map on the input grid belongs to ``source_files[k]`` (DICOM SEG frames,
        :mod:`ctbmd.report.dicom`). Empty for other formats.
    """

    path: str
    format: str
    input_grid: Grid
    series_uid: str | None = None
    kvp: float | None = None
    contrast_agent: str | None = None
    convolution_kernel: str | None = None
    manufacturer: str | None = None
    patient_id: str | None = None
    slice_thickness_mm: float | None = None
    notes: tuple[str, ...] = ()
    source_files: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in Hounsfield units in the canonical LPS voxel frame.

    Attributes
    ----------
    hu : numpy.ndarray
        float32 array, shape ``(nx, ny, nz)``; axes point toward patient Left,
        Posterior, Superior. RescaleSlope/Intercept are applied and padding
        values (below -1024 HU) are set to -1024 HU (air).
    grid : Grid
        Geometry of ``hu`` (its ``direction`` is close to identity).
    info : ScanInfo
        Provenance and acquisition attributes.
    """

    hu: np.ndarray
    grid: Grid
    info: ScanInfo

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the canonical axes (L, P, S)."""
        return self.grid.spacing_mm

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping canonical voxel index to LPS mm."""
        return self.grid.affine_lps

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices, shape ``(..., 3)``, to LPS mm, shape ``(..., 3)``."""
        a = self.affine_lps
        return np.asarray(ijk, float) @ a[:3, :3].T + a[:3, 3]
