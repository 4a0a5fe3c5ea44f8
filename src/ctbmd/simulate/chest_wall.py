"""Bones of the chest wall for ``--fov chest``: ribs with costal cartilage, sternum, clavicles, scapulae
and humeral heads.

Coordinates are LPS millimetres (anatomy frame, torso centred on x = y = 0), volumes ``(nx, ny, nz)``;
the thoracic layout (cavity ellipse per z, sternum levels, shoulder joints) comes from
:class:`ctbmd.simulate.thorax.ChestLayout`.

Rib anatomy (Gray's Anatomy, 42nd ed., ch. 53 "Chest wall"; Moore, Clinically Oriented Anatomy, 8th ed.):

* **Heads**: ribs 1, 10, 11 and 12 articulate with a single facet on their own vertebral body; ribs
  2-9 articulate with the demifacets of two bodies, i.e. at the disc between their own vertebra and
  the one above. The tubercle of ribs 1-10 meets the tip of their own vertebra's transverse process.
  A supernumerary thirteenth rib (on T13) articulates like the twelfth.
* **Course**: from the tubercle the rib runs posterolaterally to its angle, then around the chest wall,
  descending anteriorly. Bony anterior ends and drops (tubercle to anterior end) follow the
  LIDC-IDRI-0001 chest CT: ~35 mm for the first rib, ~95-100 mm for ribs 5-8 (4.5-4.8 thoracic level
  pitches), less again for the lower ribs (:data:`RIB_DROP_PITCH`).
* **Anterior ends**: ribs 1-7 (true ribs) reach the sternum through costal cartilage (first: the
  manubrium below the clavicle; second: the sternal angle; seventh: the xiphisternal junction);
  ribs 8-10 (false ribs) end in cartilage short of the sternum; ribs 11-12 float, with short shafts
  (:data:`ctbmd.simulate.anatomy.RIB_LENGTH`).
* **Shape**: ribs are flattened vertically (~9 x 7 mm here); the first rib is short, broad and flat
  (its surfaces face up and down) and lies under the clavicle.
* **Costal cartilage** reads ~100-200 HU on CT (hyaline cartilage; calcification is not modelled).
* **Sternum**: manubrium ~50 mm wide at the notch and ~13 mm thick, body ~30 mm wide and ~10 mm thick,
  xiphoid thin and tapering (Gray's ch. 53). **Clavicle**: S-shaped, ~140-150 mm, ~13 mm thick,
  convex anteriorly in its medial two thirds. **Scapula**: a thin plate (~5 mm here) on the posterior
  chest wall over ribs 2-7, in a plane turned ~35-45 degrees from the coronal, with its spine rising
  laterally into the acromion, which meets the clavicle. **Humeral head**: ~22-25 mm radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctbmd.simulate import anatomy as an
from ctbmd.simulate.thorax import ChestLayout, stamp_balls

#: Drop (in mean thoracic level pitches along z) of each rib from its tubercle to its anterior bony end.
RIB_DROP_PITCH = {1: 1.8, 2: 2.3, 3: 3.3, 4: 4.1, 5: 4.6, 6: 4.8, 7: 4.8, 8: 4.6, 9: 4.2, 10: 4.0, 11: 3.6,
                  12: 3.2, 13: 2.8}
#: Angle (fraction of pi, 0 = posterior midline, 1 = anterior midline) of each rib's bony anterior end.
RIB_END_ANGLE = {1: 0.86, 2: 0.85, 3: 0.83, 4: 0.82, 5: 0.80, 6: 0.76, 7: 0.70, 8: 0.64, 9: 0.60, 10: 0.57,
                 11: 0.55, 12: 0.52, 13: 0.50}
#: Ribs whose head sits at the disc with the vertebra above (demifacets).
HEAD_AT_DISC = range(2, 10)
TRUE_RIBS = range(1, 8)
FALSE_RIBS = range(8, 11)
RIB_RADIUS_MM = 3.5
#: A rib is two tubes of radius 3.5 mm, 1 mm above and below its centre line: ~9 x 7 mm.
RIB_HALF_THICKNESS_MM = 1.0
CARTILAGE_RADIUS_MM = 4.0


@dataclass(frozen=True)
class RibPaths:
    """Centre lines of one rib (anatomy mm): ``bone`` (k, 3) from the head, ``cartilage`` (m, 3) or None.

    ``length_mm`` is the bony centre-line length from the head.
    """

    bone: np.ndarray
    cartilage: np.ndarray | None
    length_mm: float


def _resample(pts: np.ndarray, step: float = 1.0) -> np.ndarray:
    d = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    s = np.arange(0.0, d[-1] + 1e-9, step)
    if s[-1] < d[-1] - 1e-6:
        s = np.r_[s, d[-1]]
    return np.stack([np.interp(s, d, pts[:, i]) for i in range(3)], axis=1)


def _length(pts: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def cut_path(pts: np.ndarray, length: float) -> np.ndarray:
    """The first ``length`` mm of a polyline ``pts`` ((k, 3), mm), ending exactly at that arc length."""
    d = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    if length >= d[-1]:
        return pts
    keep = pts[d < length]
    end = np.array([np.interp(length, d, pts[:, i]) for i in range(3)])
    return np.vstack([keep, end[None]])


def _ring(lay: ChestLayout, side: int, phi: np.ndarray, z: np.ndarray, rr: float) -> np.ndarray:
    x_c, y0, a, b = lay.cavity(z)
    return np.stack([x_c + side * (a + rr) * np.sin(phi), y0 + (b + rr) * np.cos(phi), z], axis=-1)


def _smoothstep(q):
    q = np.clip(q, 0.0, 1.0)
    return q * q * (3.0 - 2.0 * q)


def _sternal_half_width(lay: ChestLayout, z):
    st = lay.sternum
    s = st["scale"]
    return np.interp(z, [st["z_tip"], st["z_xiphisternal"], (st["z_xiphisternal"] + st["z_angle"]) / 2.0,
                         st["z_angle"], st["z_notch"]], [3.0 * s, 12.0 * s, 17.0 * s, 15.0 * s,
                                                         st["manubrium_half_width"]])


def _sternal_thickness(lay: ChestLayout, z):
    st = lay.sternum
    s = st["scale"]
    return np.interp(z, [st["z_tip"], st["z_xiphisternal"], st["z_angle"], st["z_notch"]],
                     [4.0 * s, 9.0 * s, st["body_thickness"], st["manubrium_thickness"]])


def chest_rib(lay: ChestLayout, verts: list[an.Vertebra], index: int, number: int, side: int, reach: float,
              pitch: float, length: float | None) -> RibPaths:
    """Centre lines of rib ``number`` on ``verts[index]`` (its own vertebra), side -1 (right) or 1 (left).

    Parameters
    ----------
    lay : ChestLayout
        Cavity, sternum and scale.
    verts : list of Vertebra
        All vertebrae, top to bottom (the one above gives the demifacet of ribs 2-9).
    index, number : int
        Index of the rib's vertebra in ``verts``; rib number (1 = first rib, on T1).
    reach : float
        Transverse-process reach of the vertebra (mm): the tubercle sits at its tip.
    pitch : float
        Mean z distance (mm) between thoracic body centres; scales the rib's descent.
    length : float, optional
        Cut the bony rib at this centre-line length from the head (mm): floating and hypoplastic ribs.

    Returns
    -------
    RibPaths
    """
    vb = verts[index]
    f, h, a, b = vb.frame, vb.height, vb.half_width, vb.half_depth
    if number in HEAD_AT_DISC and index > 0:
        up = verts[index - 1]
        disc = (up.centre - up.frame[2] * up.height / 2.0 + vb.centre + f[2] * h / 2.0) / 2.0
        head = disc + f[0] * side * (max(a, up.half_width) + 2.0) + f[1] * (0.35 * b)
    else:
        head = vb.centre + f[0] * side * (a + 2.0) + f[1] * (0.35 * b) + f[2] * (0.3 * h)
    rc = vb.canal_radius
    v_tp = 0.8 * b + 0.95 * rc - 3.0 + 0.9 * 0.35 * (reach - rc)
    tub = vb.centre + f[0] * side * (reach + 1.0) + f[1] * (v_tp - 4.0) + f[2] * (0.2 * h)
    rr = lay.rib_radius
    x_c, _y0, a_cav, _b = lay.cavity(tub[2])
    phi_t = float(np.arcsin(np.clip(abs(tub[0] - x_c) / (a_cav + rr), 0.0, 0.95)))
    phi_end = RIB_END_ANGLE[number] * np.pi
    if number in TRUE_RIBS:  # the bony end stays >= 12 mm lateral of the sternum: room for the cartilage
        z_end = tub[2] - RIB_DROP_PITCH[number] * pitch
        a_end = float(lay.cavity(z_end)[2]) + rr
        edge = float(_sternal_half_width(lay, min(z_end, lay.sternum["z_notch"]))) + 12.0
        phi_end = min(phi_end, np.pi - float(np.arcsin(np.clip(edge / a_end, 0.0, 1.0))))
    phis = np.arange(phi_t, phi_end, 0.004)
    q = (phis - phi_t) / (phi_end - phi_t)
    z = tub[2] - RIB_DROP_PITCH[number] * pitch * (1.0 - (1.0 - q) ** 2.5)  # most of the descent posterolaterally
    ring = _ring(lay, side, phis, z, rr)
    wgt = _smoothstep((phis - phi_t) / 0.35)[:, None]
    arc = np.column_stack([(1 - wgt) * tub[None, :2] + wgt * ring[:, :2], z])
    bone = _resample(np.vstack([np.linspace(head, tub, 20), arc]))
    cut = length is not None and length < _length(bone)
    if cut:
        bone = cut_path(bone, length)
    cartilage = None
    if number <= 10 and not cut:
        cartilage = _cartilage(lay, number, side, bone[-1], phi_end, rr)
    return RibPaths(bone=bone, cartilage=cartilage,
                    length_mm=_length(bone))


def _cartilage(lay: ChestLayout, number: int, side: int, end: np.ndarray, phi_end: float, rr: float) -> np.ndarray:
    """Costal cartilage from the bony end to the sternum (ribs 1-7) or short of it (8-10)."""
    st = lay.sternum
    s = st["scale"]
    if number == 1:
        z_att = st["z_notch"] - 10.0 * s
    elif number == 2:
        z_att = st["z_angle"]
    elif number in TRUE_RIBS:
        top = st["z_angle"] - 0.2 * (st["z_angle"] - st["z_xiphisternal"])
        z_att = float(np.linspace(top, st["z_xiphisternal"], 5)[number - 3])
    else:  # FALSE_RIBS: rising toward the cartilage above, ending short of the sternum
        z_att = end[2] + (14.0 + 4.0 * (number - 8)) * s
    a_att = float(lay.cavity(z_att)[2]) + rr
    half = float(_sternal_half_width(lay, min(z_att, st["z_notch"])))
    if number in TRUE_RIBS:
        phi_st = np.pi - np.arcsin(np.clip((half + 1.0) / a_att, 0.0, 1.0))
    else:
        gap = half + (30.0 + 10.0 * (number - 8)) * s
        phi_st = np.pi - np.arcsin(np.clip(gap / a_att, 0.0, 1.0))
        phi_st = phi_end + 0.6 * (phi_st - phi_end)
    if phi_st <= phi_end + 0.01:
        return None
    phis = np.arange(phi_end, phi_st, 0.004)
    q = (phis - phi_end) / (phi_st - phi_end)
    z = end[2] + (z_att - end[2]) * _smoothstep(q)
    pts = _ring(lay, side, phis, z, rr)
    pts[0] = end
    return _resample(pts)


_SOFT = (an.LUNG, an.VISCERAL_FAT, an.ORGAN, an.MUSCLE_WALL, an.SUBCUT_FAT, an.MYOCARDIUM, an.PARASPINAL,
         an.AORTA, an.IVC, an.GAS)


def paint_rib(canvas: an.Canvas, rib: RibPaths, number: int) -> None:
    """Paint rib ``number`` (``RIB``) and its costal cartilage (``CARTILAGE``, over soft tissue only).

    The bony rib is flattened: two tubes stacked in z, or side by side for the flat first rib.
    """
    bone = rib.bone
    if number == 1:
        d = np.gradient(bone[:, :2], axis=0)
        n = np.column_stack([-d[:, 1], d[:, 0]]) / np.maximum(np.linalg.norm(d, axis=1)[:, None], 1e-6)
        offsets = [np.column_stack([n * o, np.zeros(len(bone))]) for o in (-3.5, 3.5)]
    else:
        offsets = [np.array([0.0, 0.0, o]) for o in (-RIB_HALF_THICKNESS_MM, RIB_HALF_THICKNESS_MM)]
    for off in offsets:
        stamp_balls(canvas, np.column_stack([bone + off, np.full(len(bone), RIB_RADIUS_MM)]), an.RIB)
    if rib.cartilage is not None:
        stamp_balls(canvas, np.column_stack([rib.cartilage, np.full(len(rib.cartilage), CARTILAGE_RADIUS_MM)]),
                    an.CARTILAGE, 0.0, _SOFT)


def paint_sternum(canvas: an.Canvas, lay: ChestLayout) -> None:
    """Manubrium, body and xiphoid: an elliptic cross-section per z behind the anterior skin."""
    st = lay.sternum
    z0, z1 = st["z_tip"], st["z_notch"]
    x_c = float(lay.at("x_spine", (z0 + z1) / 2.0))
    y_lo = float(min(lay.at("y_ant", z0), lay.at("y_ant", z1))) - 25.0
    y_hi = float(max(lay.at("y_ant", z0), lay.at("y_ant", z1))) + 5.0
    box = canvas.box_coords(np.array([x_c - 40.0, y_lo, z0]), np.array([x_c + 40.0, y_hi, z1]))
    if box is None:
        return
    sl, X, Y, Z = box
    zc = Z[0, 0, :]
    half = _sternal_half_width(lay, zc)[None, None, :]
    th = _sternal_thickness(lay, zc)[None, None, :]
    yb = lay.at("y_ant", zc)[None, None, :]
    xc = lay.at("x_spine", zc)[None, None, :]
    m = ((X - xc) / half) ** 2 + ((Y - (yb - th / 2.0)) / (th / 2.0)) ** 2 <= 1.0
    canvas.paint(sl, m, an.FLAT_BONE)


def clavicle_path(lay: ChestLayout, side: int) -> np.ndarray:
    """(k, 4) centre line and radius of the clavicle from the sternoclavicular joint to the acromion."""
    sh = lay.shoulder[side]
    s = lay.sternum["scale"]
    sc, ac = sh["sternoclavicular"], sh["acromion"]
    t = np.linspace(0.0, 1.0, 120)
    base = sc[None] + t[:, None] * (ac - sc)[None]
    bow = 12.0 * s
    dy = np.where(t < 0.6, -bow * np.sin(np.pi * t / 0.6), 0.5 * bow * np.sin(np.pi * (t - 0.6) / 0.4))
    pts = base + np.column_stack([np.zeros_like(t), dy, 6.0 * np.sin(np.pi * t)])
    return np.column_stack([pts, (6.5 - 1.5 * t) * s])


def paint_shoulder_girdle(canvas: an.Canvas, lay: ChestLayout) -> None:
    """Clavicles, scapulae (plate, spine, acromion, glenoid) and humeral heads, both sides."""
    s = lay.sternum["scale"]
    zl = lay.z_level
    for side, sh in lay.shoulder.items():
        stamp_balls(canvas, clavicle_path(lay, side), an.FLAT_BONE)
        _paint_scapula(canvas, lay, side, sh, s, zl)
        r = sh["head_radius"]
        stamp_balls(canvas, np.array([[*sh["head"], r]]), an.FLAT_BONE)
        neck = np.linspace(sh["head"], sh["head"] + np.array([side * 14.0, 2.0, -22.0]) * s, 12)
        stamp_balls(canvas, np.column_stack([neck, np.linspace(r * 0.7, 14.0 * s, 12)]), an.FLAT_BONE)


def _scapula_y(lay: ChestLayout, X, Z, xc, x_m, alpha, rr):
    """y (mm) of the scapular plate over (X, Z): a plane turned ``alpha`` from the coronal through the
    medial border, which lies on the posterior chest wall (rib angles plus ~12 mm of muscle); kept
    outside the rib cage."""
    y_med = lay.at("y_post", Z) + rr + 12.0
    _x, y0, a, b = lay.cavity(Z)
    ao, bo = a + rr + 9.0, b + rr + 9.0
    dx = np.abs(X - xc)
    plane = y_med - np.tan(alpha) * (dx - x_m)
    wall = y0 + bo * np.sqrt(np.clip(1.0 - (dx / ao) ** 2, 0.0, 1.0))
    return np.where(dx < ao, np.maximum(plane, wall), plane)


def _paint_scapula(canvas, lay, side, sh, s, zl):
    """Scapular plate (a triangle: superior angle, glenoid, inferior angle) with spine, acromion, glenoid."""
    glen = sh["glenoid"]
    alpha = np.deg2rad(sh["scapular_plane_deg"])
    x_m = sh["medial_border_mm"]
    z_sa = zl["T1"] + 12.0 * s
    z_ia = zl["T8"] + 5.0 * s
    xc0 = float(lay.at("x_spine", (z_sa + z_ia) / 2.0))
    corners = np.array([[x_m, z_sa], [abs(glen[0] - xc0) - 4.0, glen[2] + 12.0 * s], [x_m + 18.0 * s, z_ia]])
    x_lo, x_hi = xc0 + side * 40.0, glen[0] + side * 12.0
    box = canvas.box_coords(np.array([min(x_lo, x_hi), glen[1] - 30.0, z_ia - 5.0]),
                            np.array([max(x_lo, x_hi), lay.y_back, z_sa + 30.0]))
    if box is None:
        return
    sl, X, Y, Z = box
    xc = lay.at("x_spine", Z)
    dx = np.abs(X - xc)
    tri = np.ones(np.broadcast_shapes(dx.shape, Z.shape), bool)
    centroid = corners.mean(0)
    for i in range(3):  # half-plane test per edge, oriented toward the centroid
        p, q = corners[i], corners[(i + 1) % 3]
        nrm = np.array([q[1] - p[1], -(q[0] - p[0])])
        sgn = np.sign((centroid - p) @ nrm)
        tri &= ((dx - p[0]) * nrm[0] + (Z - p[1]) * nrm[1]) * sgn >= 0
    yp = _scapula_y(lay, X, Z, xc, x_m, alpha, lay.rib_radius)
    near_glen = np.sqrt((X - glen[0]) ** 2 + (Z - glen[2]) ** 2) < 25.0 * s
    half_t = np.where(near_glen, 6.0, 2.5)
    canvas.paint(sl, tri & (np.abs(Y - yp) <= half_t) & ((X - xc) * side > 0), an.FLAT_BONE)
    # spine of the scapula: a ridge rising laterally to the acromion, which meets the clavicle
    z_sp = zl["T3"]
    p1x = xc0 + side * (x_m + 2.0)
    y1 = float(_scapula_y(lay, np.array(p1x), np.array(z_sp), xc0, x_m, alpha, lay.rib_radius)) + 4.0
    p2 = np.array([glen[0] - side * 10.0 * s, 0.0, sh["acromion"][2] - 10.0 * s])
    p2[1] = float(_scapula_y(lay, np.array(p2[0]), np.array(p2[2]), xc0, x_m, alpha, lay.rib_radius)) + 16.0 * s
    ridge = np.linspace([p1x, y1, z_sp], p2, 60)
    stamp_balls(canvas, np.column_stack([ridge, np.linspace(3.5, 5.0, 60) * s]), an.FLAT_BONE)
    acro = np.linspace(p2, sh["acromion"], 30)
    stamp_balls(canvas, np.column_stack([acro, np.full(30, 6.0 * s)]), an.FLAT_BONE)
    gl = canvas.box_coords(glen - 20.0, glen + 20.0)
    if gl is not None:
        sl2, X2, Y2, Z2 = gl
        q = ((X2 - glen[0]) / (7.0 * s)) ** 2 + ((Y2 - glen[1]) / (13.0 * s)) ** 2
        canvas.paint(sl2, q + ((Z2 - glen[2]) / (18.0 * s)) ** 2 <= 1, an.FLAT_BONE)
