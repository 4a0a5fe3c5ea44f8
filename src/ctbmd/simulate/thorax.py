"""Chest field of view (``--fov chest``): cervicothoracic column, thoracic cage layout, lungs and mediastinum.

Coordinates are LPS millimetres (x to the patient's left, y posterior, z superior), torso centred on
x = y = 0; volumes are ``(nx, ny, nz)`` arrays in that axis order (see :mod:`ctbmd.simulate.anatomy`).
The bones of the chest wall (ribs, costal cartilage, sternum, clavicles, scapulae, humeral heads) are
in :mod:`ctbmd.simulate.chest_wall`; the soft tissue is painted by :mod:`ctbmd.simulate.chest_paint`
from the layout drawn here.

Numbers and their sources:

* **Vertebral bodies** (height, width, depth, mm; :data:`CERVICOTHORACIC_SIZE`): thoracic bodies grow
  from T1 (posterior height ~14.5, upper endplate width ~28, depth ~16) to T12 (~23, ~42, ~31), after
  the means of Panjabi et al., "Thoracic human vertebrae", Spine 1991;16:888-901 (VBHp, EPWu, EPDu);
  T10-T12 keep the values of :data:`ctbmd.simulate.anatomy.BODY_SIZE`. Cervical bodies C6/C7 are
  ~13.5-14 mm high, 22-25 mm wide and ~16 mm deep (Panjabi et al., "Cervical human vertebrae",
  Spine 1991;16:861-869).
* **Discs**: thoracic discs are the thinnest of the column, ~4 mm at T1-T4 rising to ~6 mm at
  T10/T11 (Kunkel et al., J Anat 2011;219:375-387); cervical discs ~5 mm.
* **Transverse processes**: reach ~40 mm from the midline at T1, ~33 mm at T9 (Panjabi 1991, TPW/2);
  cervical ones are short (C6 ~24, C7 ~27 mm here) and carry no ribs.
* **Sagittal profile**: a supine chest CT shows the upper thoracic column strongly inclined. On the
  LIDC-IDRI-0001 chest CT (``shared/data/lidc_idri_0001_chest``) the column runs ~45 degrees from the
  vertical at T1, the vertebral-body centre moves ~50-60 mm posteriorly from T1 to the kyphotic apex
  at T7/T8 and ~40 mm anteriorly again to L1 (tangent ~ -20 degrees at T10-L1); cervical lordosis
  makes C6 less inclined than T1. The profile here is a monotone (PCHIP) curve of the column angle
  through seeded values at C6, T1, T4, T7, T10, T12, L1 and L2 (T1-T12 kyphosis 45-75 degrees).
* **Thoracic cage**: on the same CT the ribs' bony half-widths grow from ~55 mm (first rib) to
  ~135 mm (ninth/tenth); the sternum spans T2/T3 (jugular notch) to T9/T10 (xiphoid tip); the
  posterior costophrenic recesses reach T12; the right dome of the diaphragm lies at about T9, the
  left ~1-2 cm lower; the heart spans T5/T6 to T10 with its centre ~35 mm left of the midline; the
  aortic arch tops out at T4 and the descending aorta runs ~20 mm left of and ~15-25 mm anterior to
  the thoracic bodies; the carina lies at T5 (Gray's Anatomy, 42nd ed., ch. 52-57, gives the same
  landmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from ctbmd.simulate import anatomy as an

#: Levels of a chest phantom with 12 rib pairs, top to bottom (C6 may be cut by the top edge, L2 by the bottom).
CHEST_LEVELS = ("C6", "C7", "T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2")
#: Body height, half-width and half-depth (mm) of C6-T9 (see the module doc); T10 and below are in
#: :data:`ctbmd.simulate.anatomy.BODY_SIZE`.
CERVICOTHORACIC_SIZE = {
    "C6": (13.5, 11.0, 8.0), "C7": (14.0, 12.5, 8.0),
    "T1": (14.5, 14.0, 8.0), "T2": (15.5, 13.5, 8.5), "T3": (16.0, 13.5, 9.5), "T4": (16.5, 14.0, 10.5),
    "T5": (17.0, 14.5, 11.0), "T6": (17.5, 15.0, 12.0), "T7": (18.0, 15.5, 12.5), "T8": (19.0, 16.0, 13.0),
    "T9": (20.0, 17.0, 13.5),
}
#: Disc below each level (mm).
CERVICOTHORACIC_DISC_BELOW = {"C6": 5.0, "C7": 5.0, "T1": 4.0, "T2": 4.0, "T3": 4.0, "T4": 4.0, "T5": 4.5,
                              "T6": 4.5, "T7": 5.0, "T8": 5.0, "T9": 5.5}
#: Transverse-process reach from the midline (mm).
CERVICOTHORACIC_REACH = {"C6": 24.0, "C7": 27.0, "T1": 40.0, "T2": 39.0, "T3": 38.0, "T4": 37.0, "T5": 36.0,
                         "T6": 35.0, "T7": 35.0, "T8": 34.0, "T9": 33.0}
#: Seeded range (degrees) of the column angle from the vertical at T1 (positive: the column runs
#: posteriorly going down) and at T10-T12 (negative: anteriorly going down).
T1_ANGLE_DEG = (32.0, 50.0)
T12_ANGLE_DEG = (12.0, 24.0)


def body_size(level: str) -> tuple[float, float, float]:
    """Nominal body height, half-width, half-depth (mm) of any level C6-L6 (T13 included)."""
    return CERVICOTHORACIC_SIZE.get(level) or an.BODY_SIZE[level]


def disc_below(level: str) -> float:
    """Nominal height (mm) of the disc below ``level``."""
    return CERVICOTHORACIC_DISC_BELOW.get(level) or an.DISC_BELOW[level]


def transverse_reach(level: str) -> float:
    """Nominal transverse-process reach from the midline (mm) of ``level``."""
    return CERVICOTHORACIC_REACH.get(level) or an.TRANSVERSE_REACH[level]


@dataclass(frozen=True)
class ChestLayout:
    """Where the thoracic structures lie (anatomy mm, before patient rotation).

    Profiles are sampled at ``zz`` (increasing z, mm) and read with :meth:`at`. The cavity inside the
    ribs is, at each z, an ellipse centred on ``(x_spine, (y_ant + y_post) / 2)`` with half-axes
    ``half_width`` and ``(y_post - y_ant) / 2``; ribs run just outside it, lungs fill it above the
    diaphragm and the upper abdominal organs below.

    Attributes
    ----------
    zz, x_spine, y_spine : numpy.ndarray
        (n,) z samples and the column centre line (vertebral-body centre) there.
    y_front, y_ant, y_post, half_width : numpy.ndarray
        (n,) anterior skin at the midline; inner anterior wall (sternum back, abdominal wall below
        the xiphoid); inner posterior wall at the rib angles; cavity half-width.
    y_back : float
        Posterior skin (flat: the patient lies supine).
    z_level : dict
        Level -> body-centre z.
    sternum : dict
        ``z_notch``, ``z_angle``, ``z_xiphisternal``, ``z_tip`` (mm) and half-widths/thicknesses.
    diaphragm : dict
        Dome tops, recess heights and dome centres (mm), see
        :func:`ctbmd.simulate.chest_paint.diaphragm_height`.
    heart : dict
        ``centre`` (3,), ``axes`` (3, 3) rows = unit axes, ``semi`` (3,) semi-axes (mm).
    tubes : dict
        Name -> (m, 4) centre line x, y, z and radius (mm) of the aorta, great vessels, cavae,
        trachea, bronchi and oesophagus.
    shoulder : dict
        Per side (``-1`` right, ``1`` left) the humeral-head centre and radius, glenoid, acromion
        tip and sternoclavicular joint (mm).
    rib_radius : float
        Radius (mm) of the rib centre line's offset outside the cavity.
    """

    zz: np.ndarray
    x_spine: np.ndarray
    y_spine: np.ndarray
    y_front: np.ndarray
    y_ant: np.ndarray
    y_post: np.ndarray
    half_width: np.ndarray
    y_back: float
    z_level: dict
    sternum: dict
    diaphragm: dict
    heart: dict
    tubes: dict
    shoulder: dict
    rib_radius: float

    def at(self, name: str, z):
        """Profile ``name`` (an attribute sampled at ``zz``) at ``z`` (mm, scalar or array)."""
        return np.interp(z, self.zz, getattr(self, name))

    def cavity(self, z):
        """``(x_c, y0, A, B)`` of the cavity ellipse at ``z`` (mm; scalars or arrays like ``z``)."""
        ya, yp = self.at("y_ant", z), self.at("y_post", z)
        return self.at("x_spine", z), (ya + yp) / 2.0, self.at("half_width", z), (yp - ya) / 2.0


def _column_angles(rng: np.random.Generator, levels: list[str], mids: list[float]):
    """Seeded sagittal column angle (radians from the vertical) as a function of arc length."""
    t1 = float(rng.uniform(*T1_ANGLE_DEG))
    cerv = t1 - float(rng.uniform(8.0, 20.0))
    low = -float(rng.uniform(*T12_ANGLE_DEG))
    ctrl = {"C6": cerv, "T1": t1, "T4": 0.72 * t1, "T7": 0.1 * t1, "T10": low, "T12": low, "L1": 0.85 * low,
            "L2": 0.55 * low}
    s_c = np.array([mids[levels.index(k)] for k in ctrl if k in levels])
    th_c = np.deg2rad([v for k, v in ctrl.items() if k in levels])
    curve = PchipInterpolator(s_c, th_c)
    return (lambda s: curve(np.clip(s, s_c[0], s_c[-1]))), {"t1_angle_deg": t1, "c6_angle_deg": cerv,
                                                           "t12_angle_deg": low, "kyphosis_deg": t1 - low}


def draw_chest_anatomy(rng: np.random.Generator, levels: list[str], body_width_mm: float | None,
                       ribs_on: tuple[str, ...]) -> an.Anatomy:
    """Draw the chest phantom's column, torso and thoracic layout.

    Parameters
    ----------
    rng : numpy.random.Generator
        The phantom's seeded generator.
    levels : list of str
        Levels top to bottom, e.g. ``CHEST_LEVELS`` (a T13 may sit between T12 and L1).
    body_width_mm : float, optional
        Left-right torso width (mm); seeded 290-370 mm when None.
    ribs_on : tuple of str
        Levels that carry a pair of ribs.

    Returns
    -------
    Anatomy
        ``chest`` holds the :class:`ChestLayout`; ``sacrum_top`` lies below the volume (no sacrum);
        ``extras`` the size factor, scoliosis and the sagittal angles (degrees).
    """
    scale = float(rng.uniform(0.92, 1.08))
    width = float(body_width_mm) if body_width_mm else float(rng.uniform(290.0, 370.0))
    subcut = float(np.clip(6.0 + 0.1 * (width - 250.0) + rng.normal(0.0, 3.0), 5.0, 35.0))
    col = _draw_column(rng, levels, scale)
    prof = _draw_profiles(rng, levels, col, width, subcut, scale)
    depth, z_top, z_bot = prof.pop("depth_mm"), prof.pop("z_top"), prof.pop("z_bottom")
    layout_args = dict(prof, z_level=col["mid_z"], rib_radius=5.0)
    partial = ChestLayout(**layout_args, diaphragm={}, heart={}, tubes={}, shoulder={})
    diaphragm = _draw_diaphragm(rng, partial, scale)
    partial = ChestLayout(**layout_args, diaphragm=diaphragm, heart={}, tubes={}, shoulder={})
    heart = _draw_heart(rng, partial, col["size"], scale)
    r_desc = float(rng.uniform(10.0, 13.0)) * scale
    tubes = _draw_tubes(rng, partial, heart, col["size"], levels, r_desc, scale)
    shoulder = _draw_shoulders(rng, partial, scale)
    layout = ChestLayout(**layout_args, diaphragm=diaphragm, heart=heart, tubes=tubes, shoulder=shoulder)

    column = (layout.zz, layout.x_spine, layout.y_spine)
    verts = []
    for lv in levels:
        h, a, b, _d = col["size"][lv]
        centre, frame = an.column_frame(column, col["mid_z"][lv])
        canal = (8.5 if lv.startswith("C") else 8.0 if lv.startswith("T") else 9.5) * scale
        verts.append(an.Vertebra(lv, centre, frame, h, a, b, canal_radius=canal, ribs=lv in ribs_on))
    extras = {"scale": scale, "scoliosis_mm": col["scoliosis_mm"], **col["angles"]}
    return an.Anatomy(width=width, depth=depth, subcut_fat=subcut, vertebrae=verts, sacrum_top=z_bot - 500.0,
                      z_min=z_bot, z_max=z_top, column=column, aorta_radius=0.9 * r_desc, visceral_fat_share=0.0,
                      extras=extras, chest=layout)


def _draw_column(rng, levels: list[str], scale: float) -> dict:
    """Vertebra sizes (h, a, b, disc below; mm) and the column centre line in a raw frame.

    The bodies are stacked along the arc length of a curve whose angle from the vertical follows
    :func:`_column_angles`; ``y_raw``/``z_raw``/``x_raw`` are sampled at arc lengths ``ss`` (mm), z
    centred on the middle of the column.
    """
    size = {}
    for lv in levels:
        h, a, b = body_size(lv)
        j = rng.uniform(0.96, 1.04, size=3)
        size[lv] = (h * scale * j[0], a * scale * j[1], b * scale * j[2],
                    disc_below(lv) * scale * rng.uniform(0.9, 1.1))
    mids, s = [], 0.0
    for lv in levels:
        h, _a, _b, d = size[lv]
        mids.append(s + h / 2.0)
        s += h + d
    angle, angles = _column_angles(rng, levels, mids)
    ds = 0.5
    ss = np.arange(-120.0, s + 120.0, ds)
    th = angle(ss)
    y_raw = np.cumsum(np.sin(th)) * ds
    z_raw = -np.cumsum(np.cos(th)) * ds
    scol = float(rng.uniform(-5.0, 5.0))
    x_raw = scol * np.sin(np.pi * (ss - ss[0]) / (ss[-1] - ss[0]))
    z_raw -= np.interp(s / 2.0, ss, z_raw)
    return {"size": size, "ss": ss, "x_raw": x_raw, "y_raw": y_raw, "z_raw": z_raw, "angles": angles,
            "scoliosis_mm": scol, "mid_y": {lv: float(np.interp(m, ss, y_raw)) for lv, m in zip(levels, mids)},
            "mid_z": {lv: float(np.interp(m, ss, z_raw)) for lv, m in zip(levels, mids)}}


def _draw_profiles(rng, levels: list[str], col: dict, width: float, subcut: float, scale: float) -> dict:
    """Sagittal layout: flat back, sternum in front of the heart, neck above the manubrium, and the
    cavity profiles (see :class:`ChestLayout`), with the torso centred on y = 0.

    Returns the :class:`ChestLayout` profile fields, ``sternum``, ``depth_mm`` and the volume's
    ``z_top``/``z_bottom`` (mm).
    """
    size, mid_y, mid_z = col["size"], col["mid_y"], col["mid_z"]
    thoracic = [lv for lv in levels if lv.startswith("T")]
    y_apex = max(mid_y[lv] for lv in thoracic)
    y_back = y_apex + subcut + float(rng.uniform(52.0, 62.0)) * scale  # skin to body centre at the apex
    front_body = {lv: mid_y[lv] - size[lv][2] for lv in levels}
    z_notch = (mid_z["T2"] + mid_z["T3"]) / 2.0
    z_angle = (mid_z["T4"] + mid_z["T5"]) / 2.0
    z_xs = mid_z["T9"] + 0.6 * size["T9"][0]
    z_tip = z_xs - float(rng.uniform(25.0, 40.0)) * scale
    th_m, th_b = 13.0 * scale, 10.0 * scale
    t_pre = 0.45 * subcut + 4.0
    y_mb = front_body["T3"] - float(rng.uniform(62.0, 80.0)) * scale  # manubrium back at the notch
    y_xb = front_body["T9"] - float(rng.uniform(105.0, 128.0)) * scale  # sternum back at the xiphisternum
    depth = float(np.clip(y_back - (y_xb - th_b - t_pre), 0.6 * width, 0.85 * width))
    y_front_low = y_back - depth
    y_xb = min(y_front_low + th_b + t_pre, y_mb - 5.0)
    shift = -(y_back - depth / 2.0)  # centre the torso on y = 0
    y_back, y_mb, y_xb, y_front_low = y_back + shift, y_mb + shift, y_xb + shift, y_front_low + shift

    z_top = mid_z[levels[0]] + float(rng.uniform(-0.1, 0.45)) * size[levels[0]][0]  # C6 cut by the top
    z_bot = mid_z[levels[-1]] + float(rng.uniform(-0.35, 0.2)) * size[levels[-1]][0]  # L2 cut by the bottom
    zz = np.arange(z_bot - 80.0, z_top + 80.0, 0.5)
    order = np.argsort(col["z_raw"])
    x_sp = np.interp(zz, col["z_raw"][order], col["x_raw"][order])
    y_sp = np.interp(zz, col["z_raw"][order], col["y_raw"][order]) + shift
    b_sp = np.interp(zz, [mid_z[lv] for lv in levels[::-1]], [size[lv][2] for lv in levels[::-1]])

    y_sb = y_mb + (y_xb - y_mb) / (z_xs - z_notch) * (zz - z_notch)  # sternum back surface
    thick = np.interp(zz, [z_tip, z_xs, z_angle, z_notch], [5.0 * scale, th_b, th_b, th_m])
    neck_front = float(np.interp(z_top, zz, y_sp - b_sp)) - float(rng.uniform(45.0, 60.0)) * scale
    y_front = np.where(zz <= z_xs, y_front_low, y_sb - thick - t_pre)
    rise = np.clip((zz - z_notch) / 35.0, 0.0, 1.0)
    y_front = np.where(zz > z_notch, (1 - rise) * (y_mb - th_m - t_pre) + rise * neck_front, y_front)
    y_front = np.minimum(y_front, y_sp - b_sp - 20.0)
    y_ant = np.where(zz >= z_tip, y_sb, y_front + subcut + 12.0)
    upper = np.clip((zz - z_notch) / 30.0, 0.0, 1.0)  # lung apices lie posteriorly, beside the trachea
    y_ant = (1 - upper) * y_ant + upper * (y_sp - b_sp - 45.0 * scale)
    y_post = y_sp + float(rng.uniform(34.0, 42.0)) * scale  # the rib angles
    a_max = width / 2.0 - subcut - float(rng.uniform(12.0, 18.0))
    z_t1, z_t10 = mid_z["T1"], mid_z["T10"]
    dz = z_t1 - zz
    half_w = a_max * (0.38 + 0.62 * np.clip(dz / (z_t1 - z_t10), 0.0, 1.0) ** 0.55)
    apex = 14.0 * scale
    half_w = np.where(dz < 0, half_w * np.sqrt(np.clip(1.0 - (dz / apex) ** 2, 0.0, 1.0)), half_w)
    z_lo_thor = mid_z[thoracic[-1]]
    half_w = np.where(zz < z_lo_thor, half_w * (1.0 - 0.03 * np.clip((z_lo_thor - zz) / 40.0, 0, 1)), half_w)
    sternum = {"z_notch": z_notch, "z_angle": z_angle, "z_xiphisternal": z_xs, "z_tip": z_tip,
               "manubrium_half_width": 26.0 * scale, "body_half_width": 15.0 * scale,
               "manubrium_thickness": th_m, "body_thickness": th_b, "scale": scale}
    col["angles"]["apex_to_t1_posterior_shift_mm"] = y_apex - mid_y["T1"]
    return {"zz": zz, "x_spine": x_sp, "y_spine": y_sp, "y_front": y_front, "y_ant": y_ant, "y_post": y_post,
            "half_width": half_w, "y_back": y_back, "sternum": sternum, "depth_mm": depth, "z_top": z_top,
            "z_bottom": z_bot}


def _draw_diaphragm(rng, lay: ChestLayout, scale: float) -> dict:
    zl = lay.z_level
    z_right = zl["T9"] + float(rng.uniform(-5.0, 8.0)) * scale
    z_left = z_right - float(rng.uniform(8.0, 18.0)) * scale
    z_recess = zl["T12"] - float(rng.uniform(6.0, 16.0)) * scale
    z_lateral = zl["T11"] + float(rng.uniform(-6.0, 6.0)) * scale
    ref = zl["T10"]
    x_c, y0, a, b = (float(v) for v in lay.cavity(ref))
    return {"z_right": z_right, "z_left": z_left, "z_recess": z_recess, "z_lateral": z_lateral,
            "x_c": x_c, "x_dome": 0.45 * a, "y_dome": y0 - 0.25 * b, "half_width": a,
            "y_post": float(lay.at("y_post", zl["T12"])), "y_ant": float(lay.at("y_ant", ref))}


def _draw_heart(rng, lay: ChestLayout, size: dict, scale: float) -> dict:
    zl = lay.z_level
    z_top = zl["T5"] - 0.3 * size["T5"][0]
    z_bot = min(lay.diaphragm["z_left"], lay.diaphragm["z_right"]) - 8.0 * scale
    zc = (z_top + z_bot) / 2.0
    x_c, y0, a, b = (float(v) for v in lay.cavity(zc))
    y_front_spine = float(lay.at("y_spine", zc)) - size["T8"][2] - 26.0 * scale  # oesophagus, aorta behind
    y_a = float(lay.at("y_ant", zc)) + 2.0
    yc = (y_a + y_front_spine) / 2.0
    alpha = np.deg2rad(float(rng.uniform(25.0, 40.0)))
    e1 = np.array([np.cos(alpha), -np.sin(alpha), 0.0])  # long axis toward the apex: left-anterior
    tilt = np.deg2rad(float(rng.uniform(10.0, 25.0)))  # apex also points inferiorly
    e1 = np.cos(tilt) * e1 + np.sin(tilt) * np.array([0.0, 0.0, -1.0])
    e2 = np.cross([0.0, 0.0, 1.0], e1)
    e2 /= np.linalg.norm(e2)
    e3 = np.cross(e1, e2)
    half_depth = (y_front_spine - y_a) / 2.0
    a1 = float(rng.uniform(58.0, 68.0)) * scale
    a3 = (z_top - z_bot) / 2.0
    a2 = float(np.clip(half_depth / max(abs(e2[1]), 0.5), 35.0, 55.0))
    centre = np.array([x_c + float(rng.uniform(25.0, 38.0)) * scale, yc, zc])
    return {"centre": centre, "axes": np.vstack([e1, e2, e3]), "semi": np.array([a1, a2, a3]),
            "wall_mm": 9.0 * scale}


def _tube(points: np.ndarray, radius, step: float = 1.0) -> np.ndarray:
    """Resample a polyline (k, 3) at ~``step`` mm and attach radii: (m, 4) x, y, z, r."""
    pts = np.asarray(points, float)
    d = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    s = np.arange(0.0, d[-1] + 1e-9, step)
    out = np.stack([np.interp(s, d, pts[:, i]) for i in range(3)], axis=1)
    r = np.interp(s, d, np.broadcast_to(np.asarray(radius, float), (len(pts),)))
    return np.column_stack([out, r])


def _draw_aorta(rng, lay: ChestLayout, heart: dict, bv, r_desc: float, scale: float):
    """Aortic root, ascending aorta, arch (top at T4) and descending aorta (left-anterolateral of the
    bodies, in front of them at the hiatus), as (m, 4) centre lines; also the arch points and heights."""
    zl = lay.z_level
    z_bot = float(lay.zz[0]) + 80.0
    xs = lambda z: float(lay.at("x_spine", z))  # noqa: E731
    ys = lambda z: float(lay.at("y_spine", z))  # noqa: E731
    r_asc = r_desc * float(rng.uniform(1.2, 1.4))
    c, ax, semi = heart["centre"], heart["axes"], heart["semi"]
    root = c + ax[2] * 0.35 * semi[2] - np.array([12.0, 0.0, 0.0]) * scale
    z_arch = zl["T4"] + 4.0 * scale
    z_ends = z_arch - 22.0 * scale
    y_asc = float(lay.at("y_ant", z_ends)) + r_asc + 14.0 * scale
    p_asc = np.array([xs(z_ends) - 10.0 * scale, y_asc, z_ends])
    p_desc = np.array([xs(z_ends) + 22.0 * scale, ys(z_ends) - 0.65 * (bv(z_ends) + r_desc), z_ends])
    t = np.linspace(0.0, 1.0, 40)
    chord = p_desc - p_asc
    arch = p_asc[None] + 0.5 * (1 - np.cos(np.pi * t))[:, None] * chord[None] \
        + (np.sin(np.pi * t) * (z_arch - z_ends))[:, None] * np.array([0.0, 0.0, 1.0])[None]
    asc = np.linspace(root, p_asc, 30)
    # descending: left-anterolateral of the bodies, moving in front of them toward the hiatus (T12)
    z_ctrl = [z_bot - 20.0, zl["T12"], zl["T8"], zl["T5"]]
    zd = np.arange(z_ends - 1.0, z_bot - 20.0, -1.0)
    ox = np.interp(zd, z_ctrl, [10.0, 13.0, 18.0, 22.0])  # mm left of the body centre
    g = np.interp(zd, z_ctrl, [1.0, 1.0, 0.85, 0.65])  # share of (body half-depth + radius) in front
    desc = np.array([[xs(z) + o * scale, ys(z) - gg * (bv(z) + r_desc) - 3.0 * (gg >= 0.99), z]
                     for z, o, gg in zip(zd, ox, g)])
    arch_t = _tube(arch, np.linspace(r_asc, r_desc, 40))
    desc_t = _tube(desc, np.where(desc[:, 2] < zl["T12"], 0.9 * r_desc, r_desc))
    aorta = np.vstack([_tube(asc, r_asc), arch_t, desc_t])
    # the arch and the descending aorta on their own, for a stent graft (not painted twice)
    tubes = {"aorta": aorta, "aortic_arch": arch_t, "descending_aorta": desc_t}
    return tubes, arch, y_asc, z_arch, z_ends


def _draw_tubes(rng, lay: ChestLayout, heart: dict, size: dict, levels: list[str], r_desc: float,
                scale: float) -> dict:
    """Centre lines ((m, 4): x, y, z, radius; mm) of the aorta, great vessels, cavae, airway, oesophagus."""
    zl = lay.z_level
    z_top = float(lay.zz[-1]) - 80.0
    z_bot = float(lay.zz[0]) + 80.0
    xs = lambda z: float(lay.at("x_spine", z))  # noqa: E731
    ys = lambda z: float(lay.at("y_spine", z))  # noqa: E731
    zs_lv = [zl[lv] for lv in levels[::-1]]
    bv = lambda z: float(np.interp(z, zs_lv, [size[lv][2] for lv in levels[::-1]]))  # noqa: E731
    tubes, arch, y_asc, z_arch, z_ends = _draw_aorta(rng, lay, heart, bv, r_desc, scale)
    c, semi = heart["centre"], heart["semi"]
    arch_pt = lambda f: arch[int(f * (len(arch) - 1))]  # noqa: E731
    b_t1 = lay.at("y_spine", zl["T1"]) - size["T1"][2]
    tubes["brachiocephalic_trunk"] = _tube([arch_pt(0.3), [xs(z_top) - 20 * scale, b_t1 - 30 * scale,
                                                           z_arch + 35 * scale], [xs(z_top) - 25 * scale,
                                                           b_t1 - 25 * scale, z_top + 10]], 6.0 * scale)
    tubes["left_carotid"] = _tube([arch_pt(0.5), [xs(z_top) + 14 * scale, b_t1 - 28 * scale, z_top + 10]],
                                  4.5 * scale)
    tubes["left_subclavian"] = _tube([arch_pt(0.65), [xs(z_top) + 28 * scale, b_t1 - 12 * scale,
                                                      zl["T1"] + 5 * scale],
                                      [xs(z_top) + 60 * scale, b_t1 - 15 * scale, zl["T1"] + 12 * scale]],
                                     5.0 * scale)
    svc_top = np.array([xs(z_top) - 28 * scale, y_asc + 8 * scale, z_top + 10])
    ra = c + np.array([-0.55 * semi[0], 0.1 * semi[1], 0.2 * semi[2]])
    tubes["svc"] = _tube([svc_top, [svc_top[0], svc_top[1], z_ends], ra], 9.0 * scale)
    ivc_bot = np.array([xs(z_bot) - 22 * scale, ys(z_bot) - bv(z_bot) - 18 * scale, z_bot - 20])
    tubes["ivc"] = _tube([ra - np.array([0, 0, 0.4 * semi[2]]), ivc_bot], 11.0 * scale)
    # airway: trachea nearly vertical, in front of the oesophagus, to the carina at T5
    r_t = float(rng.uniform(8.0, 10.0)) * scale
    z_car = zl["T5"] + 5.0 * scale
    tr_top = np.array([xs(z_top), ys(z_top) - bv(z_top) - 16.0 * scale - r_t, z_top + 10.0])
    carina = np.array([xs(z_car) + 2.0, ys(z_car) - bv(z_car) - 28.0 * scale - r_t, z_car])
    tubes["trachea"] = _tube([tr_top, carina], r_t)
    rb = carina + np.array([-38.0, 10.0, -22.0]) * scale
    lb = carina + np.array([48.0, 12.0, -34.0]) * scale
    tubes["right_bronchus"] = _tube([carina, rb, rb + np.array([-12.0, 12.0, -30.0]) * scale],
                                    [0.75 * r_t, 0.7 * r_t, 0.5 * r_t])
    tubes["left_bronchus"] = _tube([carina, lb, lb + np.array([12.0, 14.0, -30.0]) * scale],
                                   [0.7 * r_t, 0.65 * r_t, 0.45 * r_t])
    # oesophagus: between trachea and spine, right of the descending aorta, to the hiatus at T10
    oz = np.arange(z_top + 10.0, zl["T10"], -5.0)
    oes = [[xs(z) + (3.0 + 11.0 * np.clip((zl["T3"] - z) / 60.0, 0, 1)) * scale, ys(z) - bv(z) - 9.0 * scale, z]
           for z in oz]
    oes.append([xs(zl["T11"]) + 30.0 * scale, ys(zl["T11"]) - bv(zl["T11"]) - 35.0 * scale, zl["T11"]])
    tubes["oesophagus"] = _tube(np.array(oes), 7.0 * scale)
    return tubes


def _draw_shoulders(rng, lay: ChestLayout, scale: float) -> dict:
    out = {}
    r_h = float(rng.uniform(21.0, 25.0)) * scale
    st = lay.sternum
    # the clavicle rises only 20-35 mm from the sternoclavicular to the acromioclavicular joint
    z_ac = st["z_notch"] + float(rng.uniform(20.0, 35.0)) * scale
    z_h = z_ac - r_h - 6.0 * scale
    y_h = float(lay.at("y_spine", z_h)) + float(rng.uniform(-5.0, 12.0)) * scale
    # scapular plane turned 35-45 degrees from the coronal; the glenoid ~100 mm (along the plate)
    # lateral of the medial border, which lies ~50 mm from the midline
    alpha = float(rng.uniform(35.0, 45.0))
    x_glen = (50.0 + 100.0 * np.cos(np.deg2rad(alpha))) * scale
    x_c = float(lay.at("x_spine", z_h))
    for side in (-1, 1):
        x_h = x_c + side * (x_glen + r_h + 5.0 * scale)
        head = np.array([x_h, y_h, z_h])
        glenoid = head - np.array([side * (r_h + 5.0 * scale), -3.0, 0.0])
        acromion = head + np.array([-side * 6.0 * scale, 6.0 * scale, r_h + 6.0 * scale])
        y_sc = float(lay.at("y_ant", st["z_notch"])) - st["manubrium_thickness"] - 2.0
        sc = np.array([float(lay.at("x_spine", st["z_notch"])) + side * (st["manubrium_half_width"] + 4.0),
                       y_sc, st["z_notch"] + 4.0 * scale])
        out[side] = {"head": head, "head_radius": r_h, "glenoid": glenoid, "acromion": acromion,
                     "sternoclavicular": sc, "scapular_plane_deg": alpha, "medial_border_mm": 50.0 * scale}
    return out

def stamp_balls(canvas: an.Canvas, tube: np.ndarray, material: int, extra_mm: float = 0.0,
                allowed: tuple[int, ...] | None = None) -> None:
    """Paint balls along a centre line ``tube`` ((m, 4): x, y, z, radius; anatomy mm).

    ``extra_mm`` is added to every radius (an envelope); ``allowed`` limits painting to voxels that
    hold one of those materials.
    """
    pts = canvas.world(tube[:, :3])
    for p, r0 in zip(pts, tube[:, 3]):
        r = float(r0) + extra_mm
        r_vox = np.ceil(r / canvas.spacing).astype(int)
        cidx = np.round((p - canvas.origin) / canvas.spacing).astype(int)
        lo = np.maximum(cidx - r_vox, 0)
        hi = np.minimum(cidx + r_vox + 1, canvas.mat.shape)
        if np.any(hi <= lo):
            continue
        gx = (np.arange(lo[0], hi[0]) * canvas.spacing[0] + canvas.origin[0] - p[0])[:, None, None]
        gy = (np.arange(lo[1], hi[1]) * canvas.spacing[1] + canvas.origin[1] - p[1])[None, :, None]
        gz = (np.arange(lo[2], hi[2]) * canvas.spacing[2] + canvas.origin[2] - p[2])[None, None, :]
        m = gx * gx + gy * gy + gz * gz <= r * r
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        if allowed is not None:
            m &= np.isin(canvas.mat[sl], allowed)
        canvas.paint(sl, m, material)
