"""Split the column into vertebrae at the discs and draw their masks.

Each piece of the column between two consecutive discs is one vertebra
candidate (:class:`Segment`); the pieces beyond the first and last disc are
kept as open segments (a vertebra cut by the edge of the scan, or the sacrum).

Masks are drawn in the straightened column (:mod:`.column`), where a vertebra
stands upright in front of the canal, and carried back to the working grid
through each voxel's column coordinates ``(s, u, v)`` (nearest centre-line
point, then projection on its frame):

* *bone*: above 100 HU, closed by 2 mm, with the holes of each plane filled in
  front of the canal (a low-density body is a cortical ring around marrow below
  100 HU), within 45 mm of the mid-line (transverse processes, Panjabi 1991/1992)
  and from 3 mm in front of the body's anterior edge to 40 mm behind the canal;
  only bone 3-D connected to the body centre line is kept;
* *vertebra*: that bone between the segment's two disc planes; behind the canal
  the cut follows the downward slope of the posterior elements (steep in the
  thoracic spine), so each spinous process stays with its own vertebra;
* *body*: the vertebra in front of the body's posterior wall (no arch, no ribs,
  no sacrum or ilium) and 15% of its height short of each disc plane (half a
  disc: the body ends at its endplates), for the trabecular ROI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cc3d
import numpy as np

from ctbmd.masks import box_closing, plane_holes
from ctbmd.segment.builtin.column import STEP_MM, Column
from ctbmd.segment.builtin.discs import Discs
from ctbmd.segment.builtin.grid import WORK_THREADS, WorkGrid

#: Bone threshold (HU) of the vertebra masks.
VERTEBRA_HU = 100.0
#: Largest distance (mm) of vertebral bone from the mid-line, and the posterior limit behind the canal.
HALF_WIDTH_MM = 45.0
POSTERIOR_MM = 40.0
#: The body mask stops this fraction of the disc-to-disc height short of each disc plane: about half
#: a disc (4-11 mm thick lumbar, 4-6 mm thoracic, Panjabi 1991/1992), so the body ends at its
#: endplates, as a body segmentation does, and the ROI's erosion starts there.
ENDPLATE_MARGIN = 0.15
#: Half-width (mm) of a rib-bearing vertebra's mask: thoracic transverse processes reach 25-40 mm
#: from the mid-line and the ribs articulate with their tips (Panjabi 1991).
RIBBED_HALF_WIDTH_MM = 30.0
#: An open end segment is drawn at most this many typical vertebra heights from its disc.
OPEN_HEIGHT = 1.1
#: Posterior elements slope down behind the canal: thoracic spinous processes overlap the vertebra
#: below, lumbar ones are nearly horizontal (Panjabi 1991/1992: spinous process angles of about
#: 40-60 degrees thoracic, 10-20 degrees lumbar). Slopes (mm down per mm back) from ARCH_START_MM
#: behind the canal centre.
SPINOUS_SLOPE = {"thoracic": 0.5, "lumbar": 0.15}
ARCH_START_MM = 6.0
#: Shortest open end segment (mm) kept: shorter ends hold no measurable vertebra.
MIN_OPEN_MM = 8.0


@dataclass(frozen=True)
class Segment:
    """One vertebra candidate along the column.

    Attributes
    ----------
    index : int
        Position along the column, 0 = the most caudal segment.
    s_lo_mm, s_hi_mm : float
        Arc-length bounds (mm): the discs below and above, or the column's end.
    closed_below, closed_above : bool
        Whether a disc bounds the segment below / above (False: the column ends
        there, at the edge of the scan or in the sacrum).
    width_mm, depth_mm : float
        Median body width and depth (mm) over the middle half of the segment.
    centre_ijk : numpy.ndarray
        float, shape ``(3,)``: body centre at mid-height, working-grid index.
    """

    index: int
    s_lo_mm: float
    s_hi_mm: float
    closed_below: bool
    closed_above: bool
    width_mm: float
    depth_mm: float
    centre_ijk: np.ndarray

    @property
    def height_mm(self) -> float:
        """Disc-to-disc distance (mm) along the canal; the open extent for an open segment."""
        return self.s_hi_mm - self.s_lo_mm

    @property
    def complete(self) -> bool:
        """True when discs bound the segment on both sides."""
        return self.closed_below and self.closed_above

    @property
    def s_mid_mm(self) -> float:
        """Arc length (mm) of the segment's mid-height."""
        return (self.s_lo_mm + self.s_hi_mm) / 2.0


def split_column(col: Column, discs: Discs) -> tuple[Segment, ...]:
    """Cut the column at its discs (caudal to cranial).

    Returns
    -------
    tuple of Segment
        The closed segments between consecutive discs plus an open segment at
        either end when the column extends :data:`MIN_OPEN_MM` or more beyond
        the outermost disc. Empty when no disc was found.
    """
    if len(discs.s_mm) == 0:
        return ()
    bounds = [(float(a), float(b), True, True) for a, b in zip(discs.s_mm[:-1], discs.s_mm[1:])]
    start, end = float(col.s_mm[0]), float(col.s_mm[-1])
    if discs.s_mm[0] - start >= MIN_OPEN_MM:
        bounds.insert(0, (start, float(discs.s_mm[0]), False, True))
    if end - discs.s_mm[-1] >= MIN_OPEN_MM:
        bounds.append((float(discs.s_mm[-1]), end, True, False))
    out = []
    for i, (lo, hi, below, above) in enumerate(bounds):
        k0, k1 = col.index_of(lo + 0.25 * (hi - lo)), col.index_of(hi - 0.25 * (hi - lo))
        mid = (lo + hi) / 2.0
        out.append(Segment(index=i, s_lo_mm=lo, s_hi_mm=hi, closed_below=below, closed_above=above,
                           width_mm=float(np.median(col.body_width_mm[k0:k1 + 1])),
                           depth_mm=float(np.median(col.body_depth_mm[k0:k1 + 1])),
                           centre_ijk=col.body_point_ijk(mid)))
    return tuple(out)


class ColumnCoordinates(NamedTuple):
    """Working voxels near the canal line and their column coordinates (:func:`column_coordinates`).

    Attributes
    ----------
    voxels : tuple of numpy.ndarray
        Index arrays ``(i, j, k)`` of the voxels covered, shape ``(n,)`` each.
    s, u, v : numpy.ndarray
        float, shape ``(n,)``: their arc length along the canal, left-right and
        antero-posterior offsets from it (mm).
    """

    voxels: tuple[np.ndarray, np.ndarray, np.ndarray]
    s: np.ndarray
    u: np.ndarray
    v: np.ndarray


class VertebraMasks(NamedTuple):
    """Label maps of the named segments on the working grid (:func:`vertebra_masks`).

    Attributes
    ----------
    vertebrae, bodies : numpy.ndarray
        uint8, shape of ``work.hu``: whole vertebrae, and their bodies only
        (label values as given).
    """

    vertebrae: np.ndarray
    bodies: np.ndarray


def column_coordinates(work: WorkGrid, col: Column, reach_mm: float = 70.0) -> ColumnCoordinates:
    """Column coordinates ``(s, u, v)`` (mm) of the working voxels within ``reach_mm`` of the canal line.

    Returns
    -------
    ColumnCoordinates
        ``(voxels, s, u, v)``.
    """
    sp = col.spacing_mm
    lo = np.maximum(np.floor(col.centre_ijk.min(axis=0) - reach_mm / sp), 0).astype(int)
    hi = np.minimum(np.ceil(col.centre_ijk.max(axis=0) + reach_mm / sp) + 1, work.hu.shape).astype(int)
    grid = np.mgrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].reshape(3, -1).T
    from scipy.spatial import cKDTree  # here: ctbmd.pipeline.preload imports it in the background

    dist, k = cKDTree(col.centre_ijk).query(grid, distance_upper_bound=reach_mm / sp,
                                             workers=WORK_THREADS)
    near = np.isfinite(dist)
    grid, k = grid[near], k[near]
    rel = (grid - col.centre_ijk[k]) * sp
    f = col.frames[k]
    s = col.s_mm[k] + np.einsum("ij,ij->i", rel, f[:, 0])
    u = np.einsum("ij,ij->i", rel, f[:, 1])
    v = np.einsum("ij,ij->i", rel, f[:, 2])
    return ColumnCoordinates((grid[:, 0], grid[:, 1], grid[:, 2]), s, u, v)


def _straight_bone(col: Column) -> np.ndarray:
    """Vertebral bone in the straightened column (bool, shape of ``col.straight``)."""
    st, u, v = col.straight, col.u_mm, col.v_mm
    bone = st > VERTEBRA_HU
    bone = box_closing(bone) | bone
    front = v < -3.0
    bone |= plane_holes(bone) & front[None, :, None]  # fill each plane's holes in front of the canal
    anterior_limit = (col.body_v_mm - col.body_depth_mm / 2.0 - 3.0)[None, None, :]
    inside = (np.abs(u)[:, None, None] <= HALF_WIDTH_MM) & (v[None, :, None] >= anterior_limit) \
        & (v[None, :, None] <= POSTERIOR_MM)
    bone &= inside
    seeds = np.zeros_like(bone)
    iu0 = int(np.argmin(np.abs(u)))
    for k in range(st.shape[2]):
        jv = int(np.argmin(np.abs(v - col.body_v_mm[k])))
        seeds[iu0 - 2:iu0 + 3, jv - 2:jv + 3, k] = True
    lab = cc3d.connected_components(bone, connectivity=6)
    keep = np.unique(lab[seeds & bone])
    return np.isin(lab, keep[keep > 0])


def vertebra_masks(work: WorkGrid, col: Column, segments: tuple[Segment, ...], values: dict[int, int],
                   ribbed: frozenset[int] = frozenset(), slopes: dict[int, float] | None = None
                   ) -> VertebraMasks:
    """Label maps of the named segments on the working grid.

    Parameters
    ----------
    work : WorkGrid
    col : Column
    segments : tuple of Segment
    values : dict
        Segment index -> label value (VerSe number) for the segments to draw.
    ribbed : frozenset of int
        Label values of rib-bearing vertebrae: drawn only
        :data:`RIBBED_HALF_WIDTH_MM` either side of the mid-line, so the ribs,
        which touch their transverse processes, stay out.
    slopes : dict, optional
        Segment index -> downward slope of its posterior elements (mm of arc
        length per mm behind :data:`ARCH_START_MM`); behind the canal the cut
        between two vertebrae follows the slope of the upper one, so a spinous
        process that points down over the vertebra below stays with its own
        (:data:`SPINOUS_SLOPE`).

    Returns
    -------
    VertebraMasks
        ``(vertebrae, bodies)``, uint8, shape of ``work.hu``: whole vertebrae, and
        their bodies only.
    """
    vertebrae = np.zeros(work.hu.shape, np.uint8)
    bodies = np.zeros(work.hu.shape, np.uint8)
    if not values:
        return VertebraMasks(vertebrae, bodies)
    bone = _straight_bone(col)
    (i, j, k), s, u, v = column_coordinates(work, col)
    iu = np.rint((u - col.u_mm[0]) / STEP_MM).astype(int)
    jv = np.rint((v - col.v_mm[0]) / STEP_MM).astype(int)
    ks = np.rint((s - col.s_mm[0]) / STEP_MM).astype(int)
    ok = (iu >= 0) & (iu < len(col.u_mm)) & (jv >= 0) & (jv < len(col.v_mm)) & (ks >= 0) & (ks < len(col.s_mm))
    ok[ok] = bone[iu[ok], jv[ok], ks[ok]]  # every voxel drawn below is bone
    i, j, k, s, u, v, ks = (a[ok] for a in (i, j, k, s, u, v, ks))
    wall_v = col.body_v_mm + col.body_depth_mm / 2.0  # v of the body's posterior wall (< 0)
    in_body = v <= wall_v[ks] + 1.0
    closed = [g.height_mm for g in segments if g.complete]
    nominal = float(np.median(closed)) if closed else 30.0
    if slopes:
        # behind the canal, shift each voxel up along its vertebra's posterior slope
        bounds = np.array([g.s_hi_mm for g in segments])
        owner = np.clip(np.searchsorted(bounds, s), 0, len(segments) - 1)
        k_slope = np.array([slopes.get(g.index, 0.0) for g in segments])[owner]
        s = s + k_slope * np.maximum(v - ARCH_START_MM, 0.0)
    for seg in segments:
        value = values.get(seg.index)
        if value is None:
            continue
        # an open end is drawn no taller than a vertebra, from its disc
        lo = seg.s_lo_mm if seg.closed_below else max(seg.s_lo_mm, seg.s_hi_mm - OPEN_HEIGHT * nominal)
        hi = seg.s_hi_mm if seg.closed_above else min(seg.s_hi_mm, seg.s_lo_mm + OPEN_HEIGHT * nominal)
        half = HALF_WIDTH_MM if value not in ribbed else RIBBED_HALF_WIDTH_MM
        sel = (s >= lo) & (s < hi) & (np.abs(u) <= half)
        vertebrae[i[sel], j[sel], k[sel]] = value
        margin = ENDPLATE_MARGIN * seg.height_mm
        sel &= in_body & (s >= seg.s_lo_mm + margin) & (s < seg.s_hi_mm - margin)
        bodies[i[sel], j[sel], k[sel]] = value
    return VertebraMasks(vertebrae, bodies)
