"""Digital anatomy of the thoracolumbar spine in a torso, as a material-label volume.

Coordinates are LPS millimetres (x to the patient's left, y posterior, z
superior) with the torso centred on x = y = 0. Volumes are ``(nx, ny, nz)``
arrays in that axis order. Every structure is an analytic shape (ellipses,
elliptic cylinders, boxes, tubes) placed along a curved spinal column; sizes
and curvature are drawn from a seeded random generator.

Sizes follow published morphometry where a number is quoted:

* vertebral body heights, widths and depths, T10-L5: Panjabi et al., Spine
  1991;16:888-901 (thoracic) and Spine 1992;17:299-306 (lumbar);
* disc heights: roughly 5-7 mm thoracic, 8-11 mm lumbar (same sources);
* lumbar transverse processes reaching 35-50 mm from the midline, sacral alae
  about 100-120 mm wide;
* an abdomen 25-45 cm wide with 0.6-0.8 of that in depth.

Shapes are plausible rather than exact: they are meant to exercise
segmentation, ROI placement and calibration with a known truth, not to
replace real anatomy.

This module holds the materials, sizes, the drawn layout (:func:`draw_anatomy`),
the :class:`Canvas` and the torso (:func:`paint_torso`); the vertebrae, discs,
ribs, sacrum, ilium and screws are painted by :mod:`ctbmd.simulate.spine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

#: Material ids of the label volume. Trabecular bone gets one id per level, from TRABECULAR_BASE.
AIR, SUBCUT_FAT, MUSCLE_WALL, VISCERAL_FAT, ORGAN, GAS, LUNG, PARASPINAL, PSOAS, AORTA, IVC, DISC, CANAL, \
    CORTICAL_SHELL, POSTERIOR_BONE, RIB, SACRUM, ILIUM, METAL = range(19)
#: Materials of the chest and variant phantoms (ids 19-31 are free for such additions).
CARTILAGE, FLAT_BONE, MYOCARDIUM, AIRWAY, STENT_WIRE, STENT_GRAFT = range(19, 25)
TRABECULAR_BASE = 32
MATERIAL_NAMES = {
    AIR: "air", SUBCUT_FAT: "subcutaneous fat", MUSCLE_WALL: "abdominal wall muscle", VISCERAL_FAT: "visceral fat",
    ORGAN: "organ soft tissue", GAS: "bowel gas", LUNG: "lung", PARASPINAL: "paraspinal muscle",
    PSOAS: "psoas muscle", AORTA: "aortic blood", IVC: "caval blood", DISC: "intervertebral disc",
    CANAL: "spinal canal", CORTICAL_SHELL: "cortical shell", POSTERIOR_BONE: "posterior elements",
    RIB: "rib", SACRUM: "sacrum", ILIUM: "ilium", METAL: "titanium implant",
    CARTILAGE: "costal or sacroiliac cartilage", FLAT_BONE: "sternum, clavicle, scapula, humerus",
    MYOCARDIUM: "myocardium", AIRWAY: "airway air", STENT_WIRE: "stent wire (partial volume)",
    STENT_GRAFT: "stent-graft fabric (partial volume)",
}

#: Nominal body height (mm), half-width (mm, left-right) and half-depth (mm, antero-posterior)
#: of each vertebral body, after Panjabi 1991/1992; the disc *below* each level (mm). T13, the
#: supernumerary thoracic vertebra of 13-rib spines, takes sizes between T12 and L1. C6-T9 are in
#: :mod:`ctbmd.simulate.thorax`.
BODY_SIZE = {
    "T10": (21.0, 19.0, 14.0), "T11": (22.0, 20.0, 15.0), "T12": (23.0, 21.0, 15.5),
    "T13": (24.0, 21.5, 15.8),
    "L1": (25.0, 22.0, 16.0), "L2": (26.0, 23.0, 16.5), "L3": (27.0, 24.0, 17.0),
    "L4": (27.0, 25.0, 17.0), "L5": (26.0, 26.0, 17.0), "L6": (25.0, 26.0, 17.0),
}
DISC_BELOW = {"T10": 6.0, "T11": 7.0, "T12": 8.0, "T13": 8.5, "L1": 9.0, "L2": 10.0, "L3": 10.0, "L4": 11.0,
              "L5": 10.0, "L6": 10.0}
#: Transverse-process reach from the midline (mm).
TRANSVERSE_REACH = {"T10": 32.0, "T11": 29.0, "T12": 25.0, "T13": 24.0, "L1": 35.0, "L2": 40.0, "L3": 45.0,
                    "L4": 43.0, "L5": 42.0, "L6": 42.0}
#: Rib length along its path (mm): T10 is a long false rib, T11/T12 are floating ribs; the ribs of a
#: T13 are short floating ribs (hypoplastic twelfth-rib size).
RIB_LENGTH = {"T10": 260.0, "T11": 190.0, "T12": 120.0, "T13": 70.0}
#: Posterior elements of C6-T9 (spinous-process caudal slope, its posterior reach in mm, posterior tilt
#: of the transverse processes), drawn only by chest phantoms: C6 has a short spinous process, C7
#: (vertebra prominens) and T1 long, nearly horizontal ones; mid-thoracic spinous processes point
#: steeply down, overlapping like roof tiles (~50 degrees below the horizontal at T5-T8); cervical
#: transverse processes point anterolaterally (Gray's Anatomy, 42nd ed., ch. 43; Panjabi 1991 SPL/SPI).
UPPER_POSTERIOR = {"C6": (0.3, 22.0, -0.4), "C7": (0.35, 32.0, -0.2), "T1": (0.45, 32.0, 0.9),
                   "T2": (0.6, 30.0, 0.9), "T3": (0.8, 28.0, 0.9), "T4": (1.0, 26.0, 0.9),
                   "T5": (1.2, 25.0, 0.9), "T6": (1.2, 25.0, 0.9), "T7": (1.2, 25.0, 0.9),
                   "T8": (1.1, 26.0, 0.9), "T9": (0.9, 28.0, 0.9)}
SACRUM_HEIGHT_MM = 60.0
SACRAL_ALA_REACH_MM = 55.0
#: Shapes of a vertebral compression fracture, after Genant et al., J Bone Miner Res 1993;8:1137
#: (doi 10.1002/jbmr.5650080915): ``wedge`` (anterior height lost, the superior endplate tilted
#: down toward the front), ``biconcave`` (middle height lost, both endplates cupped) and ``crush``
#: (every height lost, both endplates moved in).
FRACTURE_KINDS = ("wedge", "biconcave", "crush")


def shell_thickness_mm(pixel_mm: float) -> float:
    """Drawn thickness (mm) of the cortical shell: 1 mm, or 0.8 pixel if wider, so that it has no gaps."""
    return max(1.0, 0.8 * pixel_mm)


@dataclass(frozen=True)
class Vertebra:
    """One vertebra of the phantom, in LPS mm.

    ``centre`` is the centre of the vertebral body; ``frame`` holds the body's
    unit axes as rows (u: to the left, v: posterior, w: cranial along the
    column). ``height``, ``half_width`` and ``half_depth`` size the body (mm);
    ``height`` is the intact (posterior) height. ``fracture`` is None or
    ``(kind, loss)``: a compression fracture of :data:`FRACTURE_KINDS` that
    takes the fraction ``loss`` of the height (see :func:`fracture_endplates`).
    """

    level: str
    centre: np.ndarray
    frame: np.ndarray
    height: float
    half_width: float
    half_depth: float
    canal_radius: float
    ribs: bool
    fracture: tuple[str, float] | None = None

    def fractured_heights(self) -> dict[str, float]:
        """Anterior, middle and posterior body height (mm) as drawn, fracture included.

        Measured on the mid-sagittal line ``u = 0`` at the anterior edge ``v = -half_depth``, the
        middle of the depth ``v = -0.1 half_depth`` and the flat posterior wall ``v = 0.8 half_depth``.
        """
        out = {}
        b = self.half_depth
        for name, v in (("anterior", -b), ("middle", -0.1 * b), ("posterior", 0.8 * b)):
            bottom, top = fracture_endplates(self, np.zeros(1), np.array([v]))
            out[name] = float(top[0] - bottom[0])
        return out


@dataclass
class Anatomy:
    """Drawn sizes and positions of one phantom (all mm, LPS, before patient rotation)."""

    width: float
    depth: float
    subcut_fat: float
    vertebrae: list[Vertebra]
    sacrum_top: float
    z_min: float
    z_max: float
    column: tuple[np.ndarray, np.ndarray, np.ndarray]  # z samples, x(z), y(z)
    aorta_radius: float
    visceral_fat_share: float
    extras: dict = field(default_factory=dict)
    #: Chest field of view only: the :class:`ctbmd.simulate.thorax.ChestLayout` of the thorax.
    chest: object | None = None


def draw_anatomy(rng: np.random.Generator, levels: list[str], body_width_mm: float | None,
                 ribs_on: tuple[str, ...], disc_below_mm: dict[str, float] | None = None) -> Anatomy:
    """Draw torso size, spine curvature and vertebra sizes (mm) for ``levels`` (cranial first).

    Parameters
    ----------
    rng : numpy.random.Generator
        The phantom's seeded generator.
    levels : list of str
        Levels from top to bottom, e.g. ``["T10", ..., "L5"]``; the sacrum follows.
    body_width_mm : float, optional
        Left-right width of the torso; drawn from 280-400 mm when None.
    ribs_on : tuple of str
        Levels that carry a pair of ribs.
    disc_below_mm : dict, optional
        Nominal disc heights (mm) that replace :data:`DISC_BELOW` for the levels given, e.g. a thin
        rudimentary L5/S1 disc of a sacralised L5. The random draws are the same either way.
    """
    discs = {**DISC_BELOW, **(disc_below_mm or {})}
    width = float(body_width_mm) if body_width_mm else float(rng.uniform(280.0, 400.0))
    depth = width * float(rng.uniform(0.62, 0.78))
    subcut = float(np.clip(8.0 + 0.12 * (width - 250.0) + rng.normal(0.0, 3.0), 6.0, 45.0))
    scale = float(rng.uniform(0.92, 1.08))
    sizes = []
    for lv in levels:
        h, a, b = BODY_SIZE[lv]
        jitter = rng.uniform(0.96, 1.04, size=3)
        sizes.append((h * scale * jitter[0], a * scale * jitter[1], b * scale * jitter[2],
                      discs[lv] * scale * rng.uniform(0.9, 1.1)))
    total = sum(s[0] + s[3] for s in sizes)
    z_top = total / 2.0 + 12.0  # top of the volume; the column is centred on z = 0
    z = z_top - 12.0
    mids = []
    for h, _a, _b, d in sizes:
        mids.append(z - h / 2.0)
        z -= h + d
    sacrum_top = z
    z_min = sacrum_top - SACRUM_HEIGHT_MM * scale + 12.0
    # Column centre line: lumbar lordosis (anterior bulge), mild thoracic kyphosis, a sacrum that
    # turns posteriorly, and a small scoliosis. y is the vertebral-body centre.
    lordosis = float(rng.uniform(4.0, 14.0))
    scoliosis = float(rng.uniform(-6.0, 6.0))
    b_mean = float(np.mean([s[2] for s in sizes]))
    y_ref = depth / 2.0 - subcut - 62.0 * scale - b_mean
    zs = np.arange(z_min - 20.0, z_top + 20.0, 0.5)
    i_t12 = levels.index("T12") if "T12" in levels else 0
    z_hinge = mids[i_t12]
    span = max(z_hinge - sacrum_top, 1.0)
    t = np.clip((zs - sacrum_top) / span, 0.0, 1.0)
    ys = y_ref - lordosis * np.sin(np.pi * t)
    ys = ys + np.where(zs > z_hinge, 0.12 * (zs - z_hinge), 0.0)
    ys = ys + np.where(zs < sacrum_top, 0.55 * (sacrum_top - zs), 0.0)
    xs = scoliosis * np.sin(np.pi * (zs - zs[0]) / (zs[-1] - zs[0]))
    column = (zs, xs, ys)
    verts = []
    for lv, (h, a, b, _d), zc in zip(levels, sizes, mids):
        centre, frame = column_frame(column, zc)
        verts.append(Vertebra(lv, centre, frame, h, a, b, canal_radius=(8.0 if lv.startswith("T") else 9.5) * scale,
                              ribs=lv in ribs_on))
    vfat = float(np.clip(0.12 + 0.4 * (width - 250.0) / 200.0 + rng.normal(0, 0.05), 0.08, 0.6))
    return Anatomy(width=width, depth=depth, subcut_fat=subcut, vertebrae=verts, sacrum_top=sacrum_top,
                   z_min=z_min, z_max=z_top, column=column, aorta_radius=float(rng.uniform(9.0, 13.0)),
                   visceral_fat_share=vfat, extras={"scale": scale, "lordosis_mm": lordosis,
                                                    "scoliosis_mm": scoliosis})


def column_frame(column, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre point and local frame (rows u, v, w) of the column at height ``z`` (mm)."""
    zs, xs, ys = column
    x = float(np.interp(z, zs, xs))
    y = float(np.interp(z, zs, ys))
    dz = 2.0
    tan = np.array([np.interp(z + dz, zs, xs) - np.interp(z - dz, zs, xs),
                    np.interp(z + dz, zs, ys) - np.interp(z - dz, zs, ys), 2 * dz])
    w = tan / np.linalg.norm(tan)
    u = np.array([1.0, 0.0, 0.0]) - w[0] * w
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    return np.array([x, y, z]), np.vstack([u, v, w])


class Canvas:
    """A material-label volume on a voxel grid, painted shape by shape.

    Parameters
    ----------
    shape : tuple of int
        ``(nx, ny, nz)``.
    origin : tuple of float
        LPS mm of voxel (0, 0, 0).
    spacing : tuple of float
        Voxel size in mm along (x, y, z).
    rotation_deg : float
        Patient rotation about the z axis: anatomy coordinates are the world
        coordinates rotated by ``-rotation_deg``.
    """

    def __init__(self, shape, origin, spacing, rotation_deg: float = 0.0):
        self.mat = np.zeros(shape, dtype=np.uint8)
        self.level = np.zeros(shape, dtype=np.uint8)  # VerSe label of vertebral bone
        self.origin = np.asarray(origin, float)
        self.spacing = np.asarray(spacing, float)
        th = np.deg2rad(rotation_deg)
        self.rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])

    def world(self, p_anat: np.ndarray) -> np.ndarray:
        """Anatomy mm -> world (scanner) LPS mm; ``p_anat`` (..., 3)."""
        return p_anat @ self.rot.T

    def box_coords(self, lo_anat: np.ndarray, hi_anat: np.ndarray):
        """Index slices of the world box around an anatomy box, and the anatomy coordinates of its voxels.

        Returns ``(slices, X, Y, Z)`` or None when the box misses the grid; X, Y
        are ``(nx, ny, 1)`` and Z ``(1, 1, nz)`` arrays of anatomy mm that broadcast
        to the box shape.
        """
        corners = np.array([[a, b, c] for a in (lo_anat[0], hi_anat[0]) for b in (lo_anat[1], hi_anat[1])
                            for c in (lo_anat[2], hi_anat[2])])
        wc = self.world(corners)
        i0 = np.floor((wc.min(0) - self.origin) / self.spacing).astype(int)
        i1 = np.ceil((wc.max(0) - self.origin) / self.spacing).astype(int) + 1
        i0 = np.maximum(i0, 0)
        i1 = np.minimum(i1, self.mat.shape)
        if np.any(i1 <= i0):
            return None
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        gx = self.origin[0] + self.spacing[0] * np.arange(i0[0], i1[0])
        gy = self.origin[1] + self.spacing[1] * np.arange(i0[1], i1[1])
        gz = self.origin[2] + self.spacing[2] * np.arange(i0[2], i1[2])
        # inverse rotation (about z): anat = R^T world
        r = self.rot
        X = r[0, 0] * gx[:, None, None] + r[1, 0] * gy[None, :, None]  # (nx, ny, 1)
        Y = r[0, 1] * gx[:, None, None] + r[1, 1] * gy[None, :, None]
        Z = gz[None, None, :]  # (1, 1, nz)
        return sl, X, Y, Z

    def local_box(self, centre: np.ndarray, frame: np.ndarray, half_extent: np.ndarray):
        """Voxels around a local frame: ``(slices, u, v, w)`` in mm along the frame's rows, or None.

        ``half_extent`` (mm, along u, v, w) sizes the box; u, v, w broadcast to the box shape.
        """
        reach = np.abs(frame.T) @ half_extent
        box = self.box_coords(centre - reach, centre + reach)
        if box is None:
            return None
        sl, X, Y, Z = box
        return (sl, *_local(X, Y, Z, centre, frame))

    def paint(self, sl, mask: np.ndarray, material: int, level: int | None = None) -> None:
        """Set ``material`` (and optionally the vertebra label) where ``mask`` is true inside box ``sl``."""
        view = self.mat[sl]
        view[mask] = material
        if level is not None:
            self.level[sl][mask] = level

    def stamp_tube(self, points_anat: np.ndarray, radius: float, material: int, level: int | None = None) -> None:
        """Paint balls of ``radius`` mm centred on each anatomy point (a tube along a sampled path)."""
        pts = self.world(points_anat)
        r_vox = np.ceil(radius / self.spacing).astype(int)
        for p in pts:
            c = np.round((p - self.origin) / self.spacing).astype(int)
            lo = np.maximum(c - r_vox, 0)
            hi = np.minimum(c + r_vox + 1, self.mat.shape)
            if np.any(hi <= lo):
                continue
            gx = (np.arange(lo[0], hi[0]) * self.spacing[0] + self.origin[0] - p[0])[:, None, None]
            gy = (np.arange(lo[1], hi[1]) * self.spacing[1] + self.origin[1] - p[1])[None, :, None]
            gz = (np.arange(lo[2], hi[2]) * self.spacing[2] + self.origin[2] - p[2])[None, None, :]
            m = gx * gx + gy * gy + gz * gz <= radius * radius
            self.paint(tuple(slice(a, b) for a, b in zip(lo, hi)), m, material, level)


def _local(X, Y, Z, centre, frame):
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    u = frame[0, 0] * dx + frame[0, 1] * dy + frame[0, 2] * dz
    v = frame[1, 0] * dx + frame[1, 1] * dy + frame[1, 2] * dz
    w = frame[2, 0] * dx + frame[2, 1] * dy + frame[2, 2] * dz
    return u, v, w


def paint_torso(canvas: Canvas, anat: Anatomy, rng: np.random.Generator) -> None:
    """Paint air, subcutaneous fat, abdominal wall, viscera (fat/organs/gas), lungs and muscles."""
    nx, ny, nz = canvas.mat.shape
    lo = canvas.origin
    hi = canvas.origin + canvas.spacing * (np.array(canvas.mat.shape) - 1)
    pad = 60.0
    res = canvas.box_coords(np.array([lo[0] - pad, lo[1] - pad, lo[2]]), np.array([hi[0] + pad, hi[1] + pad, hi[2]]))
    sl, X, Y, Z = res
    X2, Y2 = X[:, :, 0], Y[:, :, 0]
    a, b = anat.width / 2.0, anat.depth / 2.0
    # torso: a rounded rectangle-ish superellipse, flatter at the back
    r_out = np.abs(X2 / a) ** 2.4 + np.abs(Y2 / b) ** 2.2
    t = anat.subcut_fat
    r_in = np.abs(X2 / (a - t)) ** 2.4 + np.abs(Y2 / (b - t)) ** 2.2
    r_cav = np.abs(X2 / (a - t - 8.0)) ** 2.4 + np.abs(Y2 / (b - t - 8.0)) ** 2.2
    plane = np.full(X2.shape, AIR, np.uint8)
    plane[r_out <= 1] = SUBCUT_FAT
    plane[r_in <= 1] = MUSCLE_WALL
    plane[r_cav <= 1] = ORGAN
    cavity = r_cav <= 1
    canvas.mat[:] = plane[:, :, None]
    # visceral fat: a smooth random field thresholded to the drawn share, inside the cavity
    coarse = rng.standard_normal((max(4, nx // 8), max(4, ny // 8), max(4, nz // 8)))
    coarse = ndi.gaussian_filter(coarse, 1.5).astype(np.float32)
    field_ = ndi.zoom(coarse, np.array(canvas.mat.shape) / np.array(coarse.shape), order=1,
                      grid_mode=True, mode="nearest")[:nx, :ny, :nz]
    cav3 = np.broadcast_to(cavity[:, :, None], canvas.mat.shape)
    thr = np.quantile(field_[cav3], 1.0 - anat.visceral_fat_share) if cav3.any() else 0
    canvas.mat[cav3 & (field_ > thr)] = VISCERAL_FAT
    # bowel gas: a few ellipsoids in the anterior cavity below T12
    z_t12 = next((v.centre[2] for v in anat.vertebrae if v.level == "T12"), anat.z_max)
    for _ in range(int(rng.integers(3, 7))):
        c = np.array([rng.uniform(-a * 0.5, a * 0.5), rng.uniform(-b * 0.7, -b * 0.1),
                      rng.uniform(anat.z_min + 20, z_t12)])
        r = rng.uniform(8.0, 22.0, size=3)
        box = canvas.box_coords(c - r, c + r)
        if box is None:
            continue
        s2, Xb, Yb, Zb = box
        m = ((Xb - c[0]) / r[0]) ** 2 + ((Yb - c[1]) / r[1]) ** 2 + ((Zb - c[2]) / r[2]) ** 2 <= 1
        m &= np.broadcast_to(cavity[s2[0], s2[1]][:, :, None], m.shape)
        canvas.paint(s2, m, GAS)
    # lungs: posterolateral cavity above a dome that rises anteriorly, from about the T12 level
    zs, xs_c, ys_c = anat.column
    y_sp = float(np.interp(z_t12, zs, ys_c))
    dome = z_t12 + 15.0 + 0.35 * np.clip(y_sp - Y2, 0, None)
    lung2 = cavity & (np.abs(X2) > 40.0) & (Y2 > y_sp - 0.9 * b)
    Zc = Z[0, 0, :]
    canvas.mat[(lung2[:, :, None] & (Zc[None, None, :] > dome[:, :, None]))] = LUNG
    # paraspinal muscles and psoas follow the column
    for k in range(nz):
        zc = Zc[k]
        xc = float(np.interp(zc, zs, xs_c))
        yc = float(np.interp(zc, zs, ys_c))
        vb = _nearest_vertebra(anat, zc)
        back = ((Y2 > yc + vb.half_depth * 0.6) & (np.abs(X2 - xc) < 75.0) & (r_in <= 1)
                & (((X2 - xc) / 75.0) ** 2 + ((Y2 - (yc + vb.half_depth + 45.0)) / 55.0) ** 2 <= 1.0))
        canvas.mat[:, :, k][back & (canvas.mat[:, :, k] != LUNG)] = PARASPINAL
        if zc < z_t12 - 10.0 and zc > anat.sacrum_top - 5.0:
            frac = np.clip((z_t12 - 10.0 - zc) / max(z_t12 - anat.sacrum_top, 1.0), 0, 1)
            rp = 6.0 + 16.0 * frac
            for side in (-1, 1):
                cx = xc + side * (vb.half_width + rp + 1.0)
                cy = yc + 0.1 * vb.half_depth
                canvas.mat[:, :, k][((X2 - cx) / rp) ** 2 + ((Y2 - cy) / (rp * 0.9)) ** 2 <= 1] = PSOAS
        # great vessels anterior of the column; the aorta bifurcates at L4
        z_bif = next((v.centre[2] for v in anat.vertebrae if v.level == "L4"), anat.z_min)
        yv = yc - vb.half_depth - anat.aorta_radius - 3.0
        if zc >= z_bif:
            canvas.mat[:, :, k][(X2 - xc - 12.0) ** 2 + (Y2 - yv) ** 2 <= anat.aorta_radius ** 2] = AORTA
        else:
            off = 12.0 + 0.8 * (z_bif - zc)
            for side in (-1, 1):
                canvas.mat[:, :, k][(X2 - xc - side * off) ** 2 + (Y2 - yv) ** 2 <= 6.5 ** 2] = AORTA
        canvas.mat[:, :, k][(X2 - xc + 22.0) ** 2 + ((Y2 - yv - 2.0) / 0.8) ** 2 <= 11.0 ** 2] = IVC


def _nearest_vertebra(anat: Anatomy, z: float) -> Vertebra:
    return min(anat.vertebrae, key=lambda v: abs(v.centre[2] - z))


def fracture_endplates(vb: Vertebra, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inferior and superior endplate heights ``w`` (mm, along the body's axis) at ``(u, v)`` (mm).

    Intact: ``-h/2`` and ``h/2``. With ``vb.fracture = (kind, f)`` (``h`` the intact height, ``b``
    the half-depth; the body runs from ``v = -b`` in front to its flat posterior wall at
    ``v = 0.8 b``):

    * ``wedge``: the superior endplate falls linearly from the posterior wall to the front, where the
      height is ``(1 - f) h`` (anterior loss ``f`` against the posterior height, Genant's wedge);
    * ``biconcave``: both endplates cup in by ``f h / 2`` at the middle of the body, as a paraboloid
      that meets the intact endplate at the body's edge (middle loss ``f``);
    * ``crush``: both endplates move in by ``f h / 2`` everywhere (every height lost by ``f``).

    ``u`` and ``v`` broadcast together; the results have their shape.
    """
    h, a, b = vb.height, vb.half_width, vb.half_depth
    shape = np.broadcast(u, v).shape
    bottom, top = np.full(shape, -h / 2.0), np.full(shape, h / 2.0)
    if vb.fracture is None:
        return bottom, top
    kind, f = vb.fracture
    if kind == "wedge":
        top = top - f * h * np.clip((0.8 * b - v) / (1.8 * b), 0.0, 1.0)
    elif kind == "biconcave":
        cup = f * h / 2.0 * np.clip(1.0 - (u / a) ** 2 - ((v + 0.1 * b) / (0.9 * b)) ** 2, 0.0, 1.0)
        bottom, top = bottom + cup, top - cup
    elif kind == "crush":
        bottom, top = bottom + f * h / 2.0, top - f * h / 2.0
    else:
        raise ValueError(f"fracture kind must be one of {', '.join(FRACTURE_KINDS)}, not {kind!r}")
    return np.broadcast_to(bottom, shape), np.broadcast_to(top, shape)
