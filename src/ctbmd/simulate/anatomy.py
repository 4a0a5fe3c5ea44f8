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


def paint_vertebra(canvas: Canvas, vb: Vertebra, material_trab: int, label: int, reach: float,
                   shell_mm: float) -> None:
    """Paint one vertebra: cortical shell, trabecular core, pedicles, arch, spinous and transverse processes.

    A fractured body (``vb.fracture``) is drawn between its :func:`fracture_endplates`; what the
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
