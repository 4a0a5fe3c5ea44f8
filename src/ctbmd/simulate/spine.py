"""Painting the spine and pelvis of a phantom: vertebrae, discs, ribs, sacrum and ilium, pedicle screws.

Coordinates and sizes as in :mod:`ctbmd.simulate.anatomy` (LPS mm, anatomy frame before the
patient's rotation, which the :class:`~ctbmd.simulate.anatomy.Canvas` applies).
"""

from __future__ import annotations

import numpy as np

from ctbmd.simulate.anatomy import (CANAL, CORTICAL_SHELL, DISC, ILIUM, METAL, POSTERIOR_BONE, SACRAL_ALA_REACH_MM,
                                    SACRUM, SACRUM_HEIGHT_MM, TRABECULAR_BASE, UPPER_POSTERIOR, Anatomy, Canvas,
                                    Vertebra, column_frame, fracture_endplates)


def paint_vertebra(canvas: Canvas, vb: Vertebra, material_trab: int, label: int, reach: float,
                   shell_mm: float) -> None:
    """Paint one vertebra: cortical shell, trabecular core, pedicles, arch, spinous and transverse processes.

    A fractured body (``vb.fracture``) is drawn between its :func:`~ctbmd.simulate.anatomy.fracture_endplates`; what the
    fracture took from the intact body is disc (the disc fills an endplate's depression).
    """
    h, a, b, rc = vb.height, vb.half_width, vb.half_depth, vb.canal_radius
    box = canvas.local_box(vb.centre, vb.frame, np.array([reach + 8.0, b + 60.0, h / 2.0 + 20.0]))
    if box is None:
        return
    sl, u, v, w = box
    waist = 1.0 - 0.06 * (1.0 - np.clip(2.0 * w / h, -1, 1) ** 2)
    aw = a * waist
    flat = 0.8 * b
    bottom, top = fracture_endplates(vb, u, v)
    intact = ((u / aw) ** 2 + (v / b) ** 2 <= 1.0) & (np.abs(w) <= h / 2.0) & (v <= flat)
    body = intact & (w >= bottom) & (w <= top)
    t = shell_mm
    core = (((u / (aw - t)) ** 2 + (v / (b - t)) ** 2 <= 1.0) & (w >= bottom + t) & (w <= top - t) & (v <= flat - t))
    vc = flat + rc * 0.95  # canal centre
    # posterior elements
    ped = (np.abs(np.abs(u) - (rc + 3.0)) <= 3.5 + 0.5 * (a > 22)) & (v > 0.5 * b) & (v < vc) \
        & (w > -0.05 * h) & (w < 0.42 * h)
    rr = np.sqrt(u * u + (v - vc) ** 2)
    arch = (rr >= rc) & (rr <= rc + 5.0) & (v >= vc - 2.0) & (w > -0.5 * h) & (w < 0.38 * h)
    thoracic = vb.level.startswith("T")
    slope = 0.55 if thoracic else 0.15
    sp_len = 36.0 if thoracic else 30.0
    tp_back = 0.9 if thoracic else 0.0
    if vb.level in UPPER_POSTERIOR:
        slope, sp_len, tp_back = UPPER_POSTERIOR[vb.level]
    dv = v - (vc + rc)
    spinous = (np.abs(u) <= 3.5) & (dv >= 0) & (dv <= sp_len) & (np.abs(w + 0.05 * h + slope * dv) <= 0.2 * h + 2)
    tp = ((np.abs(u) >= rc + 3.0) & (np.abs(u) <= reach) & (np.abs(w - 0.2 * h) <= 4.5)
          & (np.abs(v - (vc - 3.0) - tp_back * (np.abs(u) - rc) * 0.35) <= 5.0))
    canal = (u * u + (v - vc) ** 2 <= rc * rc) & (w > -0.5 * h - 6.0) & (w < 0.5 * h + 6.0)
    post = (ped | arch | spinous | tp) & ~intact
    canvas.paint(sl, post, POSTERIOR_BONE, label)
    if vb.fracture is not None:
        canvas.paint(sl, intact & ~body, DISC, 0)
    canvas.paint(sl, body, CORTICAL_SHELL, label)
    canvas.paint(sl, core, material_trab, label)
    canvas.paint(sl, canal & ~post, CANAL, 0)


def paint_disc(canvas: Canvas, upper: Vertebra, lower_centre_top: float, anat: Anatomy) -> None:
    """Paint the intervertebral disc (and canal) between ``upper``'s bottom and the next body's top."""
    z_top = upper.centre[2] - upper.height / 2.0
    zc = (z_top + lower_centre_top) / 2.0
    half = (z_top - lower_centre_top) / 2.0 + 0.5
    centre, frame = column_frame(anat.column, zc)
    a, b = upper.half_width * 1.02, upper.half_depth * 1.02
    box = canvas.local_box(centre, frame, np.array([a + 5, b + 40, half + 5]))
    if box is None:
        return
    sl, u, v, w = box
    disc = ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & (np.abs(w) <= half) & (v <= 0.8 * b)
    view = canvas.mat[sl]
    free = (view != CORTICAL_SHELL) & (view < TRABECULAR_BASE) & (view != POSTERIOR_BONE)
    canvas.paint(sl, disc & free, DISC, 0)
    vc = 0.8 * upper.half_depth + upper.canal_radius * 0.95
    canal = (u * u + (v - vc) ** 2 <= upper.canal_radius ** 2) & (np.abs(w) <= half + 1)
    canvas.paint(sl, canal & (view != POSTERIOR_BONE), CANAL, 0)


def paint_disc_between(canvas: Canvas, upper: Vertebra, lower: Vertebra, material: int = DISC,
                       radius_fraction: float = 1.0) -> tuple[np.ndarray, float]:
    """Paint the disc between ``upper``'s inferior and ``lower``'s superior endplate, along the column.

    Unlike :func:`paint_disc` the gap is measured between the endplate centres in 3-D, so that it
    also holds on a strongly inclined column (the upper thoracic spine of a chest CT). The disc
    only fills voxels that are not vertebral bone; the canal runs through it.

    Parameters
    ----------
    canvas : Canvas
        Label volume painted in place.
    upper, lower : Vertebra
        The vertebrae above and below the disc.
    material : int
        Material id of the disc (``DISC``; a fused remnant may use another).
    radius_fraction : float
        Fraction of the endplate ellipse the disc covers (1 = the whole endplate).

    Returns
    -------
    centre : numpy.ndarray
        (3,) disc centre, anatomy mm.
    height : float
        Gap between the endplates, mm.
    """
    p_top = upper.centre - upper.frame[2] * upper.height / 2.0
    p_bot = lower.centre + lower.frame[2] * lower.height / 2.0
    centre = (p_top + p_bot) / 2.0
    gap = float(np.linalg.norm(p_top - p_bot))
    w = upper.frame[2] + lower.frame[2]
    w /= np.linalg.norm(w)
    u = np.array([1.0, 0.0, 0.0]) - w[0] * w
    u /= np.linalg.norm(u)
    frame = np.vstack([u, np.cross(w, u), w])
    half = gap / 2.0 + 0.5
    a = (upper.half_width + lower.half_width) / 2.0 * 1.02
    b = (upper.half_depth + lower.half_depth) / 2.0 * 1.02
    box = canvas.local_box(centre, frame, np.array([a + 5, b + 40, half + 5]))
    if box is None:
        return centre, gap
    sl, u_, v_, w_ = box
    f = radius_fraction
    disc = ((u_ / (a * f)) ** 2 + (v_ / (b * f)) ** 2 <= 1.0) & (np.abs(w_) <= half) & (v_ <= 0.8 * b)
    view = canvas.mat[sl]
    free = (view != CORTICAL_SHELL) & (view < TRABECULAR_BASE) & (view != POSTERIOR_BONE)
    canvas.paint(sl, disc & free, material, 0)
    rc = upper.canal_radius
    vc = 0.8 * b + rc * 0.95
    canal = (u_ * u_ + (v_ - vc) ** 2 <= rc ** 2) & (np.abs(w_) <= half + 1)
    canvas.paint(sl, canal & (view != POSTERIOR_BONE), CANAL, 0)
    return centre, gap


def rib_path(vb: Vertebra, side: int, reach: float, length: float, anat: Anatomy) -> np.ndarray:
    """Centre line of a rib (anatomy mm, (n, 3)), from the costovertebral joint around the torso wall."""
    h, a, b = vb.height, vb.half_width, vb.half_depth
    f = vb.frame
    joint = vb.centre + f[0] * side * (a + 2.0) + f[1] * (0.35 * b) + f[2] * (0.3 * h)
    vc = 0.8 * b + vb.canal_radius
    tip = vb.centre + f[0] * side * (reach + 6.0) + f[1] * (vc + 2.0) + f[2] * (0.15 * h)
    seg1 = np.linspace(joint, tip, 30)
    ra = anat.width / 2.0 - anat.subcut_fat - 16.0
    rb = anat.depth / 2.0 - anat.subcut_fat - 16.0
    phi0 = np.arctan2(abs(tip[0]) / ra, tip[1] / rb)
    used = float(np.linalg.norm(tip - joint))
    pts = [seg1]
    phi, z, prev = phi0, tip[2], np.array([tip[0], tip[1]])
    path = []
    while used < length and phi < np.pi * 0.95:
        phi += 0.01
        p = np.array([side * ra * np.sin(phi), rb * np.cos(phi)])
        step = float(np.linalg.norm(p - prev))
        used += step
        z -= 0.3 * step
        prev = p
        path.append([p[0], p[1], z])
    if path:
        arc = np.array(path)
        # blend from the transverse-process tip onto the wall ellipse over the first 25 points
        k = min(len(arc), 25)
        wgt = np.linspace(0, 1, k)[:, None]
        arc[:k, :2] = (1 - wgt) * tip[None, :2] + wgt * arc[:k, :2]
        pts.append(arc)
    pts = np.vstack(pts)
    # resample to ~1 mm steps
    d = np.r_[0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    s = np.arange(0, d[-1], 1.0)
    return np.stack([np.interp(s, d, pts[:, i]) for i in range(3)], axis=1)


def paint_sacrum_and_pelvis(canvas: Canvas, anat: Anatomy, scale: float) -> None:
    """Paint the sacrum (S1 body with alae, tapering S2-S5) and the two iliac wings."""
    top = anat.sacrum_top
    l5 = anat.vertebrae[-1]
    centre, frame = column_frame(anat.column, top - 14.0)
    a, b = l5.half_width, l5.half_depth
    H = SACRUM_HEIGHT_MM * scale
    reach = SACRAL_ALA_REACH_MM * scale
    box = canvas.local_box(centre, frame, np.array([reach + 5, b + 50, H + 10]))
    if box is None:
        return
    sl, u, v, w = box
    taper = np.clip(1.0 - (14.0 - w) / H * 0.55, 0.35, 1.0)  # w runs from +14 (top) to 14 - H
    inbody = ((u / (a * taper)) ** 2 + (v / b) ** 2 <= 1.0) & (w <= 14.0) & (w >= 14.0 - H)
    ala = (np.abs(u) <= reach * np.clip(1.0 - (10.0 - w) / 40.0, 0.0, 1.0)) & (v >= -0.4 * b) \
        & (v <= b + 18.0) & (w <= 10.0) & (w >= -30.0)
    sac = inbody | ala
    canvas.paint(sl, sac, SACRUM, 26)
    # iliac wings: oblique plates lateral of the alae, up to about the L4/L5 disc
    for side in (-1, 1):
        paint_iliac_wing(canvas, centre + frame[0] * side * (reach + 10.0) + frame[1] * (b + 8.0), side,
                         l5.centre[2])


def paint_iliac_wing(canvas: Canvas, p0: np.ndarray, side: int, crest_z_mm: float, start_mm: float = 0.0,
                     spare: tuple[int, ...] = (SACRUM,)) -> None:
    """Paint one iliac wing: a plate 12 mm thick, turned 40 degrees from the coronal plane.

    Parameters
    ----------
    canvas : Canvas
    p0 : numpy.ndarray
        Shape ``(3,)``, LPS mm: the wing's medial edge at the height of the sacrum.
    side : int
        -1 (patient right) or +1 (left).
    crest_z_mm : float
        LPS z (mm) of the iliac crest at the medial edge; it falls 0.25 mm per mm laterally
        (the crest reaches about the L4/L5 disc). The plate runs 95 mm out from
        ``start_mm`` and 45 mm down from ``p0``.
    spare : tuple of int
        Materials the wing does not paint over.
    """
    e1 = np.array([side * np.sin(np.deg2rad(40)), -np.cos(np.deg2rad(40)), 0.0])
    n = np.cross(e1, [0, 0, 1.0])
    ext = np.array([140.0, 140.0, 90.0])
    box = canvas.box_coords(p0 - ext, p0 + ext)
    if box is None:
        return
    sl, X, Y, Z = box
    along = (X - p0[0]) * e1[0] + (Y - p0[1]) * e1[1] + 0.0 * Z
    across = (X - p0[0]) * n[0] + (Y - p0[1]) * n[1] + 0.0 * Z
    sz = Z - p0[2]
    wing = ((np.abs(across) <= 6.0) & (along >= start_mm) & (along <= 95.0) & (sz >= -45.0)
            & (sz <= (crest_z_mm - p0[2]) - 0.25 * along))
    canvas.paint(sl, wing & ~np.isin(canvas.mat[sl], spare), ILIUM, 0)


def paint_screws(canvas: Canvas, vb: Vertebra) -> None:
    """Two titanium pedicle screws (6 mm, ~45 mm) from the pedicle entry into the vertebral body."""
    f = vb.frame
    for side in (-1, 1):
        entry = vb.centre + f[0] * side * (vb.canal_radius + 5.0) + f[1] * (0.8 * vb.half_depth + 18.0) \
            + f[2] * (0.2 * vb.height)
        end = vb.centre + f[0] * side * 4.0 + f[1] * (-0.5 * vb.half_depth) + f[2] * (0.2 * vb.height)
        canvas.stamp_tube(np.linspace(entry, end, 60), 3.0, METAL)
