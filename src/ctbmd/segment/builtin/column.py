"""Find the spinal column: the canal centre line, its local frames and the straightened column.

Method (working grid, 2 mm isotropic, axes L, P, S; see :mod:`.grid`):

1. **Canal score.** Every voxel is scored as a candidate centre of the spinal
   canal by the pattern that surrounds the canal along the whole spine, cervical
   to sacral: cerebrospinal fluid and cord (about 0-60 HU) in a 6 mm square, a
   vertebral body or disc in a box 10-26 mm in front of it and 28 mm wide (HU
   capped at 200, so an enhanced vessel counts no more than bone), the arch 10-24
   mm behind it, pedicles or laminae 8-14 mm to either side, and mirror symmetry
   about its mid-sagittal line (vertebral anatomy after Panjabi et al., Spine
   1991;16:888 and 1992;17:299: canal 15-25 mm wide, bodies 25-55 mm wide).
   Vessels, the trachea, the heart, the sternum, the shoulder girdle, sacral
   foramina and the sacroiliac joints do not show this pattern.
2. **Canal track.** Dynamic programming over the axial slices picks one canal
   centre per slice, maximising the summed score less a cost per voxel of
   displacement between slices (at most 2 mm left-right and 4 mm front-back per
   2 mm slice: the column can lean up to about 60 degrees in the sagittal plane
   at the cervicothoracic and lumbosacral junctions, much less sideways). It is
   a local alignment: it starts and stops where the canal pattern does. Where
   it drifts sideways at its largest step for long it has left the spine (the
   pelvis below the sacrum) and is cut there (:func:`spine_run`).
3. **Centre line and frames.** The track is smoothed and resampled every 1 mm of
   arc length ``s`` (caudal to cranial). At each ``s`` the frame has ``t`` along
   the column (cranial), ``u`` toward the patient's left and ``v`` toward
   posterior, both perpendicular to ``t``.
4. **Straightened column.** The CT is sampled on the planes perpendicular to the
   centre line (a curved planar reformation, Kanitsar et al., IEEE VIS 2002):
   ``u`` -60..60 mm, ``v`` -80..40 mm, 1 mm steps. In it every vertebra stands
   upright in front of the canal and every disc is a horizontal band, whatever
   the kyphosis, lordosis or scoliosis.
5. **Top of the scan.** Where the canal track meets the top of the scan the
   centre line is continued straight, and kept as far as the body centre is in
   the scan (:func:`_extend_at_top`): a forward-leaning column's body meets the
   edge after its canal does.
6. **Body track.** In each plane the body's posterior wall, anterior cortex and
   width are read on five sagittal lines (``u`` = -8..8 mm); the shallowest line
   is kept, so an enhanced aorta touching the body on one side does not carry
   the edge (:func:`.body.body_track`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ctbmd.errors import NoSpineError
from ctbmd.segment.builtin.body import body_track
from ctbmd.segment.builtin.grid import WORK_THREADS, WorkGrid

#: Arc-length step (mm) of the centre line and the straightened column.
STEP_MM = 1.0
#: Extent (mm) of the straightened column: u (left-right) and v (anterior -, posterior +).
U_HALF_MM = 60.0
V_RANGE_MM = (-80.0, 40.0)
#: Planes sampled per :func:`scipy.ndimage.map_coordinates` call in :func:`straighten` (memory, not method).
STRAIGHTEN_CHUNK = 64
#: HU of the canal content: cerebrospinal fluid and cord (about 0-60 HU).
CANAL_HU = 30.0
#: Score a slice must exceed to extend the canal track (see :func:`track_canal`): the canal
#: itself scores 150-400 (body and arch around fluid), soft tissue and solid bone far less.
CANAL_BASELINE = 100.0
#: Largest displacement (working voxels) of the canal between slices: left-right, front-back.
MAX_STEP_LR, MAX_STEP_AP = 1, 2
#: Score lost per voxel of displacement between slices, left-right and front-back: the column
#: bends mostly in the sagittal plane (kyphosis, lordosis, sacrum), little sideways.
STEP_COST_LR, STEP_COST_AP = 40.0, 25.0
#: Left-right drift of the canal track (voxels per slice, averaged over DRIFT_WINDOW slices) beyond
#: which it has left the spine (see :func:`spine_run`).
MAX_DRIFT, DRIFT_WINDOW = 0.8, 9
#: Length (mm) by which the centre line is continued past its top where the canal meets the scan's
#: top edge: the body lies up to 35 mm in front of the canal (Panjabi 1991/1992), and at a lean of up to
#: about 60 degrees its centre reaches the edge up to 30 mm of line later (:func:`_extend_at_top`).
EDGE_EXTENSION_MM = 30.0
#: Shortest column (mm of arc length) worth labelling: about two vertebrae.
MIN_COLUMN_MM = 40.0


@dataclass(frozen=True)
class Column:
    """The spinal column's centre line (the canal) with its frames and straightened image.

    Attributes
    ----------
    s_mm : numpy.ndarray
        float, shape ``(ns,)``: arc length along the canal from its caudal end, mm,
        in steps of :data:`STEP_MM`.
    centre_ijk : numpy.ndarray
        float, shape ``(ns, 3)``: canal centre in working-grid index units.
    frames : numpy.ndarray
        float, shape ``(ns, 3, 3)``: rows ``t`` (along the column, cranial), ``u``
        (toward the patient's left) and ``v`` (toward posterior), unit vectors in
        working-grid index axes (the grid is isotropic, so also in LPS axes).
    straight : numpy.ndarray
        float32, shape ``(nu, nv, ns)``: HU on the planes perpendicular to the
        centre line, at ``u_mm`` x ``v_mm`` x ``s_mm``.
    u_mm, v_mm : numpy.ndarray
        Sample positions (mm) of the straightened image's first two axes.
    body_v_mm : numpy.ndarray
        float, shape ``(ns,)``: ``v`` of the vertebral-body centre (negative:
        anterior of the canal centre).
    body_depth_mm : numpy.ndarray
        float, shape ``(ns,)``: antero-posterior depth of the body.
    body_width_mm : numpy.ndarray
        float, shape ``(ns,)``: left-right width of the body (an upper bound where
        ribs or transverse processes touch it).
    spacing_mm : float
        Working-grid voxel size (mm) used to convert mm to index units.
    """

    s_mm: np.ndarray
    centre_ijk: np.ndarray
    frames: np.ndarray
    straight: np.ndarray
    u_mm: np.ndarray
    v_mm: np.ndarray
    body_v_mm: np.ndarray
    body_depth_mm: np.ndarray
    body_width_mm: np.ndarray
    spacing_mm: float

    @property
    def length_mm(self) -> float:
        """Arc length of the centre line, mm."""
        return float(self.s_mm[-1] - self.s_mm[0]) if len(self.s_mm) else 0.0

    def index_of(self, s_mm: float) -> int:
        """Nearest sample index of arc length ``s_mm`` (clipped to the line)."""
        return int(np.clip(round((s_mm - self.s_mm[0]) / STEP_MM), 0, len(self.s_mm) - 1))

    def point_ijk(self, s_mm: float, u_mm: float = 0.0, v_mm: float = 0.0) -> np.ndarray:
        """Working-grid index (float, shape ``(3,)``) of the point at ``(u, v)`` mm in the plane at ``s``."""
        k = self.index_of(s_mm)
        f = self.frames[k]
        return self.centre_ijk[k] + (u_mm * f[1] + v_mm * f[2]) / self.spacing_mm

    def body_arc_mm(self) -> np.ndarray:
        """Arc length (mm) along the line of body centres at each sample of ``s_mm``, shape ``(ns,)``.

        The body centre's distance from the canal is smoothed over 50 mm first (it
        changes slowly along the spine, 15-35 mm from T1 to L5). Non-decreasing: where
        the body line folds back (a bend sharper than its distance from the canal) it
        advances by at least a third of the canal's step.
        """
        n = int(round(50.0 / STEP_MM)) | 1
        offset = ndi.gaussian_filter1d(ndi.median_filter(self.body_v_mm, n, mode="nearest"), n / 4.0, mode="nearest")
        points = self.centre_ijk + self.frames[:, 2] * (offset / self.spacing_mm)[:, None]
        step = np.linalg.norm(np.diff(points, axis=0), axis=1) * self.spacing_mm
        step = np.maximum(step, np.diff(self.s_mm) / 3.0)
        return np.r_[0.0, np.cumsum(step)] + float(self.s_mm[0])

    def body_point_ijk(self, s_mm: float) -> np.ndarray:
        """Working-grid index of the vertebral-body centre at ``s``."""
        return self.point_ijk(s_mm, 0.0, float(self.body_v_mm[self.index_of(s_mm)]))


def _shift(a: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``out[..., x, ...] = a[..., clip(x + d), ...]`` along ``axis``: a shift with the edge replicated.

    Slice copies, not a gather: the memory order of ``a`` is kept. Returns ``a``
    itself when ``d`` is 0.
    """
    n = a.shape[axis]
    d = int(np.clip(d, -(n - 1), n - 1))
    if d == 0:
        return a
    at = lambda lo, hi: (slice(None),) * axis + (slice(lo, hi),)  # noqa: E731
    out = np.empty_like(a)
    if d > 0:
        out[at(0, n - d)] = a[at(d, n)]
        out[at(n - d, n)] = a[at(n - 1, n)]
    else:
        out[at(-d, n)] = a[at(0, n + d)]
        out[at(0, -d)] = a[at(0, 1)]
    return out


def _shift_xy(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``out[x, y, z] = a[x + dx, y + dy, z]``, edges replicated (:func:`_shift` along x, then y)."""
    return _shift(_shift(a, dx, 0), dy, 1)


def _box_mean(a: np.ndarray, cx: int, cy: int, hx: int, hy: int) -> np.ndarray:
    """Mean of ``a`` over the in-plane box ``[x+cx-hx, x+cx+hx] x [y+cy-hy, y+cy+hy]`` (voxels)."""
    m = ndi.uniform_filter(a, size=(2 * hx + 1, 2 * hy + 1, 1), mode="nearest")
    return _shift_xy(m, cx, cy)


def _box_max(a: np.ndarray, cx: int, cy: int, hx: int, hy: int) -> np.ndarray:
    """Maximum of ``a`` over the in-plane box centred ``(cx, cy)`` voxels away, half-sizes ``(hx, hy)``."""
    m = ndi.maximum_filter(a, size=(2 * hx + 1, 2 * hy + 1, 1), mode="nearest")
    return _shift_xy(m, cx, cy)


def canal_score(work: WorkGrid) -> np.ndarray:
    """Score each working voxel as the centre of the spinal canal (step 1 of the module method).

    Returns
    -------
    numpy.ndarray
        float32, shape of ``work.hu``: higher is more canal-like; -1000 outside
        the body outline.
    """
    sp = work.spacing_mm
    r = lambda mm: int(round(mm / sp))  # noqa: E731
    h = np.clip(work.hu, -200.0, 400.0).astype(np.float32)

    def walls() -> np.ndarray:  # the canal's side walls: the box maximum 11 mm left and right
        near_max = _box_max(h, 0, 0, 1, r(4))
        return np.minimum(_shift_xy(near_max, r(11), 0), _shift_xy(near_max, -r(11), 0))

    def asymmetry() -> np.ndarray:
        # A vertebra is mirror-symmetric about the canal's mid-sagittal line; the sacroiliac
        # joints, sacral foramina and other canal-like gaps in bone are not.
        asym = np.zeros_like(h)
        for d_mm in (6.0, 12.0, 18.0, 24.0):
            asym += np.abs(_shift_xy(h, -r(d_mm), 0) - _shift_xy(h, r(d_mm), 0))
        return _box_mean(asym / 4.0, 0, 0, 1, r(10))

    terms = {  # independent filters over the whole grid; scipy.ndimage releases the GIL, so two threads
        "inside": lambda: _box_mean(h, 0, 0, 1, 1),
        "body": lambda: _box_mean(np.clip(work.hu, -100.0, 200.0).astype(np.float32), 0, -r(18), r(14), r(8)),
        "behind": lambda: _box_mean(h, 0, r(17), 2, r(7)),
        "walls": walls,
        "asym": asymmetry,
    }
    with ThreadPoolExecutor(max_workers=WORK_THREADS) as pool:
        t = dict(zip(terms, pool.map(lambda make: make(), terms.values())))
    score = t["body"] + 0.5 * t["behind"] + 0.3 * t["walls"] - 2.0 * np.abs(t["inside"] - CANAL_HU) - 0.5 * t["asym"]
    score[~work.body] = -1000.0
    return score


class CanalPath(NamedTuple):
    """The canal track of :func:`track_canal`.

    Attributes
    ----------
    z0 : int
        First slice of the path.
    path : numpy.ndarray
        int, shape ``(n, 2)``: the ``(x, y)`` working index of the canal in slices
        ``z0 .. z0 + n - 1``.
    """

    z0: int
    path: np.ndarray


def track_canal(score: np.ndarray) -> CanalPath:
    """Best canal path through the axial slices (step 2 of the module method).

    A local alignment (Smith and Waterman, J Mol Biol 1981;147:195) over slices: the
    path may start and end at any slice, and collects ``score - CANAL_BASELINE``
    less the displacement costs, so it covers the slices that show a canal and
    stops where the spine ends (the pelvis below the sacrum, the skull above).

    Parameters
    ----------
    score : numpy.ndarray
        Shape ``(nx, ny, nz)`` from :func:`canal_score`.

    Returns
    -------
    CanalPath
        ``(z0, path)``: the first slice and the canal's ``(x, y)`` per slice.
    """
    nx, ny, nz = score.shape
    offsets = [(dx, dy) for dx in range(-MAX_STEP_LR, MAX_STEP_LR + 1) for dy in range(-MAX_STEP_AP, MAX_STEP_AP + 1)]
    cost = np.array([STEP_COST_LR * abs(dx) + STEP_COST_AP * abs(dy) for dx, dy in offsets], np.float32)
    back = np.full((nz, nx, ny), -1, np.int8)  # -1: the path starts here
    acc = np.maximum(score[:, :, 0] - CANAL_BASELINE, 0.0).astype(np.float32)
    best_val, best_at = float(acc.max()), (0, *np.unravel_index(int(np.argmax(acc)), acc.shape))
    px, py = MAX_STEP_LR, MAX_STEP_AP
    # the previous slice's totals, padded with -inf, and one view of it per offset (made once)
    pad = np.full((nx + 2 * px, ny + 2 * py), -np.inf, np.float32)
    views = [pad[px + dx:px + dx + nx, py + dy:py + dy + ny] for dx, dy in offsets]
    carried, cand = np.empty((nx, ny), np.float32), np.empty((nx, ny), np.float32)
    better, arg = np.empty((nx, ny), bool), np.empty((nx, ny), np.int8)
    for k in range(1, nz):
        pad[px:px + nx, py:py + ny] = acc
        # the best predecessor of each voxel: the first of the offsets with the highest value (as argmax)
        np.subtract(views[0], cost[0], out=carried)
        arg.fill(0)
        for o in range(1, len(offsets)):
            np.subtract(views[o], cost[o], out=cand)
            np.greater(cand, carried, out=better)
            np.copyto(arg, o, where=better)
            np.maximum(carried, cand, out=carried)
        back[k] = np.where(carried <= 0.0, -1, arg)
        acc = np.maximum(carried, 0.0) + score[:, :, k] - CANAL_BASELINE
        top = float(acc.max())
        if top > best_val:
            best_val = top
            best_at = (k, *np.unravel_index(int(np.argmax(acc)), acc.shape))
    k, x, y = best_at
    rows = [(x, y)]
    while k > 0 and back[k, x, y] >= 0:
        dx, dy = offsets[back[k, x, y]]
        x, y, k = x + dx, y + dy, k - 1
        rows.append((x, y))
    return CanalPath(k, np.array(rows[::-1], int))


def spine_run(path: np.ndarray) -> slice:
    """The slices where the canal track follows the spine.

    Beyond the spine (below the sacrum, into the pelvis; above it, into the skull base)
    there is no canal to follow and the track drifts sideways at its largest allowed
    step. The spine never leans that far for long: the longest run of slices whose
    left-right drift, averaged over :data:`DRIFT_WINDOW` slices, stays below
    :data:`MAX_DRIFT` voxels per slice (about 40 degrees) is kept.
    """
    dx = np.abs(ndi.uniform_filter1d(np.gradient(path[:, 0].astype(float)), DRIFT_WINDOW, mode="nearest"))
    good = dx < MAX_DRIFT
    best, start = (0, 0), None
    for k, g in enumerate(np.append(good, False)):
        if g and start is None:
            start = k
        elif not g and start is not None:
            if k - start > best[1] - best[0]:
                best = (start, k)
            start = None
    return slice(*best)


def _centre_line(path: np.ndarray, sp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth the per-slice track and resample it by arc length; return ``s_mm``, points and frames.

    ``path`` is ``(n, 3)``: x, y working index and the slice index ``z`` of each row.
    """
    pts = path.astype(float)
    xy = ndi.median_filter(pts[:, :2], size=(9, 1), mode="nearest")
    pts[:, :2] = ndi.gaussian_filter1d(xy, 4.0, axis=0, mode="nearest")
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))] * sp
    s = np.arange(0.0, arc[-1] + 1e-9, STEP_MM)
    centre = np.stack([np.interp(s, arc, pts[:, i]) for i in range(3)], axis=1)
    t = ndi.gaussian_filter1d(np.gradient(centre, axis=0), 5.0 / STEP_MM, axis=0, mode="nearest")
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    u = np.array([1.0, 0.0, 0.0])[None, :] - t[:, :1] * t
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(t, u)
    return s, centre, np.stack([t, u, v], axis=1)


def straighten(hu: np.ndarray, centre_ijk: np.ndarray, frames: np.ndarray, sp: float,
               u_mm: np.ndarray, v_mm: np.ndarray, order: int = 1, cval: float = -1024.0) -> np.ndarray:
    """Sample ``hu`` on the planes perpendicular to a centre line.

    Parameters
    ----------
    hu : numpy.ndarray
        Volume on the working grid, shape ``(nx, ny, nz)``.
    centre_ijk, frames : numpy.ndarray
        Centre points ``(ns, 3)`` (working index) and frames ``(ns, 3, 3)`` (rows t, u, v).
    sp : float
        Working voxel size, mm.
    u_mm, v_mm : numpy.ndarray
        In-plane sample positions, mm.
    order : int
        Interpolation order (1: linear for HU, 0: nearest for labels).
    cval : float
        Value outside the volume.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(len(u_mm), len(v_mm), ns)``.
    """
    U, V = np.meshgrid(u_mm / sp, v_mm / sp, indexing="ij")
    out = np.empty((len(u_mm), len(v_mm), len(centre_ijk)), np.float32)

    def sample(k0: int) -> None:
        c = centre_ijk[k0:k0 + STRAIGHTEN_CHUNK, :, None, None]
        f = frames[k0:k0 + STRAIGHTEN_CHUNK]
        pts = c + f[:, 1, :, None, None] * U[None, None] + f[:, 2, :, None, None] * V[None, None]  # (k, 3, nu, nv)
        coords = np.moveaxis(pts, 1, 0).reshape(3, -1).astype(np.float32)
        vals = ndi.map_coordinates(hu, coords, order=order, cval=cval, mode="constant")
        out[:, :, k0:k0 + STRAIGHTEN_CHUNK] = np.moveaxis(vals.reshape(len(c), len(u_mm), len(v_mm)), 0, 2)

    # chunks of planes are independent and map_coordinates releases the GIL: two threads
    with ThreadPoolExecutor(max_workers=WORK_THREADS) as pool:
        list(pool.map(sample, range(0, len(centre_ijk), STRAIGHTEN_CHUNK)))
    return out


def _extend_at_top(s: np.ndarray, centre: np.ndarray, frames: np.ndarray, sp: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continue the centre line straight past its cranial end, where the canal track meets the scan's top.

    The planes are perpendicular to the canal, and where the column leans forward
    (the kyphosis at the cervicothoracic junction) the body, 15-35 mm in front of
    the canal, reaches the top of the scan a plane or several after the canal: the
    body of the top vertebra, already cut by the edge, would be cut again by the
    last plane, and the vertebra above the first rib pair lost. Adds
    :data:`EDGE_EXTENSION_MM` of line along the end tangent with the end frame;
    :func:`_body_in_scan` keeps the planes whose body centre lies in the scan. The
    caudal end is left as tracked: on an abdominal CT the column ends in the
    sacrum, whose lean :func:`ctbmd.segment.builtin._split_and_name` handles.
    """
    steps = np.arange(1, int(round(EDGE_EXTENSION_MM / STEP_MM)) + 1) * STEP_MM
    return (np.concatenate([s, s[-1] + steps]),
            np.concatenate([centre, centre[-1] + frames[-1, 0] * (steps[:, None] / sp)]),
            np.concatenate([frames, np.repeat(frames[-1:], len(steps), axis=0)]))


def _body_in_scan(centre: np.ndarray, frames: np.ndarray, body_v_mm: np.ndarray, sp: float,
                  shape: tuple[int, int, int]) -> np.ndarray:
    """bool ``(ns,)``: the planes whose body centre (``body_v_mm`` in front of the canal) lies in the scan,
    trimmed to one run from the first to the last such plane."""
    body = centre + frames[:, 2] * (body_v_mm / sp)[:, None]
    inside = np.all((body >= -0.5) & (body <= np.asarray(shape) - 0.5), axis=1)
    keep = np.zeros(len(inside), bool)
    idx = np.nonzero(inside)[0]
    if len(idx):
        keep[idx[0]:idx[-1] + 1] = True
    return keep


def find_column(work: WorkGrid, source: str | None = None) -> Column:
    """Find the spinal column of a CT on the working grid (the module method).

    Parameters
    ----------
    work : WorkGrid
        The CT on the 2 mm working grid.
    source : str, optional
        Input path, for error messages.

    Returns
    -------
    Column

    Raises
    ------
    NoSpineError
        No body outline, or a continuous canal track shorter than :data:`MIN_COLUMN_MM`.
    """
    if not work.body.any():
        raise NoSpineError("no spine in view: no body outline found", source)
    sp = work.spacing_mm
    if work.hu.shape[2] * sp < MIN_COLUMN_MM:
        raise NoSpineError(f"no spine in view: the scan covers less than {MIN_COLUMN_MM:.0f} mm", source)
    z0, path = track_canal(canal_score(work))
    if len(path) * sp < MIN_COLUMN_MM:
        raise NoSpineError("no spine in view: no continuous spinal canal found", source)
    run = spine_run(path)
    if (run.stop - run.start) * sp < MIN_COLUMN_MM:
        raise NoSpineError("no spine in view: no continuous spinal canal found", source)
    z = z0 + np.arange(len(path))[run]
    s, centre, frames = _centre_line(np.column_stack([path[run], z]), sp)
    at_top = bool(z[-1] == work.hu.shape[2] - 1)
    if at_top:
        s, centre, frames = _extend_at_top(s, centre, frames, sp)
    u_mm = np.arange(-U_HALF_MM, U_HALF_MM + STEP_MM / 2, STEP_MM)
    v_mm = np.arange(V_RANGE_MM[0], V_RANGE_MM[1] + STEP_MM / 2, STEP_MM)
    straight = straighten(work.hu, centre, frames, sp, u_mm, v_mm)
    body_v, depth, width = body_track(straight, u_mm, v_mm)
    if at_top:
        keep = _body_in_scan(centre, frames, body_v, sp, work.hu.shape)
        s, centre, frames, straight = s[keep], centre[keep], frames[keep], straight[:, :, keep]
        body_v, depth, width = body_v[keep], depth[keep], width[keep]
    return Column(s_mm=s, centre_ijk=centre, frames=frames, straight=straight, u_mm=u_mm, v_mm=v_mm,
                  body_v_mm=body_v, body_depth_mm=depth, body_width_mm=width, spacing_mm=sp)
