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
* above the lung apices the trunk narrows to the neck (a neck cross-section is
  well under half that of the chest); below the lung bases lies the abdomen, of
  about the chest's cross-section;
* a routine chest, abdominal or body CT therefore has its lung bases, or its
  whole lungs, with abdomen *below* them. Lungs touching the inferior edge of
  the scan with a trunk of chest-like cross-section above them occur only when
  the header's superior/inferior axis is flipped.

Left/right flips are not judged here: the spine method is mirror-symmetric, so
a left/right flipped header changes no level and no BMD, and telling situs from
HU alone needs an organ model ctbmd does not have (see the README's limits).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ctbmd.errors import InvalidInputError
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
#: The lungs "reach the inferior edge" when they come within this distance (mm) of it.
EDGE_MM = 20.0
#: Lung-free trunk above the lungs (mm) needed for a verdict: shorter stretches are the shoulders.
MIN_ABOVE_MM = 40.0
#: Cross-section of the lung-free trunk above, as a share of the cross-section at the lungs, above
#: which it is abdomen and not neck (neck / chest cross-section is about 0.2-0.4).
ABDOMEN_AREA_SHARE = 0.7


def _outline(hu: np.ndarray) -> np.ndarray:
    """Per-slice filled outline of the largest body component, shape as ``hu``."""
    body = hu > BODY_HU
    lab, n = ndi.label(body)
    if n == 0:
        return body
    sizes = np.bincount(lab.ravel())[1:]
    body = lab == 1 + int(np.argmax(sizes))
    return np.stack([ndi.binary_fill_holes(body[:, :, k]) for k in range(body.shape[2])], axis=2)


def lung_mask(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Lungs and trunk outline of a canonical (L, P, S) HU volume.

    Parameters
    ----------
    hu : numpy.ndarray
        HU, shape ``(nx, ny, nz)``, axes toward patient left, posterior, superior.
    spacing_mm : tuple of float
        Voxel size along those axes (mm).

    Returns
    -------
    lungs, outline : numpy.ndarray
        bool, shape as ``hu``: the air regions of at least :data:`MIN_LUNG_ML`
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
        return lungs, outline
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
    return lungs, outline


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
        Lungs (see :func:`lung_mask`) reach within :data:`EDGE_MM` of the
        scan's inferior edge while at least :data:`MIN_ABOVE_MM` of lung-free
        trunk lies above them, with a median cross-section of at least
        :data:`ABDOMEN_AREA_SHARE` of that at the lungs: an abdomen above the
        lungs, so the header's superior/inferior axis is flipped. A scan
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
