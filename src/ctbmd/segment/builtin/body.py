"""Follow the vertebral body along the straightened column (step 6 of :mod:`.column`).

In each plane of the straightened column (``u`` left-right, ``v`` antero-posterior,
mm, posterior positive; see :mod:`.column`) the body's posterior wall, anterior
cortex and width are read on five sagittal lines (``u`` = -8..8 mm); the
shallowest line is kept, so an enhanced aorta touching the body on one side does
not carry the edge (:func:`body_track`; vertebral proportions after Panjabi et
al., Spine 1991;16:888 and 1992;17:299).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

#: Smallest body depth as a fraction of its width (see :func:`body_track`).
MIN_DEPTH_PER_WIDTH = 0.65
#: Bone threshold (HU) for the posterior wall of the body.
WALL_HU = 150.0


class BodyTrack(NamedTuple):
    """The vertebral body along the column (:func:`body_track`): float arrays of shape ``(ns,)``, mm.

    Attributes
    ----------
    v_mm : numpy.ndarray
        ``v`` of the body's centre (anterior negative).
    depth_mm, width_mm : numpy.ndarray
        Antero-posterior depth and left-right width of the body.
    """

    v_mm: np.ndarray
    depth_mm: np.ndarray
    width_mm: np.ndarray


def body_track(straight: np.ndarray, u_mm: np.ndarray, v_mm: np.ndarray) -> BodyTrack:
    """Centre ``v``, depth and width (mm) of the vertebral body along the column (step 6 of the module method).

    On five sagittal lines (``u`` = -8..8 mm) of each plane: the posterior wall is
    the first bone (> :data:`WALL_HU`) 1-25 mm in front of the canal centre; the
    anterior cortex is the most anterior bone 10-60 mm in front of the wall that
    has soft tissue or fat (< 100 HU on average) 2-10 mm further forward. Only the
    cortex is needed, so hollow-looking osteoporotic bodies are measured like
    dense ones. The shallowest line is kept: a vessel that touches the body can
    only deepen a line. The width is the left-right extent of bone at mid-depth
    around the centre line. Disc planes are filled from their neighbours, and
    everything is median-filtered over 25 mm of ``s``. A body is at least 0.65
    times as deep as wide (0.7-0.8, Panjabi 1991/1992): a shallower edge is
    marrow as faint as soft tissue behind a thin cortex, and the depth is raised.

    Returns
    -------
    BodyTrack
        ``(v_mm, depth_mm, width_mm)``, float, shape ``(ns,)`` each. Width is clipped to 15-70 mm (an upper bound
        where ribs or transverse processes touch the body).
    """
    ns = straight.shape[2]
    step = float(v_mm[1] - v_mm[0])
    iv0 = int(np.argmin(np.abs(v_mm)))
    lines = [int(np.argmin(np.abs(u_mm - x))) for x in (-8.0, -4.0, 0.0, 4.0, 8.0)]
    n = lambda mm: int(round(mm / step))  # noqa: E731
    wall = np.full(ns, np.nan)
    edge = np.full(ns, np.nan)
    width = np.full(ns, np.nan)
    for k in range(ns):
        plane = straight[:, :, k]
        walls, fronts = [], []
        for i in lines:
            p = plane[i, :iv0 + 1][::-1]  # v = 0, -1, -2 ... mm
            hits = np.nonzero(p[n(1):n(25)] > WALL_HU)[0]
            if len(hits) == 0:
                continue
            w = n(1) + int(hits[0])
            ahead = ndi.uniform_filter1d(p, n(8) + 1, mode="nearest")  # mean of the next 2-10 mm
            cand = np.arange(w + n(10), min(len(p) - n(10), w + n(60)))
            ok = cand[(p[cand] > WALL_HU) & (ahead[np.minimum(cand + n(6), len(p) - 1)] < 100.0)]
            if len(ok) == 0:
                continue
            walls.append(w * step)
            fronts.append(ok[0] * step)
        if len(fronts) >= 3:
            wall[k] = float(np.median(walls))
            edge[k] = float(min(fronts))
            row = straight[:, iv0 - int(round((wall[k] + edge[k]) / 2.0 / step)), k] > WALL_HU
            lab, _ = ndi.label(ndi.binary_closing(row, iterations=3))
            c = lab[len(u_mm) // 2]
            if c > 0:
                across = np.nonzero(lab == c)[0]
                width[k] = (across[-1] - across[0] + 1) * float(u_mm[1] - u_mm[0])
    wall = _fill_nan(wall, 8.0)
    edge = _fill_nan(edge, wall + 25.0)
    width = _fill_nan(width, 40.0)
    wall = ndi.median_filter(wall, 25, mode="nearest")
    width = np.clip(ndi.median_filter(width, 25, mode="nearest"), 15.0, 70.0)
    # A body is at least about 0.65 times as deep as it is wide (0.7-0.8 from C7 to L5,
    # Panjabi 1991/1992); a shallower edge is marrow as dense as soft tissue, not the cortex.
    edge = np.maximum(ndi.median_filter(edge, 25, mode="nearest"), wall + MIN_DEPTH_PER_WIDTH * width)
    edge = np.clip(edge, wall + 10.0, wall + 55.0)
    return BodyTrack(-(wall + edge) / 2.0, edge - wall, width)


def _fill_nan(values: np.ndarray, default) -> np.ndarray:
    """Interpolate NaNs from their neighbours; all-NaN input gives ``default``."""
    ok = np.isfinite(values)
    if not ok.any():
        return np.broadcast_to(np.asarray(default, float), values.shape).copy()
    idx = np.arange(len(values))
    return np.interp(idx, idx[ok], values[ok])
