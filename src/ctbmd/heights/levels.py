"""Body heights of the labelled vertebrae of a scan: the body found in the label map or the CT.

Part of :mod:`ctbmd.heights` (see there for the method): :func:`level_heights` measures the
levels and their neighbours; for the builtin labeller the body is the bone the CT shows in
and near its label (:func:`ct_body`).

Arrays are in the canonical frame: axes toward patient left, posterior, superior; spacing in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from ctbmd.heights.profile import BodyHeights, SagittalProfile, body_heights, column_axes, sagittal_profile
from ctbmd.segment.builtin.segments import VERTEBRA_HU
from ctbmd.types import LEVEL_ORDER, VERSE_LABELS, VERSE_NAMES, CTVolume, SpineSegmentation

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
    not graded (:func:`~ctbmd.heights.grade_level`); nor is a body found less than :data:`BODY_MIN_MM` deep. Other backends' labels (TotalSegmentator,
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
