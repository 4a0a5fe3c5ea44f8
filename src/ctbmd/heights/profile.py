"""Sagittal profile of a vertebral body and its anterior, middle and posterior heights.

Part of :mod:`ctbmd.heights` (see there for the method): the body without its posterior
elements in the mid-sagittal slab (:func:`sagittal_profile`), the column's tilt
(:func:`column_axes`) and the heights along it (:func:`body_heights`).

Arrays are in the canonical frame: axes toward patient left, posterior, superior; spacing in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Half-width (mm) of the mid-sagittal slab whose planes' median gives the body's profile: well
#: inside the flat middle of a body 40-50 mm wide (Panjabi 1991/1992), wide enough for several
#: planes at 0.7-2 mm pixels and one either side at 3 mm.
HEIGHT_SLAB_MM = 5.0
#: Gaps in a label map's body narrower than this (mm) are bridged; the spinal canal behind the
#: body, 10 mm or more deep (Panjabi 1991/1992), is not.
BODY_GAP_MM = 5.0
#: Resampling step (mm) of the sagittal profile for the heights.
HEIGHT_STEP_MM = 0.5
#: Fraction of the depth next to each wall left out of the line fit of :func:`body_heights`:
#: there the chords are shortened by the wall's partial volume and rounding.
EDGE_FRACTION = 0.05


@dataclass(frozen=True)
class SagittalProfile:
    """The vertebral body in the mid-sagittal slab of one vertebra (see :func:`sagittal_profile`).

    Attributes
    ----------
    fraction : numpy.ndarray
        float, shape ``(ny, nz)`` of the vertebra's crop, axes P and S: the fraction of the slab's
        sagittal planes in which each ``(y, z)`` voxel lies in the body (0-1).
    origin_mm : tuple of float
        ``(y, z)`` (mm, along the canonical axes P and S, from the CT's voxel ``(0, 0, 0)``) of the
        centre of ``fraction[0, 0]``.
    spacing_mm : tuple of float
        Voxel size ``(y, z)`` in mm.
    complete : bool
        False when the vertebra touches the edge of the scan (then its heights are not graded).
    planes : slice
        The slab's sagittal planes (axis 0 of the crop).
    """

    fraction: np.ndarray
    origin_mm: tuple[float, float]
    spacing_mm: tuple[float, float]
    complete: bool
    planes: slice

    @property
    def centroid_mm(self) -> np.ndarray | None:
        """``(y, z)`` mm of the body's centroid in the slab (same frame as ``origin_mm``); None if empty."""
        j, k = np.nonzero(self.fraction >= 0.5)
        if not len(j):
            return None
        return np.array([self.origin_mm[0] + j.mean() * self.spacing_mm[0],
                         self.origin_mm[1] + k.mean() * self.spacing_mm[1]])


@dataclass(frozen=True)
class BodyHeights:
    """Anterior, middle and posterior height (mm) of a vertebral body (:func:`body_heights`).

    ``axis_deg`` is the tilt of the body's height axis in the sagittal plane, from +S toward +P
    (degrees); ``depth_mm`` the body's antero-posterior depth; ``complete`` as in
    :class:`SagittalProfile`. ``consistent`` is False when the body found in the CT and the
    label map disagree (:func:`~ctbmd.heights.level_heights`): its heights (the label's) are reported but
    not graded, nor used as a neighbour's reference.
    """

    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    depth_mm: float
    axis_deg: float
    complete: bool = True
    consistent: bool = True

    def as_dict(self) -> dict[str, float]:
        """``{"anterior", "middle", "posterior"}`` in mm, rounded to 0.1 mm (``LevelMeasurement.heights_mm``)."""
        return {"anterior": round(self.anterior_mm, 1), "middle": round(self.middle_mm, 1),
                "posterior": round(self.posterior_mm, 1)}


def _anterior_runs(vertebra: np.ndarray, spacing_y_mm: float) -> np.ndarray:
    """The body part of a vertebra mask: along axis 1 (toward posterior), the first run of each line.

    The spinal canal (>= 10 mm, Panjabi 1991/1992) separates the body from the arch on every
    line near the mid-sagittal plane; gaps up to :data:`BODY_GAP_MM` (marrow holes of a label
    map) are bridged. bool, shape of ``vertebra`` ``(nx, ny, nz)``.
    """
    reach = int(BODY_GAP_MM // spacing_y_mm) + 1
    filled = vertebra
    if reach > 1:
        padded = np.pad(vertebra, ((0, 0), (reach, reach), (0, 0)))
        filled = ndi.binary_closing(padded, structure=np.ones((1, reach, 1), bool))[:, reach:-reach]
    starts = filled.copy()
    starts[:, 1:] &= ~filled[:, :-1]
    return filled & (np.cumsum(starts, axis=1) == 1)


def sagittal_profile(vertebra: np.ndarray, spacing_mm: tuple[float, float, float],
                     offset: tuple[int, int, int] = (0, 0, 0), body: np.ndarray | None = None,
                     complete: bool = True, planes: slice | None = None) -> SagittalProfile | None:
    """The vertebral body (no pedicles, arch or processes) in the mid-sagittal slab of a vertebra.

    On every antero-posterior line (axis 1) the body is the first run of the vertebra mask
    from the front (:func:`_anterior_runs`): the body's anterior cortex to its posterior
    wall. The slab holds the sagittal planes within :data:`HEIGHT_SLAB_MM` of the body's
    centre (at least one plane either side); their mean is the profile, so a voxel counts as
    body where most planes agree (a median over the planes). Of the connected parts of that
    profile the one that holds most of ``body`` is kept (the largest without ``body``): the
    lamina and spinous process, behind the canal, drop out.

    Parameters
    ----------
    vertebra : numpy.ndarray
        bool, shape ``(nx, ny, nz)`` (axes L, P, S): the whole vertebra (body and arch), cropped.
    spacing_mm : tuple of float
        Voxel size (mm) along L, P, S.
    offset : tuple of int
        Index of the crop's voxel ``(0, 0, 0)`` in the CT, for ``origin_mm``.
    body : numpy.ndarray, optional
        bool, same shape: a body mask from the segmenter (it may stop short of the endplates,
        as the builtin labeller's does; only its position is used).
    complete : bool
        Passed to the result.
    planes : slice, optional
        The slab's planes, when already chosen (another profile of the same vertebra).

    Returns
    -------
    SagittalProfile or None
        None when no body is found.
    """
    runs = _anterior_runs(vertebra, spacing_mm[1])
    anchor = body if body is not None and body.any() else runs
    if not anchor.any():
        return None
    slab = planes
    if slab is None:
        cx = int(round(float(np.nonzero(anchor)[0].mean())))
        half = max(1, int(round(HEIGHT_SLAB_MM / spacing_mm[0])))
        slab = slice(max(0, cx - half), min(vertebra.shape[0], cx + half + 1))
    fraction = runs[slab].mean(axis=0)
    parts, n = ndi.label(fraction >= 0.5)
    if n == 0:
        return None
    if body is not None and body.any():
        votes = np.bincount(parts[body[slab].any(axis=0)], minlength=n + 1)
    else:
        votes = np.bincount(parts.ravel(), minlength=n + 1)
    votes[0] = 0
    fraction = np.where(parts == int(np.argmax(votes)), fraction, 0.0)
    return SagittalProfile(fraction=fraction, origin_mm=(offset[1] * spacing_mm[1], offset[2] * spacing_mm[2]),
                           spacing_mm=(spacing_mm[1], spacing_mm[2]), complete=complete, planes=slab)


def column_axes(centroids: dict[str, np.ndarray]) -> dict[str, float]:
    """Tilt (degrees, from +S toward +P) of the spinal column at each vertebra, from the body centroids.

    The tangent of the line through consecutive body centroids: a central difference between
    the two neighbours, a second-order one-sided difference at the ends of the column
    (``3 c0 - 4 c1 + c2``), the chord with a single neighbour and 0 (the S axis) without one.

    Parameters
    ----------
    centroids : dict
        Level name -> ``(y, z)`` mm of its body centroid (:attr:`SagittalProfile.centroid_mm`),
        cranial to caudal.

    Returns
    -------
    dict
        Level name -> tilt in degrees.
    """
    names = list(centroids)
    pts = np.array([centroids[n] for n in names], float).reshape(-1, 2)
    out = {}
    for i, name in enumerate(names):
        if len(names) == 1:
            out[name] = 0.0
            continue
        if 0 < i < len(names) - 1:
            t = pts[i - 1] - pts[i + 1]
        elif len(names) == 2:
            t = pts[0] - pts[1]
        elif i == 0:
            t = 3 * pts[0] - 4 * pts[1] + pts[2]
        else:
            t = -(3 * pts[i] - 4 * pts[i - 1] + pts[i - 2])
        if t[1] < 0:
            t = -t
        out[name] = float(np.degrees(np.arctan2(t[0], t[1])))
    return out


def _column_frame(profile: SagittalProfile, axis_deg: float) -> np.ndarray:
    """The profile resampled in the column's frame: bool, shape ``(na, nh)``, :data:`HEIGHT_STEP_MM` apart.

    Axis 0 runs toward posterior across the column, axis 1 toward superior along it (tilted
    ``axis_deg`` from +S toward +P), both centred on the body's centroid. The plane fractions
    are interpolated bilinearly and thresholded at 0.5, so a thick slice's staircase becomes
    a slope wherever the endplate is oblique to the slices.
    """
    sy, sz = profile.spacing_mm
    centre = profile.centroid_mm - np.asarray(profile.origin_mm)
    t = np.radians(axis_deg)
    up = np.array([np.sin(t), np.cos(t)])
    back = np.array([np.cos(t), -np.sin(t)])
    reach = 0.5 * float(np.hypot(profile.fraction.shape[0] * sy, profile.fraction.shape[1] * sz)) + 2.0
    s = np.arange(-reach, reach + 1e-6, HEIGHT_STEP_MM)
    a, h = np.meshgrid(s, s, indexing="ij")
    y = centre[0] + a * back[0] + h * up[0]
    z = centre[1] + a * back[1] + h * up[1]
    return ndi.map_coordinates(profile.fraction, [y / sy, z / sz], order=1, cval=0.0) >= 0.5


def body_heights(profile: SagittalProfile, axis_deg: float = 0.0) -> BodyHeights | None:
    """Anterior, middle and posterior height (mm) of a vertebral body from its sagittal profile.

    In the column's frame (:func:`_column_frame`) the body's height at each position across
    it is the length of its chord along the column; the body reaches from its anterior to
    its posterior wall, the median ends of the rows of its middle 40% of height. The
    anterior and posterior heights are the chord lengths at the walls, where Genant's
    reader measures them (Genant et al. 1993): a straight line fitted to the chords across
    the depth (leaving out the outer :data:`EDGE_FRACTION` at each wall, whose chords the
    walls' partial volume shortens), taken to each wall. A line through many chords finds
    a height between two slice positions (an oblique endplate crosses the slices at
    different depths) and is not moved by a single chord. The middle height is the median
    chord over the middle 20% of the depth.

    Parameters
    ----------
    profile : SagittalProfile
    axis_deg : float
        The column's tilt at this vertebra (:func:`column_axes`), degrees from +S toward +P.

    Returns
    -------
    BodyHeights or None
        None when the profile holds no body of at least five chords.
    """
    if profile.centroid_mm is None:
        return None
    grid = _column_frame(profile, axis_deg)
    rows = np.nonzero(grid.any(axis=0))[0]
    if len(rows) < 4:
        return None
    r0, r1 = rows[0], rows[-1]
    middle_rows = grid[:, int(r0 + 0.3 * (r1 - r0)):int(r0 + 0.7 * (r1 - r0)) + 1]
    filled = middle_rows.any(axis=0)
    if not filled.any():
        return None
    front = np.argmax(middle_rows[:, filled], axis=0)
    back = grid.shape[0] - 1 - np.argmax(middle_rows[::-1, filled], axis=0)
    a0, a1 = float(np.median(front)), float(np.median(back))
    cols = np.arange(int(np.ceil(a0)), int(np.floor(a1)) + 1)
    if len(cols) < 5:
        return None
    chord = grid[cols].sum(axis=1) * HEIGHT_STEP_MM
    x = (cols - a0) / (a1 - a0)

    sel = (x >= EDGE_FRACTION) & (x <= 1.0 - EDGE_FRACTION)
    line = np.polyfit(x[sel], chord[sel], 1) if sel.sum() >= 3 else np.array([0.0, float(np.median(chord))])
    middle = (x >= 0.4) & (x <= 0.6)
    return BodyHeights(anterior_mm=float(np.polyval(line, 0.0)),
                       middle_mm=float(np.median(chord[middle])) if middle.any() else float(np.median(chord)),
                       posterior_mm=float(np.polyval(line, 1.0)),
                       depth_mm=float((a1 - a0) * HEIGHT_STEP_MM), axis_deg=float(axis_deg),
                       complete=profile.complete)
