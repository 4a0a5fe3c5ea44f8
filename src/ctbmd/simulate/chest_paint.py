"""Painting the soft tissue of a chest phantom (:func:`paint_chest_soft_tissue`): skin fat, chest-wall
muscle, lungs and the diaphragm (:func:`diaphragm_height`), mediastinum, paraspinal muscle, upper
abdominal organs, heart, vessels, airway and oesophagus, from the layout drawn by
:func:`ctbmd.simulate.thorax.draw_chest_anatomy`.

Coordinates and sources as in :mod:`ctbmd.simulate.thorax`.
"""

from __future__ import annotations

import numpy as np

from ctbmd.simulate import anatomy as an
from ctbmd.simulate.thorax import ChestLayout, stamp_balls, transverse_reach


def diaphragm_height(d: dict, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """z (mm) of the diaphragm above each (X, Y) (anatomy mm; arrays of one shape).

    Each hemidiaphragm is a dome (``z_right``/``z_left`` at its top, ``half_width * 0.45`` off the
    midline, anterior of the cavity centre) falling to ``z_recess`` at the posterior wall (the
    posterior costophrenic recess) as the 0.7 power of the distance (so that, as on real CT, the lung
    bases at T11 reach forward to the front of the vertebral bodies), to ``z_lateral`` at the lateral
    wall (quadratically), ~28 mm below the top at the anterior wall and ~12 mm at the midline
    (central tendon).
    """
    out = np.empty(np.broadcast_shapes(X.shape, Y.shape), np.float32)
    dx_all = X - d["x_c"]
    for side, z_top in ((-1, d["z_right"]), (1, d["z_left"])):
        xs = side * d["x_dome"]
        dx = dx_all - xs
        lateral = np.sign(dx) == side
        kx = np.where(lateral, (z_top - d["z_lateral"]) / max(d["half_width"] - d["x_dome"], 1.0) ** 2,
                      12.0 / max(d["x_dome"], 1.0) ** 2)
        dy = Y - d["y_dome"]
        f = np.clip(dy, 0, None) / max(d["y_post"] - d["y_dome"], 1.0)
        post = (z_top - d["z_recess"]) * np.where(f < 0.2, (f / 0.2) ** 2 * 0.2 ** 0.7, f ** 0.7)
        ant = 28.0 * (np.clip(-dy, 0, None) / max(d["y_dome"] - d["y_ant"], 1.0)) ** 2
        z = z_top - kx * dx * dx - post - ant
        z = np.maximum(z, d["z_recess"] - 15.0)
        mask = (dx_all >= 0) if side == 1 else (dx_all < 0)
        out = np.where(mask, z, out)
    return out


def _plane_coords(canvas: an.Canvas):
    lo = canvas.origin
    hi = canvas.origin + canvas.spacing * (np.array(canvas.mat.shape) - 1)
    pad = 60.0
    sl, X, Y, Z = canvas.box_coords(np.array([lo[0] - pad, lo[1] - pad, lo[2]]),
                                    np.array([hi[0] + pad, hi[1] + pad, hi[2]]))
    return X[:, :, 0], Y[:, :, 0], Z[0, 0, :]


def paint_chest_soft_tissue(canvas: an.Canvas, anat: an.Anatomy, rng: np.random.Generator) -> None:
    """Paint the chest torso: skin fat, chest-wall muscle, lungs, mediastinal fat, paraspinal muscle,
    upper abdominal organs under the diaphragm, then heart, vessels, airway and oesophagus.

    Parameters
    ----------
    canvas : Canvas
        ``(nx, ny, nz)`` material volume, painted in place (fills every voxel).
    anat : Anatomy
        From :func:`~ctbmd.simulate.thorax.draw_chest_anatomy` (``anat.chest`` set).
    rng : numpy.random.Generator
        Draws whether the stomach holds gas.
    """
    lay: ChestLayout = anat.chest
    X2, Y2, Zc = _plane_coords(canvas)
    z_dia = diaphragm_height(lay.diaphragm, X2, Y2)
    z_v = np.array([v.centre[2] for v in anat.vertebrae])
    for k, zc in enumerate(Zc):
        vb = anat.vertebrae[int(np.argmin(np.abs(z_v - zc)))]
        canvas.mat[:, :, k] = _chest_slice(anat, vb, float(zc), X2, Y2, zc > z_dia)
    d = lay.diaphragm
    stomach = np.array([d["x_c"] + 1.1 * d["x_dome"], d["y_dome"] - 25.0, d["z_left"] - 28.0])
    _paint_abdomen(canvas, anat, rng, stomach)
    _paint_shoulder_soft_tissue(canvas, lay)
    _paint_heart(canvas, lay.heart)
    _paint_tubes(canvas, lay.tubes)


def _chest_slice(anat: an.Anatomy, vb: an.Vertebra, zc: float, X2: np.ndarray, Y2: np.ndarray,
                 above: np.ndarray) -> np.ndarray:
    """Materials of one axial slice at ``zc`` (mm) over the plane ``X2, Y2`` (anatomy mm, (nx, ny));
    ``above``: the diaphragm lies below. ``vb`` is the nearest vertebra."""
    lay: ChestLayout = anat.chest
    s = anat.extras["scale"]
    a, t = anat.width / 2.0, anat.subcut_fat
    xc, yb = float(lay.at("x_spine", zc)), float(lay.at("y_spine", zc))
    yf = float(lay.at("y_front", zc))
    ycen, bh = (lay.y_back + yf) / 2.0, (lay.y_back - yf) / 2.0
    r_out = np.abs(X2 / a) ** 2.4 + np.abs((Y2 - ycen) / bh) ** 2.2
    r_in = np.abs(X2 / (a - t)) ** 2.4 + np.abs((Y2 - ycen) / max(bh - t, 10.0)) ** 2.2
    plane = np.full(X2.shape, an.AIR, np.uint8)
    plane[r_out <= 1] = an.SUBCUT_FAT
    plane[r_in <= 1] = an.MUSCLE_WALL
    _, y0, A, B = (float(v) for v in lay.cavity(zc))
    if A > 1.0 and B > 1.0:
        cav = ((X2 - xc) / A) ** 2 + ((Y2 - y0) / B) ** 2 <= 1.0
        # the lungs touch the side of the body and reach back, in the paravertebral gutter, to the
        # line from the body's posterolateral corner past the rib neck to the rib angle
        dxa = np.abs(X2 - xc)
        x0, y0l = vb.half_width + 3.0, yb + 0.2 * vb.half_depth
        x1 = transverse_reach(vb.level) * s + 2.0
        y1l = float(lay.at("y_post", zc)) - 4.0
        y_line = y0l + (y1l - y0l) * np.clip((dxa - x0) / (x1 - x0), 0.0, 1.0)
        gutter = (dxa < x1) & (Y2 > y_line)
        body = (((X2 - xc) / x0) ** 2 + ((Y2 - yb) / (vb.half_depth + 3.0)) ** 2 <= 1.0) | ((dxa < x0) & (Y2 > yb))
        plane[cav & ~above] = an.ORGAN
        plane[cav & above & ~gutter & ~body] = an.LUNG
        # mediastinal fat between the lungs: superior mediastinum above the heart, narrowing toward
        # the front (anterior junction line); posterior mediastinum (oesophagus, aorta) in front of the
        # spine below it, left of the midline so that the right lung's azygo-oesophageal recess reaches it
        upper = zc > lay.heart["centre"][2] + 0.8 * lay.heart["semi"][2]
        x_mid, m_half = (xc + 4.0 * s, 20.0 * s) if upper else (xc + 17.0 * s, 10.0 * s)
        y_lim = -np.inf if upper else yb - vb.half_depth - 45.0
        taper = 0.25 + 0.75 * np.clip((Y2 - y0 + B) / max(yb - y0 + B, 1.0), 0.0, 1.0)
        med = cav & above & (np.abs(X2 - x_mid) < m_half * taper) & (Y2 < yb - 0.3 * vb.half_depth) & (Y2 > y_lim)
        plane[med] = an.VISCERAL_FAT
    back = (((X2 - xc) / 55.0) ** 2 + ((Y2 - (yb + vb.half_depth + 40.0)) / 34.0) ** 2 <= 1.0) & (r_in <= 1)
    plane[back & (plane != an.LUNG)] = an.PARASPINAL
    if vb.level.startswith("L"):  # crura / psoas origins beside L1-L2
        for side in (-1, 1):
            cx = xc + side * (vb.half_width + 9.0)
            plane[((X2 - cx) / 8.0) ** 2 + ((Y2 - yb) / 7.0) ** 2 <= 1] = an.PSOAS
    return plane


def _ellipsoid(canvas: an.Canvas, centre, axes, semi):
    """``(slices, mask)`` of an ellipsoid (anatomy mm; rows of ``axes`` are its unit axes), or None."""
    reach = np.abs(np.asarray(axes).T) @ np.asarray(semi, float)
    box = canvas.box_coords(np.asarray(centre) - reach, np.asarray(centre) + reach)
    if box is None:
        return None
    sl, X, Y, Z = box
    q = 0.0
    for e, s in zip(axes, semi):
        q = q + (((X - centre[0]) * e[0] + (Y - centre[1]) * e[1] + (Z - centre[2]) * e[2]) / s) ** 2
    return sl, q <= 1.0


def _paint_where(canvas: an.Canvas, region, material: int, allowed: tuple[int, ...] | None = None) -> None:
    if region is None:
        return
    sl, mask = region
    if allowed is not None:
        mask = mask & np.isin(canvas.mat[sl], allowed)
    canvas.paint(sl, mask, material)


def _paint_abdomen(canvas, anat, rng, stomach):
    """Stomach gas under the left dome and the kidneys' upper poles in perirenal fat (L1-L2)."""
    lay: ChestLayout = anat.chest
    eye = np.eye(3)
    s = anat.extras["scale"]
    if rng.uniform() < 0.8:
        _paint_where(canvas, _ellipsoid(canvas, stomach, eye, np.array([24.0, 18.0, 13.0]) * s), an.GAS, (an.ORGAN,))
    z_k = lay.z_level.get("L1", lay.zz[0]) - 10.0
    for side in (-1, 1):
        c = np.array([float(lay.at("x_spine", z_k)) + side * 62.0 * s, float(lay.at("y_spine", z_k)) + 5.0 * s,
                      z_k - 15.0 * s])
        _paint_where(canvas, _ellipsoid(canvas, c, eye, np.array([38.0, 34.0, 62.0]) * s), an.VISCERAL_FAT, (an.ORGAN,))
        _paint_where(canvas, _ellipsoid(canvas, c, eye, np.array([28.0, 24.0, 52.0]) * s), an.ORGAN)


def _paint_shoulder_soft_tissue(canvas, lay: ChestLayout):
    """Deltoid and skin fat around each humeral head: the shoulders fill the upper lateral corners."""
    for side, sh in lay.shoulder.items():
        r = sh["head_radius"]
        c = sh["head"] + np.array([side * 6.0, 0.0, -6.0])
        _paint_where(canvas, _ellipsoid(canvas, c, np.eye(3), [r + 24.0, r + 28.0, r + 40.0]), an.SUBCUT_FAT, (an.AIR,))
        _paint_where(canvas, _ellipsoid(canvas, c, np.eye(3), [r + 16.0, r + 20.0, r + 32.0]), an.MUSCLE_WALL,
                     (an.AIR, an.SUBCUT_FAT))


def _paint_heart(canvas, heart: dict):
    """Pericardial fat, myocardium, and two blood pools split by the septum: left heart (arterial
    blood, ``AORTA``) posterior-left, right heart (venous blood, ``IVC``) anterior-right."""
    c, ax, semi, wall = heart["centre"], heart["axes"], heart["semi"], heart["wall_mm"]
    box = canvas.box_coords(c - np.abs(ax.T) @ (semi + 6.0), c + np.abs(ax.T) @ (semi + 6.0))
    if box is None:
        return
    sl, X, Y, Z = box
    proj = [(X - c[0]) * e[0] + (Y - c[1]) * e[1] + (Z - c[2]) * e[2] for e in ax]

    def inside(extra):
        return sum((p / (s + extra)) ** 2 for p, s in zip(proj, semi)) <= 1.0

    view = canvas.mat[sl]
    canvas.paint(sl, inside(6.0) & np.isin(view, (an.LUNG, an.ORGAN)), an.VISCERAL_FAT)
    canvas.paint(sl, inside(0.0) & np.isin(view, (an.LUNG, an.VISCERAL_FAT, an.ORGAN, an.PARASPINAL)),
                 an.MYOCARDIUM)
    n = np.array([-0.6, -0.8, 0.0])  # septum normal, toward the right ventricle
    side = (X - c[0]) * n[0] + (Y - c[1]) * n[1] + (Z - c[2]) * n[2]
    pool = inside(-wall) & (view == an.MYOCARDIUM)
    canvas.paint(sl, pool & (side > 4.0), an.IVC)
    canvas.paint(sl, pool & (side < -4.0), an.AORTA)


def _paint_tubes(canvas, tubes: dict):
    lungish = (an.LUNG, an.ORGAN, an.PARASPINAL, an.MUSCLE_WALL)
    for name in ("aorta", "brachiocephalic_trunk", "left_carotid", "left_subclavian", "svc", "oesophagus"):
        stamp_balls(canvas, tubes[name], an.VISCERAL_FAT, 4.0, (an.LUNG,))
    for name in ("trachea", "right_bronchus", "left_bronchus"):
        stamp_balls(canvas, tubes[name], an.ORGAN, 2.5, lungish + (an.VISCERAL_FAT,))
    stamp_balls(canvas, tubes["oesophagus"], an.ORGAN, 0.0, lungish + (an.VISCERAL_FAT,))
    for name in ("aorta", "brachiocephalic_trunk", "left_carotid", "left_subclavian"):
        stamp_balls(canvas, tubes[name], an.AORTA)
    for name in ("svc", "ivc"):
        stamp_balls(canvas, tubes[name], an.IVC, 0.0, lungish + (an.VISCERAL_FAT, an.MYOCARDIUM, an.IVC))
    for name in ("trachea", "right_bronchus", "left_bronchus"):
        stamp_balls(canvas, tubes[name], an.AIRWAY)
