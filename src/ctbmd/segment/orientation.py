"""Anatomical check of the header's superior/inferior axis, before any vertebra is named.

A NIfTI whose affine runs the wrong way along the body axis reads as a
patient upside down: the labeller then either refuses for a reason that says
nothing about the header, or, worse, fits the column to the wrong end of the
spine. :func:`check_superior_inferior` looks at two organs that never swap
places, the lungs and the abdomen, and refuses the scan when the lungs lie
at its inferior end with an abdomen above them.

The rule rests on anatomy, not on tuned constants:

* the lungs are the air inside the body that is aerated tissue, not gas
  (median about -750 to -900 HU against about -970 to -1000 HU for bowel gas;
  Hounsfield-unit lung density, e.g. Heussel et al., Eur Radiol 2009,
  doi 10.1007/s00330-009-1399-8), that reaches the posterior half of the trunk
  (supine patients: bowel gas rises anteriorly, while the lungs fill the
  paravertebral gutters and the posterior costophrenic recesses, their lowest
  part; Standring, *Gray's Anatomy*, 42nd ed., ch. 53-54) and that lies beside
  the spine, not in the midline (the rectum and sigmoid do);
* above the lung apices lie the shoulders and the neck, with the trachea in the
  midline of every slice (the shoulders can be as wide as the chest, so the
  airway decides); below the lung bases lies the abdomen, of about the chest's
  cross-section and without a midline airway;
* a routine chest, abdominal or body CT therefore has its lung bases, or its
  whole lungs, with abdomen *below* them. Lungs touching the inferior edge of
  the scan with a trunk of chest-like cross-section and no airway above them
  occur only when the header's superior/inferior axis is flipped.

The area and volume limits below are conservative margins around these
anatomical facts, not fitted values: a scan that does not meet all of them gets
no verdict and goes on to the labeller, which refuses what it cannot name.

Left/right flips are not judged here: the spine method is mirror-symmetric, so
a left/right flipped header changes no level and no BMD, and telling situs from
HU alone needs an organ model ctbmd does not have (see the README's limits).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ctbmd.errors import InvalidInputError
from ctbmd.masks import largest_component, plane_holes
from ctbmd.types import CTVolume

#: Working voxel size (mm) of the check: coarse enough to take well under a second.
CHECK_VOXEL_MM = 4.0
#: Body outline: above this HU (fat is about -100, lung about -850, air -1000).
BODY_HU = -400.0
#: Lung or gas: below this HU inside the body outline.
AIR_HU_MAX = -500.0
#: Smallest air region (ml) taken for lung; one lung base at the top of an abdominal scan holds 40-300 ml.
MIN_LUNG_ML = 20.0
#: Median HU of aerated lung lies between these (partial volume with vessels and septa); gas is below.
LUNG_MEDIAN_HU = (-940.0, -600.0)
#: A lung lies beside the spine: this share of its voxels more than :data:`LATERAL_MM` from the midline
#: (both lungs may be one region, joined through the trachea).
MIN_LATERAL_SHARE = 0.7
LATERAL_MM = 25.0
#: Share of a region's voxels that must lie in the posterior half of the trunk for it to be lung.
MIN_POSTERIOR_SHARE = 0.3
#: Lung (ml) needed on each side of the midline for a verdict: a lung base in view on the left and the right.
MIN_SIDE_ML = 10.0
#: The lungs "reach the inferior edge" when they come within this distance (mm) of it.
EDGE_MM = 20.0
#: Lung-free trunk above the lungs (mm) needed for a verdict: shorter stretches are the shoulders.
MIN_ABOVE_MM = 40.0
#: Cross-section (cm²) and distance from the midline (mm) of the trachea's lumen in an axial slice.
AIRWAY_AREA_CM2 = (0.15, 8.0)
#: Working voxel size (mm) of the airway search.
AIRWAY_VOXEL_MM = 1.5
AIRWAY_MIDLINE_MM = 20.0
#: Share of the lung-free slices above the lungs with a midline airway from which they are the neck.
NECK_AIRWAY_SHARE = 0.5
#: Cross-section of the lung-free trunk above, as a share of the cross-section at the lungs, above
#: which it is abdomen and not neck (neck / chest cross-section is about 0.2-0.4).
ABDOMEN_AREA_SHARE = 0.7


def _outline(hu: np.ndarray) -> np.ndarray:
    """Per-slice filled outline of the largest body component, shape as ``hu``."""
    body = largest_component(hu > BODY_HU)
    return body | plane_holes(body)


class LungMask(NamedTuple):
    """Lungs and trunk outline of a scan (:func:`lung_mask`).

    Attributes
    ----------
    lungs, outline : numpy.ndarray
        bool, shape of the HU volume: the lungs, and the filled body outline.
    """

    lungs: np.ndarray
    outline: np.ndarray


def lung_mask(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> LungMask:
    """Lungs and trunk outline of a canonical (L, P, S) HU volume.

    Parameters
    ----------
    hu : numpy.ndarray
        HU, shape ``(nx, ny, nz)``, axes toward patient left, posterior, superior.
    spacing_mm : tuple of float
        Voxel size along those axes (mm).

    Returns
    -------
    LungMask
        ``(lungs, outline)``, bool, shape as ``hu``: the air regions of at least :data:`MIN_LUNG_ML`
        whose median HU is within :data:`LUNG_MEDIAN_HU`, with at least
        :data:`MIN_POSTERIOR_SHARE` of their voxels in the posterior half of
        the trunk and :data:`MIN_LATERAL_SHARE` away from the midline;
        the filled body outline.
    """
    outline = _outline(hu)
    air = outline & (hu < AIR_HU_MAX)
    lab, n = ndi.label(air)
    lungs = np.zeros_like(air)
    if n == 0:
        return LungMask(lungs, outline)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    # per slice, the outline's centre: behind it is the posterior half, beside it the midline
    count = np.maximum(outline.sum(axis=(0, 1)), 1)
    x = np.arange(hu.shape[0])[:, None, None]
    y = np.arange(hu.shape[1])[None, :, None]
    cx = (outline * x).sum(axis=(0, 1)) / count
    cy = (outline * y).sum(axis=(0, 1)) / count
    idx = np.nonzero(air)
    labels = lab[idx]
    sizes = np.bincount(labels, minlength=n + 1)
    back = np.bincount(labels[idx[1] > cy[idx[2]]], minlength=n + 1)
    dx_mm = (idx[0] - cx[idx[2]]) * spacing_mm[0]
    left = np.bincount(labels[dx_mm > LATERAL_MM], minlength=n + 1)
    right = np.bincount(labels[dx_mm < -LATERAL_MM], minlength=n + 1)
    median = ndi.median(hu, lab, np.arange(n + 1))
    keep = np.flatnonzero((sizes * voxel_ml >= MIN_LUNG_ML) & (back >= MIN_POSTERIOR_SHARE * sizes)
                          & (left + right >= MIN_LATERAL_SHARE * sizes)
                          & (median > LUNG_MEDIAN_HU[0]) & (median < LUNG_MEDIAN_HU[1]))
    keep = keep[keep > 0]
    if keep.size:
        lungs = np.isin(lab, keep)
    return LungMask(lungs, outline)


def airway_share(hu: np.ndarray, outline: np.ndarray, spacing_mm: tuple[float, float, float],
                 slices) -> float:
    """Share of ``slices`` (axis-2 indices) that hold a midline airway: the trachea of the neck.

    An airway is a 2-D air region (below :data:`AIR_HU_MAX`) inside the body
    outline, of :data:`AIRWAY_AREA_CM2` and centred within :data:`AIRWAY_MIDLINE_MM`
    of the outline's centre along L (the trachea, about 15-25 mm across, runs
    in the midline from the larynx to the carina; Standring, *Gray's Anatomy*,
    42nd ed., ch. 31). Bowel gas in the abdomen is seldom in the midline slice
    after slice.

    Parameters
    ----------
    hu, outline : numpy.ndarray
        HU and body outline, shape ``(nx, ny, nz)``, canonical L, P, S axes.
    spacing_mm : tuple of float
        Voxel size along those axes (mm).
    slices : iterable of int
        The slices to look at.

    Returns
    -------
    float
        0 to 1; 0 for no slice.
    """
    slices = list(slices)
    if not slices:
        return 0.0
    pixel_cm2 = spacing_mm[0] * spacing_mm[1] / 100.0
    lo, hi = AIRWAY_AREA_CM2
    x = np.arange(hu.shape[0])
    found = 0
    for k in slices:
        body = outline[:, :, k]
        if not body.any():
            continue
        cx = (body.sum(axis=1) * x).sum() / body.sum()
        lab, n = ndi.label(body & (hu[:, :, k] < AIR_HU_MAX))
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx) * pixel_cm2
        centres = np.array(ndi.center_of_mass(np.ones_like(lab), lab, idx))[:, 0]
        if np.any((areas >= lo) & (areas <= hi) & (np.abs(centres - cx) * spacing_mm[0] <= AIRWAY_MIDLINE_MM)):
            found += 1
    return found / len(slices)


def check_superior_inferior(ct: CTVolume) -> None:
    """Refuse a scan whose anatomy puts the lungs below the abdomen.

    Parameters
    ----------
    ct : CTVolume
        The scan in the canonical LPS frame (its ``hu`` axes point left,
        posterior, superior according to the header).

    Raises
    ------
    InvalidInputError
        Lungs (see :func:`lung_mask`), at least :data:`MIN_SIDE_ML` on each
        side of the midline, reach within :data:`EDGE_MM` of the scan's
        inferior edge while at least :data:`MIN_ABOVE_MM` of lung-free
        trunk lies above them, with a median cross-section of at least
        :data:`ABDOMEN_AREA_SHARE` of that at the lungs, and no midline airway
        (:func:`airway_share`) in most of it: an abdomen above the lungs, so
        the header's superior/inferior axis is flipped. A scan
        without lungs, or with lungs at its superior end or in its middle,
        passes unjudged or judged consistent.
    """
    sx, sy, sz = ct.spacing_mm
    step = [max(1, int(round(CHECK_VOXEL_MM / s))) for s in (sx, sy)]
    hu = ct.hu[::step[0], ::step[1], :]
    spacing = (sx * step[0], sy * step[1], sz)
    lungs, outline = lung_mask(hu, spacing)
    slices = np.flatnonzero(lungs.any(axis=(0, 1)))
    if slices.size == 0:
        return
    nz = hu.shape[2]
    lowest, highest = int(slices[0]), int(slices[-1])
    below_mm, above_mm = lowest * sz, (nz - 1 - highest) * sz
    if below_mm > EDGE_MM or above_mm < MIN_ABOVE_MM:
        return
    # both lungs: gas in the colon or rectum lies on one side or in the midline, the lungs on both
    count = np.maximum(outline.sum(axis=(0, 1)), 1)
    cx = (outline * np.arange(hu.shape[0])[:, None, None]).sum(axis=(0, 1)) / count
    x, _, z = np.nonzero(lungs)
    dx_mm = (x - cx[z]) * spacing[0]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if min(np.count_nonzero(dx_mm > LATERAL_MM), np.count_nonzero(dx_mm < -LATERAL_MM)) * voxel_ml < MIN_SIDE_ML:
        return
    # an airway in the midline above the lungs is the neck (trachea), not the abdomen; looked for at
    # AIRWAY_VOXEL_MM, finer than the lungs, since the trachea is only 15-25 mm across
    fine = [max(1, int(round(AIRWAY_VOXEL_MM / s))) for s in (sx, sy)]
    neck = ct.hu[::fine[0], ::fine[1], highest + 1:]
    if airway_share(neck, _outline(neck), (sx * fine[0], sy * fine[1], sz),
                    range(neck.shape[2])) >= NECK_AIRWAY_SHARE:
        return
    area = outline.sum(axis=(0, 1)) * (spacing[0] * spacing[1] / 100.0)  # cm²
    at_lungs = float(np.median(area[lowest:highest + 1]))
    above = float(np.median(area[highest + 1:]))
    if at_lungs <= 0 or above < ABDOMEN_AREA_SHARE * at_lungs:
        return  # a neck above the lung apices: a scan of the neck and upper chest
    raise InvalidInputError(
        f"the header's superior/inferior axis looks flipped: the lungs reach the inferior edge of the scan "
        f"({below_mm:.0f} mm from it) and {above_mm:.0f} mm of trunk with an abdomen's cross-section "
        f"({above:.0f} cm², {at_lungs:.0f} cm² at the lungs) lies above them; fix the file's orientation "
        "(qform/sform or ImageOrientationPatient) and run again", ct.info.path)
