"""Stage 2: trabecular ROI in each vertebral body, with QC flags.

Method, per labelled vertebra (all distances in mm, computed with Euclidean
distance transforms that respect anisotropic voxels):

1. **Vertebral body**: the morphological opening of the whole-vertebra mask by a
   6 mm ball, largest component. The pedicles, laminae and processes are
   thinner than 12 mm and vanish; the body (>= 25 mm in each direction) stays.
   A backend that supplies a body mask is used as is.
2. **Cortical shell**: body voxels closer than 4 mm to the body surface are
   dropped (the erosion of TotalSegmentator's spine report, Wasserthal et al.
   2023; it also removes the endplates). Along z the margin grows by half of
   the slice thickness beyond 1 mm, ``4 + (t - 1) / 2`` mm, measured along z
   alone: a slice averages
   tissue over its thickness ``t`` (its slice sensitivity profile), so a thick
   slice near an endplate reads some endplate bone; the ROI mean, which QCT
   reports, would read high by it (+7 mg/cm^3 at 5 mm on the phantoms).
3. **Hyperdense foci**: voxels above ``median + max(150 HU, 4 robust SD)`` of
   the eroded body (bone islands, sclerosis, calcified basivertebral vein walls)
   are dropped; more than 10% of the deep core (>= 8 mm inside) dropped raises the
   ``hyperdense_focus`` flag (nearer the endplates, thick slices average in
   endplate bone, which is dropped but is not a focus).
4. Statistics: median (the primary value: robust to noise, Jang et al.,
   Radiology 2019), mean, SD, voxel count and volume.
5. **Body heights and Genant grade** (:mod:`ctbmd.heights`: :func:`~ctbmd.heights.level_heights`,
   :func:`~ctbmd.heights.genant_grade`): the body
   without its posterior elements is the front run of the vertebra mask on each
   antero-posterior line (axis 1) of the mid-sagittal slab, in front of the spinal canal;
   the median over the slab's planes gives its sagittal profile (for the builtin labeller,
   the bone the CT shows inside its label, :func:`~ctbmd.heights.ct_body`). Along the column's local axis
   (its tilt from the neighbouring body centroids) the body's chords give the anterior and
   posterior heights at the walls (a line fitted across the depth) and the middle height
   (:func:`~ctbmd.heights.body_heights`). The anterior and middle heights are compared with the posterior
   height and with the neighbouring vertebrae, all three with the neighbours (crush),
   for Genant's semi-quantitative grade (Genant et al., J Bone Miner Res 1993).

QC flags: ``partial`` (the vertebra touches the edge of the scan), ``too_small``
(ROI under 2 cm^3 or 20 voxels), ``metal`` (any voxels above 2500 HU),
``suspected_fracture`` (Genant grade >= 1: anterior or middle height 20% or more below
the posterior height and 10% or more below the neighbours' there, or the mean height 20%
below both neighbours'; :func:`ctbmd.heights.genant_grade`), ``hyperdense_focus`` (> 10% of the eroded body
excluded as hyperdense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ctbmd.heights import FRACTURE_MIN_GRADE, BodyHeights, crop_of, grade_level, level_heights, touches_edge
from ctbmd.masks import distance_mm, label_boxes, largest_component
from ctbmd.types import VERSE_LABELS, CTVolume, LevelMeasurement, SpineSegmentation

BODY_OPENING_MM = 6.0
CORTEX_EROSION_MM = 4.0
HYPERDENSE_MARGIN_HU = 150.0
HYPERDENSE_ROBUST_SD = 4.0
MIN_ROI_MM3 = 2000.0
MIN_ROI_VOXELS = 20
METAL_HU = 2500.0
HYPERDENSE_FLAG_FRACTION = 0.10


@dataclass(frozen=True)
class TrabecularROI:
    """The trabecular ROI of a vertebral body (:func:`trabecular_roi`).

    Attributes
    ----------
    mask : numpy.ndarray
        bool, the shape of the body mask it was made from ``(nx, ny, nz)``: the ROI.
    excluded_fraction : float
        Fraction (0-1) of the deep core (>= 8 mm inside the body; the eroded body when that
        is too small) removed as hyperdense; 0 when the eroded body is empty.
    """

    mask: np.ndarray
    excluded_fraction: float


@dataclass(frozen=True)
class LevelROI:
    """One level measured by :func:`measure_level`.

    Attributes
    ----------
    measurement : LevelMeasurement
        ROI statistics, heights, Genant grade and QC flags.
    roi : numpy.ndarray
        bool, the ROI on the crop, shape of ``ct.hu[crop]``.
    crop : tuple of slice
        Where the crop lies in ``ct.hu`` (axes L, P, S): the vertebra's bounding box plus 2 voxels.
    """

    measurement: LevelMeasurement
    roi: np.ndarray
    crop: tuple[slice, ...]


@dataclass(frozen=True)
class LevelROIs:
    """Every level of a segmentation measured by :func:`measure_levels`.

    Attributes
    ----------
    levels : tuple of LevelMeasurement
        In the order of ``seg.levels`` (cranial to caudal).
    roi_labels : numpy.ndarray
        uint8 ROI map on the CT grid, VerSe numbering, shape ``ct.hu.shape`` (Fortran order, x fastest).
    """

    levels: tuple[LevelMeasurement, ...]
    roi_labels: np.ndarray


def vertebral_body(vertebra: np.ndarray, spacing_mm: tuple[float, float, float],
                   radius_mm: float = BODY_OPENING_MM) -> np.ndarray:
    """Vertebral body of a whole-vertebra mask by morphological opening.

    Parameters
    ----------
    vertebra : numpy.ndarray
        Boolean mask, shape ``(nx, ny, nz)``, body and posterior arch.
    spacing_mm : tuple of float
        Voxel size (mm) along the three axes.
    radius_mm : float
        Ball radius of the opening.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the body (largest component of the opening); empty if
        nothing survives.
    """
    padded = np.pad(vertebra, 1)
    inside = distance_mm(padded, spacing_mm) >= radius_mm
    box = _bounding_box(inside)
    if box is None:
        return np.zeros_like(vertebra)
    # the dilation reaches at most radius_mm beyond the eroded mask: its distance transform
    # runs on that box alone (every voxel outside it is farther than radius_mm)
    reach = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_mm]
    box = tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, padded.shape))
    opened = np.zeros_like(padded)
    opened[box] = largest_component((distance_mm(~inside[box], spacing_mm) <= radius_mm) & padded[box])
    return opened[1:-1, 1:-1, 1:-1]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a bool mask's True voxels (one slice per axis); None when it is empty."""
    return label_boxes(mask.view(np.uint8)).get(1)


def _depth_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it, the array's edge counting as outside.

    The distance transform runs on the mask's bounding box with a one-voxel
    border of background: no voxel beyond that border is nearer to any voxel of
    the mask than the border itself, so the result equals the transform of the
    whole padded array. float32, shape of ``mask``; 0 outside it.
    """
    depth = np.zeros(mask.shape, np.float32)
    box = _bounding_box(mask)
    if box is not None:
        depth[box] = distance_mm(np.pad(mask[box], 1), spacing_mm)[1:-1, 1:-1, 1:-1]
    return depth


def trabecular_roi(body: np.ndarray, hu: np.ndarray, spacing_mm: tuple[float, float, float],
                   slice_thickness_mm: float | None = None) -> TrabecularROI:
    """Trabecular ROI of a vertebral body (steps 2-3 of the module method).

    Parameters
    ----------
    body : numpy.ndarray
        Boolean body mask, shape ``(nx, ny, nz)``.
    hu : numpy.ndarray
        HU of the same region and shape.
    spacing_mm : tuple of float
        Voxel size in mm.
    slice_thickness_mm : float, optional
        Reconstructed slice thickness (mm); the z spacing when not given.

    Returns
    -------
    TrabecularROI
        The ROI mask (bool, shape of ``body``) and the fraction of the deep core removed as hyperdense.
    """
    depth = _depth_mm(body, spacing_mm)
    core = depth >= CORTEX_EROSION_MM
    thickness = float(slice_thickness_mm or spacing_mm[2])
    z_margin = CORTEX_EROSION_MM + max(0.0, thickness - 1.0) / 2.0
    if z_margin > CORTEX_EROSION_MM:
        # distance to the body surface along z alone (in-plane steps made prohibitively long)
        core &= _depth_mm(body, (1e6, 1e6, spacing_mm[2])) >= z_margin
    if not core.any():
        return TrabecularROI(core, 0.0)
    values = hu[core]
    med = float(np.median(values))
    robust_sd = 1.4826 * float(np.median(np.abs(values - med)))
    limit = med + max(HYPERDENSE_MARGIN_HU, HYPERDENSE_ROBUST_SD * robust_sd)
    roi = core & (hu <= limit)
    # The flag looks at the deep core only: next to the endplates, thick slices average in
    # endplate bone, which is excluded but is not a focus.
    deep = depth >= 2 * CORTEX_EROSION_MM
    region = deep if deep.sum() >= MIN_ROI_VOXELS else core
    return TrabecularROI(roi, 1.0 - (roi & region).sum() / region.sum())


def measure_level(ct: CTVolume, seg: SpineSegmentation, level: str,
                  heights: dict[str, BodyHeights] | None = None) -> LevelROI:
    """Measure the trabecular ROI, the body heights and the Genant grade of one level.

    All work is done on the vertebra's bounding box (``seg.boxes``, plus 2
    voxels), never on the whole volume; the heights also look at the
    vertebrae next to it (:func:`level_heights`).

    Parameters
    ----------
    ct : CTVolume
        Canonical HU volume.
    seg : SpineSegmentation
        Labels on the same grid.
    level : str
        Level name, e.g. ``"L1"``.
    heights : dict, optional
        :func:`level_heights` of this level and its neighbours, when already measured
        (:func:`measure_levels` measures them once for all levels).

    Returns
    -------
    LevelROI
        The measurement, the ROI mask of the crop (bool) and the crop (where it lies in ``ct.hu``).

    Raises
    ------
    ValueError
        ``level`` is not in ``seg.labels``.
    """
    value = VERSE_LABELS[level]
    spacing = ct.spacing_mm
    if seg.boxes.get(value) is None:
        raise ValueError(f"{level} (label {value}) is not in the label map")
    crop = crop_of(seg, value)
    vertebra = seg.labels[crop] == value
    hu = ct.hu[crop]
    offset = np.array([c.start for c in crop], float)
    centroid = ct.index_to_lps(np.array(ndi.center_of_mass(vertebra)) + offset)
    flags = list(seg.level_flags.get(level, []))
    if touches_edge(seg, value) and "partial" not in flags:
        flags.append("partial")
    body = seg.body[crop] == value if seg.body is not None else vertebral_body(vertebra, spacing)
    trabecular = trabecular_roi(body, hu, spacing, ct.info.slice_thickness_mm)
    roi = trabecular.mask
    if np.count_nonzero(hu[vertebra] > METAL_HU) >= 3:
        flags.append("metal")
    if heights is None or level not in heights:
        heights = level_heights(ct, seg, (level,))
    grade = grade_level(level, heights, max(float(ct.info.slice_thickness_mm or 0.0), spacing[2]))
    if grade is not None and grade.grade >= FRACTURE_MIN_GRADE:
        flags.append("suspected_fracture")
    if trabecular.excluded_fraction > HYPERDENSE_FLAG_FRACTION:
        flags.append("hyperdense_focus")
    n = int(roi.sum())
    volume = float(n * np.prod(spacing))
    if volume < MIN_ROI_MM3 or n < MIN_ROI_VOXELS:
        flags.append("too_small")
    values = hu[roi]
    stats = (float(np.median(values)), float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0) if n else (None, None, None)
    own = heights.get(level)
    measurement = LevelMeasurement(
        level=level, centroid_lps_mm=tuple(round(float(c), 2) for c in centroid), roi_voxels=n,
        roi_volume_mm3=round(volume, 1), hu_median=stats[0], hu_mean=stats[1], hu_sd=stats[2],
        heights_mm=own.as_dict() if own is not None else {"anterior": 0.0, "middle": 0.0, "posterior": 0.0},
        flags=tuple(flags), genant_grade=None if grade is None else grade.grade,
        deformity=None if grade is None else grade.kind,
        height_ratios={} if grade is None else dict(grade.ratios))
    return LevelROI(measurement, roi, crop)


def measure_levels(ct: CTVolume, seg: SpineSegmentation) -> LevelROIs:
    """Measure every level of ``seg`` (:func:`measure_level`), the heights once for all.

    Parameters
    ----------
    ct : CTVolume
        Canonical HU volume.
    seg : SpineSegmentation
        Labels on the same grid.

    Returns
    -------
    LevelROIs
        The measurements, in the order of ``seg.levels`` (cranial to caudal), and the uint8 ROI map on
        the CT grid (VerSe numbering).
    """
    roi_labels = np.zeros(ct.hu.shape, np.uint8, order="F")  # x fastest, as the CT array
    heights = level_heights(ct, seg, seg.levels)
    out = []
    for level in seg.levels:
        one = measure_level(ct, seg, level, heights)
        roi_labels[one.crop][one.roi] = VERSE_LABELS[level]
        out.append(one.measurement)
    return LevelROIs(tuple(out), roi_labels)
