"""The 2 mm isotropic working grid on which the builtin labeller runs.

Every step of :mod:`ctbmd.segment.builtin` works on one resampled copy of the
CT: 2 mm isotropic voxels in the canonical LPS frame (array ``(nx, ny, nz)``,
axes toward patient Left, Posterior, Superior). Thin-slice CTs are Gaussian
smoothed to the working resolution before resampling (anti-aliasing), thick
slices are interpolated linearly. Labels made on this grid go back to the CT
grid by nearest neighbour (:func:`labels_to_ct_grid`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ctbmd.io import AIR_HU
from ctbmd.masks import cross_opening, label_boxes, largest_component
from ctbmd.types import CTVolume, Grid

#: Voxel size (mm) of the working grid.
WORK_SPACING_MM = 2.0
#: Threshold (HU) of the body outline: everything denser than lung and air.
BODY_HU = -400.0


def _work_threads() -> int:
    """Threads for the labeller's array work: ``CTBMD_THREADS`` when set (a positive integer), else two.

    ``ctbmd batch`` sets ``CTBMD_THREADS`` in its worker processes to the cores
    each worker has (cores // workers), so parallel scans do not contend.
    """
    text = os.environ.get("CTBMD_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return min(2, os.cpu_count() or 1)


#: Threads for the labeller's independent array work (scipy.ndimage filters and interpolation,
#: sparse products and KD-tree queries release the GIL): two, the cores of the machine ctbmd is
#: timed on (issue 13), or ``CTBMD_THREADS`` (:func:`_work_threads`).
WORK_THREADS = _work_threads()


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


def resampling_matrix(n_in: int, spacing_mm: float, n_out: int, first: float,
                      step: float = WORK_SPACING_MM) -> sparse.csr_matrix:
    """Weights that smooth one axis for anti-aliasing and sample it on a coarser grid.

    Row ``i`` gives the value at input index ``first + i * step / spacing_mm``
    as a weighted sum of the input samples: a Gaussian of
    ``sigma = max(0, (step - spacing_mm) / 2)`` mm, sampled on the input grid and
    cut at 4 sigma (as :func:`scipy.ndimage.gaussian_filter`), its weights
    renormalised near the ends, then linear interpolation between the two
    nearest smoothed samples (positions beyond the end samples take the end
    sample; see :func:`to_working_grid` for positions outside the volume). With
    ``sigma = 0`` it is plain linear interpolation.

    Parameters
    ----------
    n_in : int
        Number of input samples along the axis.
    spacing_mm : float
        Input sample spacing (mm).
    n_out : int
        Number of output samples.
    first : float
        Input index (continuous) of the first output sample.
    step : float
        Output sample spacing (mm).

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, shape ``(n_out, n_in)``, a few non-zeros per row (built as a
        band: no dense ``n_in x n_in`` matrix); every row sums to 1.
    """
    sigma = max(0.0, (step - spacing_mm) / 2.0)
    half = int(np.floor(4.0 * sigma / spacing_mm)) if n_in > 1 else 0
    if half > 0:
        offsets = np.arange(-half, half + 1)
        kernel = np.exp(-0.5 * (offsets * spacing_mm / sigma) ** 2)
        smooth = sparse.diags([np.full(n_in - abs(k), w) for k, w in zip(offsets, kernel) if abs(k) < n_in],
                              [k for k in offsets if abs(k) < n_in], shape=(n_in, n_in), format="csr")
        smooth = sparse.diags(1.0 / np.asarray(smooth.sum(axis=1)).ravel()) @ smooth
    else:
        smooth = sparse.identity(n_in, format="csr")
    pos = np.clip(first + np.arange(n_out) * (step / spacing_mm), 0.0, n_in - 1.0)
    lo = np.minimum(np.floor(pos).astype(int), max(n_in - 2, 0))
    frac = pos - lo
    rows = np.arange(n_out)
    interp = sparse.csr_matrix((np.r_[1.0 - frac, frac], (np.r_[rows, rows], np.r_[lo, np.minimum(lo + 1, n_in - 1)])),
                               shape=(n_out, n_in))
    return (interp @ smooth).astype(np.float32).tocsr()


def _apply_along(weights: sparse.csr_matrix, volume: np.ndarray, axis: int) -> np.ndarray:
    """``weights`` (``(n_out, n_in)``) applied along ``axis`` of ``volume``: that axis becomes ``n_out`` long.

    The volume is cut in two along its last other axis and the halves are done in
    two threads (the copy and the sparse product release the GIL); every output
    value is the same sum as in one piece.
    """
    moved = np.moveaxis(volume, axis, 0)
    out = np.empty((weights.shape[0],) + moved.shape[1:], np.result_type(weights.dtype, volume.dtype))
    cuts = np.linspace(0, moved.shape[-1], 3).astype(int)

    def part(i: int) -> None:
        piece = moved[..., cuts[i]:cuts[i + 1]]
        if piece.size == 0:
            return
        flat = np.ascontiguousarray(piece).reshape(piece.shape[0], -1)
        out[..., cuts[i]:cuts[i + 1]] = (weights @ flat).reshape((weights.shape[0],) + piece.shape[1:])

    with ThreadPoolExecutor(max_workers=WORK_THREADS) as pool:
        list(pool.map(part, range(2)))
    return np.moveaxis(out, 0, axis)


def to_working_grid(ct: CTVolume) -> WorkGrid:
    """Resample ``ct`` to the 2 mm working grid and find the body outline.

    Along each axis the CT is Gaussian smoothed (sigma ``(2 - spacing) / 2`` mm,
    none for spacings of 2 mm and more) and linearly interpolated
    (:func:`resampling_matrix`), one axis after another. The first working voxel
    keeps the outer corner of the first CT voxel, so the two grids cover the
    same box. Raises nothing; an empty body outline is reported by the caller.
    """
    size = [max(1, int(round(n * s / WORK_SPACING_MM))) for n, s in zip(ct.grid.size, ct.grid.spacing_mm)]
    first = [(WORK_SPACING_MM / s - 1.0) / 2.0 for s in ct.grid.spacing_mm]
    origin = ct.index_to_lps(np.array(first))
    grid = Grid(size=tuple(size), spacing_mm=(WORK_SPACING_MM,) * 3,
                origin_lps_mm=tuple(float(v) for v in origin), direction=ct.grid.direction)
    hu = ct.hu
    # the axis that shrinks most first: every later product works on less data
    for axis in np.argsort([n_out / n for n_out, n in zip(size, hu.shape)]):
        weights = resampling_matrix(hu.shape[axis], ct.grid.spacing_mm[axis], size[axis], first[axis])
        hu = _apply_along(weights, hu, int(axis))
    hu = np.asfortranarray(hu, dtype=np.float32)  # x fastest, as the CT array itself
    for axis in range(3):
        # a working voxel whose centre lies half a CT voxel or more outside the CT is air
        # (SimpleITK's rule for resampling, which this replaces)
        pos = first[axis] + np.arange(size[axis]) * (WORK_SPACING_MM / ct.grid.spacing_mm[axis])
        outside = (pos < -0.5 - 1e-6) | (pos >= ct.grid.size[axis] - 0.5 - 1e-6)  # an exact half: outside
        if outside.any():
            hu[(slice(None),) * axis + (outside,)] = AIR_HU
    body = largest_component(cross_opening(hu > BODY_HU, iterations=2))
    return WorkGrid(hu=hu, grid=grid, body=body)


def _ct_lookup(work_grid: Grid, ct: CTVolume) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per CT axis: the nearest working index of each CT voxel, and whether it lies on the working grid.

    The two grids share their axes (:func:`to_working_grid`), so nearest neighbour
    is a lookup per axis: each CT voxel takes the working voxel whose centre is
    nearest along each axis (ties to the higher index). Returns ``(index, inside)``,
    three int and three bool arrays of the CT's axis lengths; ``index`` is clipped
    to the working grid.
    """
    direction = np.array(ct.grid.direction).reshape(3, 3)
    offset_mm = direction.T @ (np.array(ct.grid.origin_lps_mm) - np.array(work_grid.origin_lps_mm))
    index, inside = [], []
    for axis in range(3):
        pos = (offset_mm[axis] + np.arange(ct.grid.size[axis]) * ct.grid.spacing_mm[axis]) / work_grid.spacing_mm[axis]
        k = np.floor(pos + 0.5).astype(np.intp)
        inside.append((k >= 0) & (k < work_grid.size[axis]))
        index.append(np.clip(k, 0, work_grid.size[axis] - 1))
    return index, inside


def labels_to_ct_grid(labels: np.ndarray, work_grid: Grid, ct: CTVolume) -> np.ndarray:
    """Resample a label map from the working grid onto ``ct``'s grid (nearest neighbour).

    Each CT voxel takes the working voxel whose centre is nearest along each axis
    (:func:`_ct_lookup`); CT voxels more than half a working voxel outside the
    working grid get 0. Equal to SimpleITK's nearest-neighbour resampling
    (``tests/test_fast_paths.py``).

    Returns a uint8 array of shape ``ct.hu.shape``.
    """
    index, inside = _ct_lookup(work_grid, ct)
    # gathered one axis at a time in (z, y, x) order, smallest result first, and transposed:
    # x fastest in memory, as the CT array itself
    zyx = np.ascontiguousarray(labels.astype(np.uint8, copy=False).transpose(2, 1, 0))
    out = zyx.take(index[0], axis=2).take(index[1], axis=1).take(index[2], axis=0).transpose(2, 1, 0)
    for axis, ok in enumerate(inside):
        if not ok.all():
            out[(slice(None),) * axis + (~ok,)] = 0
    return out


def boxes_on_ct_grid(labels: np.ndarray, work_grid: Grid, ct: CTVolume) -> dict[int, tuple[slice, ...]]:
    """Bounding box on ``ct``'s grid of every value :func:`labels_to_ct_grid` puts there, without making that map.

    The CT-grid map holds exactly the working voxels some CT voxel looks up (a
    thick-slice CT skips some working planes): the boxes are found on that
    sub-grid of ``labels`` (:func:`ctbmd.masks.label_boxes`) and mapped back
    through the per-axis lookup, which never decreases along an axis, so a box
    runs from the first CT voxel that looks up its first working plane to the
    last that looks up its last. A few milliseconds where a pass over a
    full-resolution map takes a few tenths of a second.

    Returns
    -------
    dict
        Label value (> 0) -> tuple of three slices on the CT grid, as
        ``label_boxes(labels_to_ct_grid(labels, work_grid, ct))`` gives.
    """
    index, inside = _ct_lookup(work_grid, ct)
    used = [np.unique(i[ok]) for i, ok in zip(index, inside)]
    boxes = {}
    for value, box in label_boxes(np.ascontiguousarray(labels[np.ix_(*used)])).items():
        ct_box = []
        for axis, b in enumerate(box):
            hits = np.nonzero(inside[axis] & (index[axis] >= used[axis][b.start])
                              & (index[axis] <= used[axis][b.stop - 1]))[0]
            ct_box.append(slice(int(hits[0]), int(hits[-1]) + 1))
        boxes[value] = tuple(ct_box)
    return boxes
