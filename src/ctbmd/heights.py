"""Vertebral body heights without the posterior elements, and Genant's semi-quantitative grade.

Part of stage 2 (:mod:`ctbmd.roi`), which raises the ``suspected_fracture`` flag from
:func:`grade_level`. Method:

* the body without its posterior elements is the front run of the vertebra mask on each
  antero-posterior line (axis 1) of the mid-sagittal slab, in front of the spinal canal; the
  median over the slab's planes gives its sagittal profile (:func:`sagittal_profile`; for the
  builtin labeller, the bone the CT shows inside its label, :func:`ct_body`);
* along the column's local axis (its tilt from the neighbouring body centroids,
  :func:`column_axes`) the body's chords give the anterior and posterior heights at the walls (a
  line fitted across the depth) and the middle height (:func:`body_heights`);
* the anterior and middle heights are compared with the posterior height and with the
  neighbouring vertebrae, and all three with the neighbours (crush), for Genant's grade
  (:func:`genant_grade`; Genant et al., J Bone Miner Res 1993;8:1137, doi 10.1002/jbmr.5650080915):
  grade 1 from a 20% loss, 2 from 25%, 3 from 40%.

Arrays are in the canonical frame: axes toward patient left, posterior, superior; spacing in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from ctbmd.segment.builtin.segments import VERTEBRA_HU
from ctbmd.types import LEVEL_ORDER, VERSE_LABELS, VERSE_NAMES, CTVolume, SpineSegmentation

#: Genant grade boundaries (fraction of height lost): grade 1 from 20%, 2 from 25%, 3 from 40%
#: (Genant et al., J Bone Miner Res 1993;8:1137, doi 10.1002/jbmr.5650080915).
GENANT_LOSS = (0.20, 0.25, 0.40)
#: ``suspected_fracture`` is raised from this Genant grade (1: a height loss of 20% or more).
FRACTURE_MIN_GRADE = 1
#: Half-width (mm) of the mid-sagittal slab whose planes' median gives the body's profile: well
#: inside the flat middle of a body 40-50 mm wide (Panjabi 1991/1992), wide enough for several
#: planes at 0.7-2 mm pixels and one either side at 3 mm.
HEIGHT_SLAB_MM = 5.0
#: Gaps in a label map's body narrower than this (mm) are bridged; the spinal canal behind the
#: body, 10 mm or more deep (Panjabi 1991/1992), is not.
BODY_GAP_MM = 5.0
#: A neighbour is a reference for the Genant grade when its ``A / P`` and ``M / P`` lie in this range:
#: not itself deformed by 20% or more (grade 0, Genant 1993) and not taller in front than the normal
#: lumbosacral wedge of L5 (A / P about 1.2-1.3 on the shared example scan) allows.
NORMAL_SHAPE = (0.80, 1.40)
#: A crush keeps the body's proportions (every height lost alike, Genant 1993): ``A / P`` and
#: ``M / P`` within this range. A body much taller in front than behind, or cupped, that reads short
#: against its neighbours is a partial measurement, or another deformity graded as such.
CRUSH_SHAPE = (0.85, 1.20)
#: ... and its two neighbours agree (mean heights within this ratio): a short body next to a tall one
#: is a vertebra the labeller split too low (the neighbour took its endplate), not a crush.
CRUSH_NEIGHBOUR_SPREAD = 1.15
#: A wedge or biconcave loss against the posterior height counts only when the same height is also
#: at least this much (10%, half of Genant grade 1's 20%) below the normal neighbours' there: a
#: posterior height read too tall (a piece of the next vertebra on the posterior corner) leaves
#: the anterior height normal against the neighbours.
CONFIRM_LOSS = 0.10
#: Heights whose mean is under this fraction of the normal neighbours' are a failed measurement
#: (a body found only in part), not a fracture: even vertebra plana keeps about a quarter of its height.
MIN_HEIGHT_FRACTION = 0.20
#: The posterior height a wedge or biconcave loss is judged against is at most this multiple of
#: the normal neighbours' posterior height: the posterior wall of a wedge or biconcave fracture
#: stands (Genant 1993), so a posterior height far above the neighbours' is a measurement that
#: took in a piece of the next vertebra, not a reference.
POSTERIOR_CAP = 1.15
#: A builtin-labelled vertebra's body is taken from the CT (:func:`ct_body`) up to this distance
#: (mm) in front of and behind its label: the label may stop short of a dim anterior cortex.
LABEL_REACH_MM = 4.0
#: A connected part of bone is taken whole for a builtin-labelled body when at most this fraction
#: of it (relative to its voxels in the body's label) lies in other labels: a strip of endplate.
OTHER_LABEL_SHARE = 0.25
#: The CT's body replaces the label's when their sagittal profiles overlap this much (Dice) ...
BODY_OVERLAP = 0.3
#: ... and it is at least this deep and high (mm): a vertebral body, not a fragment of cortex.
BODY_MIN_MM = 15.0
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
    label map disagree (:func:`level_heights`): its heights (the label's) are reported but
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


@dataclass(frozen=True)
class GenantGrade:
    """Semi-quantitative fracture grade of one vertebra (Genant et al., J Bone Miner Res 1993;8:1137,
    doi 10.1002/jbmr.5650080915), from its measured heights (:func:`genant_grade`).

    Attributes
    ----------
    grade : int
        0 (normal, loss < 20%), 1 (mild, 20-25%), 2 (moderate, 25-40%), 3 (severe, >= 40%).
    kind : str or None
        ``"wedge"`` (anterior loss), ``"biconcave"`` (middle loss) or ``"crush"`` (all heights
        lost against the neighbours): the largest loss, when ``grade`` >= 1.
    loss : float
        That largest height loss, as a fraction (0.3 = 30%).
    ratios : dict
        The measured ratios, rounded to 0.001: ``anterior_posterior``, ``middle_posterior`` and,
        with measured neighbours, ``anterior_neighbours``, ``middle_neighbours``,
        ``posterior_neighbours`` and ``mean_neighbours`` (this body's height over the mean of its
        neighbours' same height).
    measured : bool
        False when the heights are implausible (a mean height under :data:`MIN_HEIGHT_FRACTION`
        of the neighbours': a failed measurement, not a fracture); then ``grade`` is 0 and the
        level is reported ungraded.
    """

    grade: int
    kind: str | None
    loss: float
    ratios: dict[str, float]
    measured: bool = True


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


def genant_grade(own: BodyHeights, neighbours: Sequence[BodyHeights] = (),
                 slice_mm: float = 0.0) -> GenantGrade:
    """Genant semi-quantitative grade of a vertebral body from its heights and its neighbours'.

    Genant et al., J Bone Miner Res 1993;8:1137 (doi 10.1002/jbmr.5650080915): grade 1
    (mild) is a 20-25% reduction of the anterior, middle or posterior height, grade 2
    (moderate) 25-40%, grade 3 (severe) > 40%, judged against the same vertebra's posterior
    height (wedge, biconcave) or against the adjacent normal vertebrae (crush). Here:

    * **wedge**: anterior loss ``1 - A / P``; **biconcave**: middle loss ``1 - M / P``; with
      normal neighbours ``P`` is at most :data:`POSTERIOR_CAP` times their mean posterior height;
    * with normal neighbours (the nearest complete vertebra above and below whose own ratios
      ``A / P`` and ``M / P`` lie within :data:`NORMAL_SHAPE`: a fractured or mismeasured
      neighbour is no reference), the same height must also be at least :data:`CONFIRM_LOSS`
      below the neighbours' mean height there (``1 - A / A_n``, ``1 - M / M_n``), else the
      loss is not counted. A fractured endplate lowers a height against both references; a
      body segmented with a piece of the next vertebra on its posterior corner, or a normal
      body among tall-anterior ones, fails the second;
    * **crush**: ``1 - mean(A, M, P) / mean(A_n, M_n, P_n)`` against each of two normal
      neighbours, the smaller loss, for a body of even proportions (:data:`CRUSH_SHAPE`) between
      neighbours that agree (:data:`CRUSH_NEIGHBOUR_SPREAD`); a mean height under :data:`MIN_HEIGHT_FRACTION` of the
      neighbours' is a failed measurement (``measured`` False), not graded;
    * posterior loss alone is not graded: a posterior height below the anterior is the normal
      shape of L5 under the lumbosacral lordosis (and a mild one of the lordotic L4);
    * a loss smaller than one slice (``slice_mm``) is not graded, whatever its fraction: the
      endplates are then within the slice profile's partial volume of each other.

    Mild physiological anterior wedging at the thoracolumbar junction (up to 10-15% at
    T11-T12) stays below the 20% of grade 1.

    Parameters
    ----------
    own : BodyHeights
    neighbours : sequence of BodyHeights
        Complete neighbours (up to two) measured the same way; may be empty.
    slice_mm : float
        Slice thickness (or z spacing when larger), mm.

    Returns
    -------
    GenantGrade
    """
    a, m, p = own.anterior_mm, own.middle_mm, own.posterior_mm
    ratios: dict[str, float] = {}
    losses: dict[str, float] = {}
    if p <= 0:
        return GenantGrade(grade=0, kind=None, loss=0.0, ratios=ratios)
    ratios["anterior_posterior"] = round(a / p, 3)
    ratios["middle_posterior"] = round(m / p, 3)
    normal = [n for n in neighbours if _normal_shape(n)]
    reference = p
    if normal:
        npost = float(np.mean([n.posterior_mm for n in normal]))
        reference = min(p, POSTERIOR_CAP * npost)
    losses["wedge"] = _loss(a, reference, slice_mm)
    losses["biconcave"] = _loss(m, reference, slice_mm)
    if normal:
        na = float(np.mean([n.anterior_mm for n in normal]))
        nm = float(np.mean([n.middle_mm for n in normal]))
        mean_own = (a + m + p) / 3.0
        means = [(n.anterior_mm + n.middle_mm + n.posterior_mm) / 3.0 for n in normal]
        for name, h, ref in (("anterior", a, na), ("middle", m, nm), ("posterior", p, npost),
                             ("mean", mean_own, float(np.mean(means)))):
            ratios[f"{name}_neighbours"] = round(h / ref, 3)
        if mean_own < MIN_HEIGHT_FRACTION * float(np.mean(means)):
            return GenantGrade(grade=0, kind=None, loss=0.0, ratios=ratios, measured=False)
        for kind, h, ref in (("wedge", a, na), ("biconcave", m, nm)):
            if _loss(h, ref, slice_mm) < CONFIRM_LOSS:
                losses[kind] = 0.0
        if len(normal) >= 2 and _normal_shape(own, CRUSH_SHAPE) and max(means) <= CRUSH_NEIGHBOUR_SPREAD * min(means):
            losses["crush"] = min(_loss(mean_own, ref, slice_mm) for ref in means)
    kind = max(losses, key=losses.get)
    loss = losses[kind]
    grade = int(np.searchsorted(GENANT_LOSS, loss, side="right"))
    return GenantGrade(grade=grade, kind=kind if grade else None, loss=round(loss, 3), ratios=ratios)


def _normal_shape(h: BodyHeights, bounds: tuple[float, float] = NORMAL_SHAPE) -> bool:
    """True when ``A / P`` and ``M / P`` of ``h`` lie within ``bounds`` (:data:`NORMAL_SHAPE`: a reference for its neighbours)."""
    if h.posterior_mm <= 0:
        return False
    lo, hi = bounds
    return lo <= h.anterior_mm / h.posterior_mm <= hi and lo <= h.middle_mm / h.posterior_mm <= hi


def _loss(height: float, reference: float, slice_mm: float) -> float:
    """``1 - height / reference`` (0 when the reference is missing or the difference is under ``slice_mm``)."""
    if reference <= 0 or reference - height < slice_mm:
        return 0.0
    return 1.0 - height / reference


def crop_of(seg: SpineSegmentation, value: int) -> tuple[slice, ...]:
    """The bounding box of label ``value`` (``seg.boxes``) plus 2 voxels, clipped to the volume: a tuple of 3
    slices along the canonical L, P, S axes."""
    return tuple(slice(max(0, b.start - 2), min(n, b.stop + 2)) for b, n in zip(seg.boxes[value], seg.labels.shape))


def touches_edge(seg: SpineSegmentation, value: int) -> bool:
    """True when label ``value``'s bounding box reaches the edge of the volume (a vertebra cut by the scan)."""
    return any(b.start == 0 or b.stop == n for b, n in zip(seg.boxes[value], seg.labels.shape))


def ct_body(vertebra: np.ndarray, hu: np.ndarray, labels: np.ndarray, value: int,
            spacing_mm: tuple[float, float, float], planes: slice | None = None) -> np.ndarray:
    """The vertebra's bone as the CT shows it, for the heights of a builtin-labelled vertebra.

    The builtin labeller draws its masks on a 2 mm working grid from linearly resampled HU
    (:mod:`ctbmd.segment.builtin.segments`): with thick slices they reach into the discs,
    take in a corner of the next vertebra's endplate, or miss a dim anterior cortex. On the
    CT's own grid, in each sagittal plane, the connected parts of the bone (above the
    labeller's own :data:`~ctbmd.segment.builtin.segments.VERTEBRA_HU`):

    * a part in this vertebra's label with at most :data:`OTHER_LABEL_SHARE` as much in other
      labels is this body, whole: the discs bound it, not the label's cut, which may have
      left a strip of its endplate to the next label;
    * a part more in this label than in others, beyond that share (bodies joined through
      a disc that the thick slice fills), is cut at the label's heights;
    * a part mostly in another label is that vertebra's (a corner of its endplate in this
      label), unless it holds most of this vertebra's bone (joined to the next vertebrae
      through a thin disc or an osteophyte): then it is cut at the label;

    all within :data:`LABEL_REACH_MM` in front of and behind the label. Then each line along the S axis is filled
    between its lowest and highest voxel (a low-density marrow between the two endplates).

    Parameters
    ----------
    vertebra : numpy.ndarray
        bool, shape ``(nx, ny, nz)`` (L, P, S): this vertebra's label, cropped.
    hu, labels : numpy.ndarray
        The CT's HU and the whole label map on the same crop.
    value : int
        This vertebra's label value.
    spacing_mm : tuple of float
        Voxel size (mm).
    planes : slice, optional
        The sagittal planes (axis 0) to look at; the others stay empty. All when None.

    Returns
    -------
    numpy.ndarray
        bool, shape of ``vertebra``.
    """
    grow = int(round(LABEL_REACH_MM / spacing_mm[1]))
    # the label's antero-posterior reach in each plane, at every height: its own bone decides where it ends
    span = vertebra.any(axis=2)
    span = ndi.binary_dilation(span, np.ones((1, 2 * grow + 1), bool)) if grow else span
    near = ndi.binary_dilation(vertebra, np.ones((1, 2 * grow + 1, 1), bool)) if grow else vertebra
    bone = hu > VERTEBRA_HU
    kept = np.zeros_like(vertebra)
    planes = planes if planes is not None else slice(0, vertebra.shape[0])
    for x in range(*planes.indices(vertebra.shape[0])):
        if not vertebra[x].any():
            continue
        parts, n = ndi.label(bone[x])
        if n == 0:
            continue
        own = np.bincount(parts[labels[x] == value], minlength=n + 1)
        other = np.bincount(parts[(labels[x] > 0) & (labels[x] != value)], minlength=n + 1)
        own[0] = other[0] = 0
        whole = (own > 0) & (other <= OTHER_LABEL_SHARE * own)
        mostly = ~whole & (own > other)
        # bone joined to the next vertebrae (a thin disc, an osteophyte) that holds most of this one
        joined = ~whole & ~mostly & (own >= 0.5 * own.sum())
        kept[x] = ((whole[parts] & span[x][:, None]) | (mostly[parts] & near[x])
                   | (joined[parts] & vertebra[x]))
    return _fill_along_s(kept)


def _fill_along_s(mask: np.ndarray) -> np.ndarray:
    """Each line along axis 2 of a bool ``(nx, ny, nz)`` mask filled between its first and last True voxel."""
    has = mask.any(axis=2)
    lo = np.argmax(mask, axis=2)
    hi = mask.shape[2] - 1 - np.argmax(mask[:, :, ::-1], axis=2)
    k = np.arange(mask.shape[2])
    return has[:, :, None] & (k >= lo[:, :, None]) & (k <= hi[:, :, None])


def _plausible_body(seen: SagittalProfile | None, label: SagittalProfile) -> bool:
    """Whether the CT's body profile of a builtin-labelled vertebra can replace its label's.

    It must overlap the label's profile (Dice >= :data:`BODY_OVERLAP`: the same vertebra) and
    look like a vertebral body: at least :data:`BODY_MIN_MM` deep and high (Panjabi 1991/1992:
    T10-L5 bodies are 20-30 mm high and 25-35 mm deep). Where the label is broken (a
    fragmentary mask of a low-density body) the CT's body is usually right and their overlap
    low, so the overlap asked is low; a CT body that is no body (a cortex fragment) fails
    the size.
    """
    if seen is None or seen.centroid_mm is None or _agreement(seen, label) < BODY_OVERLAP:
        return False
    mask = seen.fraction >= 0.5
    extent = [np.ptp(np.nonzero(mask)[axis]) * seen.spacing_mm[axis] for axis in (0, 1)]
    return min(extent) >= BODY_MIN_MM


def _agreement(a: SagittalProfile, b: SagittalProfile) -> float:
    """Dice coefficient of two profiles of the same crop (their voxels of fraction >= 0.5)."""
    ma, mb = a.fraction >= 0.5, b.fraction >= 0.5
    total = int(ma.sum() + mb.sum())
    return 2.0 * float((ma & mb).sum()) / total if total else 0.0


def level_heights(ct: CTVolume, seg: SpineSegmentation, levels: Sequence[str]) -> dict[str, BodyHeights]:
    """Body heights of ``levels`` and of the vertebrae next to them in the label map.

    Every vertebra of ``seg.labels`` within two places of a level of ``levels`` gets a
    :func:`sagittal_profile` of its label. For the builtin labeller the profile of the bone
    the CT shows (:func:`ct_body`) replaces it when it is a plausible body of the same vertebra
    (:func:`_plausible_body`); when it is not, the label's profile is kept and the heights are marked not
    ``consistent``: a label that far from the bone is not measured on, and such a level is
    not graded (:func:`grade_level`); nor is a body found less than :data:`BODY_MIN_MM` deep. Other backends' labels (TotalSegmentator,
    a label map) are used as they are. The column's tilt at each vertebra
    (:func:`column_axes`) comes from the profiles' centroids, then :func:`body_heights`.

    Parameters
    ----------
    ct : CTVolume
        The scan, canonical L, P, S axes.
    seg : SpineSegmentation
        Vertebra labels on ``ct``'s grid (VerSe numbering), with ``boxes``.
    levels : sequence of str
        Levels to measure, e.g. ``("L1", "L2")``.

    Returns
    -------
    dict
        Level name -> BodyHeights, cranial to caudal, for each vertebra whose body was found.
    """
    present = sorted((VERSE_NAMES[v] for v in seg.boxes if v in VERSE_NAMES), key=LEVEL_ORDER.index)
    wanted = {present.index(lv) + d for lv in levels if lv in present for d in range(-2, 3)}
    profiles: dict[str, SagittalProfile] = {}
    consistent: dict[str, bool] = {}
    for i in sorted(i for i in wanted if 0 <= i < len(present)):
        name = present[i]
        value = VERSE_LABELS[name]
        crop = crop_of(seg, value)
        offset = tuple(c.start for c in crop)
        vertebra = seg.labels[crop] == value
        body = seg.body[crop] == value if seg.body is not None else None
        complete = not touches_edge(seg, value)
        prof = sagittal_profile(vertebra, ct.spacing_mm, offset, body, complete)
        if prof is None or prof.centroid_mm is None:
            continue
        consistent[name] = True
        if seg.backend == "builtin":
            seen = sagittal_profile(ct_body(vertebra, ct.hu[crop], seg.labels[crop], value, ct.spacing_mm, prof.planes),
                                    ct.spacing_mm, offset, body, complete, prof.planes)
            if _plausible_body(seen, prof):
                prof = seen
            else:
                consistent[name] = False
        profiles[name] = prof
    axes = column_axes({n: p.centroid_mm for n, p in profiles.items()})
    out = {}
    for name, prof in profiles.items():
        h = body_heights(prof, axes[name])
        if h is not None:
            out[name] = replace(h, consistent=consistent[name] and h.depth_mm >= BODY_MIN_MM)
    return out


def grade_level(level: str, heights: dict[str, BodyHeights], slice_mm: float) -> GenantGrade | None:
    """Genant grade of ``level`` against its nearest complete neighbours in ``heights`` (None if unmeasurable).

    A level cut by the edge of the scan, whose body was not found, whose body in the CT
    and label disagree (``consistent`` False, :func:`level_heights`), or whose heights are
    implausible against its neighbours' (:attr:`GenantGrade.measured`), is not graded; such
    neighbours are no reference either.

    Parameters
    ----------
    level : str
        Level name, e.g. ``"L1"``.
    heights : dict
        :func:`level_heights` of the level and its neighbours.
    slice_mm : float
        Slice thickness or spacing (mm), whichever is larger: a loss within one slice is not graded.

    Returns
    -------
    GenantGrade or None
    """
    own = heights.get(level)
    if own is None or not own.complete or not own.consistent or own.posterior_mm <= 0:
        return None
    names = sorted(heights, key=LEVEL_ORDER.index)
    i = names.index(level)
    neighbours = [heights[n] for n in (names[i - 1] if i > 0 else None, names[i + 1] if i + 1 < len(names) else None)
                  if n is not None and heights[n].complete and heights[n].consistent]
    grade = genant_grade(own, neighbours, slice_mm)
    return grade if grade.measured else None
