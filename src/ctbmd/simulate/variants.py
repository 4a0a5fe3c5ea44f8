"""Variant anatomy: a segmented sacrum, lumbosacral transitional vertebrae and an aortic stent graft.

Coordinates are LPS millimetres (anatomy frame), volumes ``(nx, ny, nz)`` (see
:mod:`ctbmd.simulate.anatomy`). Random draws come from the variant generator
(``np.random.default_rng([seed, 11])``), so that a variant leaves the phantom's other draws alone.

* **Sacrum** (:func:`paint_segmented_sacrum`): five fused segments along the sacral curve, each with
  its own body (S1 ~28 mm high, tapering to S5), with rudimentary disc remnants between S1/S2 and S2/S3
  (a thin, faint line: ~1.2 and ~0.8 mm of disc tissue over the central endplate, an ossified rim
  around it; such remnants persist into adult life, Gray's Anatomy 42nd ed., ch. 44), alae on S1-S2,
  a sacral canal, sacroiliac joints (~2.5 mm of cartilage; normal SI joint width on CT 2-4 mm) and the
  ilia lateral of the alae.
* **Lumbosacral transitional vertebrae** (Castellvi et al., Spine 1984;9:493; prevalence ~4-30 %,
  Konin & Walz, AJNR 2010;31:1778): a *lumbarised S1* is a mobile sixth lumbar-shaped vertebra
  (truth label L6, VerSe 25) with a full disc below, the sacrum starting one segment lower (its first
  segment S2-sized with smaller alae); a *sacralised L5* (Castellvi III) keeps its label L5 (VerSe 24)
  but its transverse processes widen into ala-like plates fused with the sacral alae (both sides, or
  one at random), and its disc with the sacrum is absent or a thin rudimentary sliver. A labeller that
  counts up from the "sacrum" then finds four lumbar vertebrae.
* **Stent graft** (:func:`paint_stent_graft`): nitinol (Ni 55 %, Ti 45 % by mass, 6.45 g/cm^3)
  zig-zag rings, wire 0.4-0.8 mm, 5-8 peaks, rings every 14-20 mm, on a polyester (PET, 1.38 g/cm^3,
  ~0.15 mm) tube, as in thoracic and abdominal endografts (e.g. Gore TAG, Medtronic Valiant, Cook
  Zenith). Wires far thinner than a voxel are rasterised one voxel wide with the metal's true volume
  fraction in that voxel (partial volume), which reads thousands of HU at 1-3 mm voxels.
"""

from __future__ import annotations

import numpy as np

from ctbmd.simulate import anatomy as an
from ctbmd.simulate import spine
from ctbmd.types import VERSE_LABELS

#: Body heights (mm, along the sacral curve) of S1-S5 and the scale of each segment's body
#: half-width and half-depth relative to S1.
SACRAL_HEIGHT_MM = (28.0, 22.0, 18.0, 14.0, 11.0)
SACRAL_WIDTH_SCALE = (1.0, 0.82, 0.62, 0.45, 0.3)
SACRAL_DEPTH_SCALE = (1.0, 0.8, 0.65, 0.5, 0.4)
#: Rudimentary disc remnant (mm) below S1, S2, S3, S4.
SACRAL_REMNANT_MM = (1.2, 0.8, 0.0, 0.0)
SI_JOINT_MM = 2.5
#: Nominal L5/S1 disc (mm) of a sacralised L5: a thin rudimentary sliver (0 = absent).
SACRALISED_DISC_MM = 1.5


def _frame_at(anat: an.Anatomy, z: float):
    return an.column_frame(anat.column, z)


def sacral_segments(anat: an.Anatomy, scale: float, first: int = 1) -> list[dict]:
    """Centres, frames and sizes of the sacral segments from ``first`` (1 = S1) to S5 along the column.

    The column below ``anat.sacrum_top`` turns posteriorly (the sacral curve), so each segment's
    frame is taken at its own centre. Returns one dict per segment: ``name``, ``centre`` (3,),
    ``frame`` (3, 3), ``height``, ``half_width``, ``half_depth`` (mm), ``remnant_below`` (mm).
    """
    last = anat.vertebrae[-1]
    a1, b1 = 0.95 * last.half_width, 0.95 * last.half_depth
    z = anat.sacrum_top
    out = []
    for k in range(first - 1, 5):
        h = SACRAL_HEIGHT_MM[k] * scale
        # step down along the curve: ~h / 1.14 in z for the 0.55 mm/mm posterior slope of the column
        _c, f = _frame_at(anat, z - h / 2.0)
        cos_w = abs(f[2][2])
        zc = z - h / 2.0 * cos_w
        centre, frame = _frame_at(anat, zc)
        out.append({"name": f"S{k + 1}", "centre": centre, "frame": frame, "height": h,
                    "half_width": a1 * SACRAL_WIDTH_SCALE[k], "half_depth": b1 * SACRAL_DEPTH_SCALE[k],
                    "remnant_below": SACRAL_REMNANT_MM[k] * scale if k < 4 else 0.0})
        z = zc - (h / 2.0 + (SACRAL_REMNANT_MM[k] if k < 4 else 0.0) * scale) * cos_w
    return out


def paint_segmented_sacrum(canvas: an.Canvas, anat: an.Anatomy, scale: float, first: int = 1,
                           ala_scale: float = 1.0) -> list[dict]:
    """Paint the sacrum as fused segments (VerSe 26), alae, canal, SI joints and ilia.

    Parameters
    ----------
    canvas : Canvas
        Label volume, painted in place.
    anat : Anatomy
        Abdomen anatomy; the sacrum starts at ``anat.sacrum_top``.
    scale : float
        The phantom's size factor.
    first : int
        First sacral segment drawn: 1, or 2 when S1 is lumbarised (drawn as L6 instead).
    ala_scale : float
        Lateral reach of the alae relative to :data:`ctbmd.simulate.anatomy.SACRAL_ALA_REACH_MM`.

    Returns
    -------
    list of dict
        The segments (see :func:`sacral_segments`).
    """
    segs = sacral_segments(anat, scale, first)
    for seg in segs:
        _paint_sacral_body(canvas, seg)
    reach = an.SACRAL_ALA_REACH_MM * scale * ala_scale
    lateral = _paint_alae_and_canal(canvas, anat, segs, reach)
    if lateral is not None:
        _paint_ilia(canvas, anat, segs[0], reach, lateral)
    return segs


def _paint_sacral_body(canvas: an.Canvas, seg: dict) -> None:
    """One segment's body, and below it the fused disc: an ossified rim around a thin remnant."""
    a, b, h = seg["half_width"], seg["half_depth"], seg["height"]
    box = canvas.local_box(seg["centre"], seg["frame"], np.array([a + 5.0, b + 20.0, h / 2.0 + 6.0]))
    if box is None:
        return
    sl, u, v, w = box
    ell = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    canvas.paint(sl, ell & (np.abs(w) <= h / 2.0) & (v <= 0.85 * b), an.SACRUM, 26)
    gap = seg["remnant_below"]
    if gap > 0:
        band = (w < -h / 2.0) & (w >= -h / 2.0 - gap - 0.3) & (v <= 0.85 * b)
        canvas.paint(sl, band & ell, an.SACRUM, 26)
        core = (u / (0.7 * a)) ** 2 + (v / (0.7 * b)) ** 2 <= 1.0
        canvas.paint(sl, band & core, an.DISC, 0)


def _paint_alae_and_canal(canvas, anat, segs, reach):
    """Alae (lateral masses of the first two segments) and the sacral canal, in the first segment's
    frame; returns the alae's lateral reach over that frame's box (None when off the grid)."""
    s1 = segs[0]
    centre, frame = s1["centre"], s1["frame"]
    b, h = s1["half_depth"], s1["height"]
    span = sum(sg["height"] for sg in segs[:2]) + 4.0
    box = canvas.local_box(centre, frame, np.array([reach + 30.0, b + 60.0, span + 20.0]))
    if box is None:
        return None
    sl, u, v, w = box
    top = h / 2.0 - 3.0 - 0.12 * np.abs(u)
    bottom = h / 2.0 - span
    lateral = reach * np.clip(1.0 - 0.35 * (top - w) / span, 0.6, 1.0)
    # keep a 3 mm joint space below the last lumbar vertebra (its facets and arch end at its inferior
    # endplate): the alae rise posteriorly with the sacral tilt
    last = anat.vertebrae[-1]
    f5 = last.frame[2]
    w_last = (centre - last.centre) @ f5 + u * (frame[0] @ f5) + v * (frame[1] @ f5) + w * (frame[2] @ f5)
    below_last = w_last < -last.height / 2.0 - 3.0
    ala = (np.abs(u) <= lateral) & (v >= -0.45 * b) & (v <= b + 16.0) & (w <= top) & (w >= bottom) & below_last
    canvas.paint(sl, ala & (canvas.mat[sl] != an.DISC), an.SACRUM, 26)
    rc = 0.75 * last.canal_radius
    vc = 0.85 * b + rc + 1.0
    canal = (u * u + (v - vc) ** 2 <= rc * rc) & (w <= h / 2.0 + 2.0) & (w >= bottom)
    canvas.paint(sl, canal, an.CANAL, 0)
    return (sl, u, v, w, lateral, bottom)


def _paint_ilia(canvas, anat, s1, reach, ala):
    """Sacroiliac joints (cartilage) and the ilia: an auricular block lateral of each ala, then the
    iliac wing (:func:`ctbmd.simulate.spine.paint_iliac_wing`)."""
    sl, u, v, w, lateral, bottom = ala
    centre, frame, b, h = s1["centre"], s1["frame"], s1["half_depth"], s1["height"]
    auric = (w <= h / 2.0 + 10.0) & (w >= bottom - 8.0) & (v >= -0.3 * b) & (v <= b + 26.0)
    joint = (np.abs(u) > lateral) & (np.abs(u) <= lateral + SI_JOINT_MM) & auric & (v <= b + 14.0)
    canvas.paint(sl, joint, an.CARTILAGE, 0)
    canvas.paint(sl, (np.abs(u) > lateral + SI_JOINT_MM) & (np.abs(u) <= lateral + 22.0) & auric, an.ILIUM, 0)
    for side in (-1, 1):
        spine.paint_iliac_wing(canvas, centre + frame[0] * side * (reach + 14.0) + frame[1] * (b + 10.0), side,
                            anat.vertebrae[-1].centre[2], start_mm=-8.0, spare=(an.SACRUM, an.CARTILAGE))


def paint_sacralised_l5(canvas: an.Canvas, anat: an.Anatomy, reach: float, sides: tuple[int, ...],
                        remnant_fraction: float) -> None:
    """Fuse the last lumbar vertebra (L5) with the sacrum below it.

    The thin L5/S1 gap is bone (VerSe 26) except, when ``remnant_fraction`` > 0, a central disc sliver
    over that fraction of the endplate; on each side in ``sides`` (-1 right, 1 left) the transverse
    process widens into an ala-like plate (VerSe 24 above the former disc, 26 below) fused with the
    sacral ala.

    Parameters
    ----------
    canvas : Canvas
        Label volume, painted in place (after the sacrum).
    anat : Anatomy
        Abdomen anatomy; its last vertebra is the sacralised L5.
    reach : float
        Lateral reach (mm) of the sacral alae the plates fuse with.
    sides : tuple of int
        Sides with a fused plate.
    remnant_fraction : float
        Fraction (0-1) of the endplate ellipse left as disc; 0 = no disc at all.
    """
    l5 = anat.vertebrae[-1]
    h, a, b, rc = l5.height, l5.half_width, l5.half_depth, l5.canal_radius
    gap = max(0.0, (l5.centre[2] - h / 2.0) - anat.sacrum_top)
    box = canvas.local_box(l5.centre, l5.frame, np.array([reach + 10.0, b + 40.0, h / 2.0 + gap + 30.0]))
    if box is None:
        return
    sl, u, v, w = box
    ell = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    band = (w < -h / 2.0 + 0.5) & (w >= -h / 2.0 - gap - 1.5) & (v <= 0.8 * b) & ell
    view = canvas.mat[sl]
    free = (view < an.TRABECULAR_BASE) & (view != an.CORTICAL_SHELL)
    canvas.paint(sl, band & free & (w < -h / 2.0), an.SACRUM, 26)
    if remnant_fraction > 0:
        f = remnant_fraction
        core = (u / (a * f)) ** 2 + (v / (b * f)) ** 2 <= 1.0
        canvas.paint(sl, band & core & (w < -h / 2.0) & (w > -h / 2.0 - gap), an.DISC, 0)
    for side in sides:
        top = 0.25 * h - 0.3 * np.clip(np.abs(u) - rc, 0.0, None)  # a wing that widens downward
        plate = (u * side >= rc + 3.0) & (u * side <= 0.95 * reach) & (v >= -0.35 * b) & (v <= b + 14.0) \
            & (w <= top) & (w >= -h / 2.0 - gap - 14.0) & ~ell
        upper = plate & (w >= -h / 2.0 - gap / 2.0)
        canvas.paint(sl, upper, an.POSTERIOR_BONE, VERSE_LABELS[l5.level])
        canvas.paint(sl, plate & ~upper, an.SACRUM, 26)


def abdominal_aorta_line(anat: an.Anatomy, z_top: float, z_bottom: float) -> np.ndarray:
    """(m, 4) centre line (x, y, z, radius; anatomy mm) of the abdominal aorta between two heights,
    as :func:`ctbmd.simulate.anatomy.paint_torso` draws it (left-anterior of the column)."""
    zs_c, xs_c, ys_c = anat.column
    zs = np.arange(z_top, z_bottom, -0.5)
    pts = []
    for z in zs:
        vb = min(anat.vertebrae, key=lambda v: abs(v.centre[2] - z))
        xc, yc = float(np.interp(z, zs_c, xs_c)), float(np.interp(z, zs_c, ys_c))
        pts.append([xc + 12.0, yc - vb.half_depth - anat.aorta_radius - 3.0, z, anat.aorta_radius])
    return np.array(pts)


def _frames(line: np.ndarray):
    t = np.gradient(line[:, :3], axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ref = np.where(np.abs(t[:, 2:3]) > 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]))
    n1 = np.cross(t, ref)
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 = np.cross(t, n1)
    return t, n1, n2


def _rasterise(canvas: an.Canvas, pts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique voxel indices (tuple of 3 arrays) nearest to anatomy points ``pts`` (k, 3), inside the grid."""
    idx = np.round((canvas.world(pts) - canvas.origin) / canvas.spacing).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(canvas.mat.shape)), axis=1)
    idx = np.unique(idx[ok], axis=0)
    return tuple(idx.T)


def paint_stent_graft(canvas: an.Canvas, line: np.ndarray, rng: np.random.Generator) -> dict:
    """Paint a stent graft (nitinol zig-zag rings on a fabric tube) inside the vessel along ``line``.

    Parameters
    ----------
    canvas : Canvas
        Label volume, painted in place: wires become ``STENT_WIRE``, fabric ``STENT_GRAFT``.
    line : numpy.ndarray
        (m, 4) vessel centre line (x, y, z, lumen radius; anatomy mm, ~0.5-1 mm steps), proximal first.
    rng : numpy.random.Generator
        The variant generator (wire, rings).

    Returns
    -------
    dict
        ``wire_fill`` and ``graft_fill`` (metal and fabric volume fraction of their voxels, for the
        attenuation), and the truth: ``metal``, ``wire_diameter_mm``, ``rings``, ``peaks_per_ring``,
        ``ring_pitch_mm``, ``radius_mm``, ``length_mm``, ``proximal_anat_mm``/``distal_anat_mm`` and
        ``centre_anat_mm`` (the centre line every ~10 mm, (k, 3)).
    """
    d = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(line[:, :3], axis=0), axis=1))]
    length = float(d[-1])
    t, n1, n2 = _frames(line)
    wire = float(rng.uniform(0.4, 0.8))
    pitch = float(rng.uniform(14.0, 20.0))
    amp = float(rng.uniform(0.55, 0.75)) * pitch
    peaks = int(rng.integers(5, 9))
    radius = float(np.median(line[:, 3])) - 0.3
    step = 0.25 * float(canvas.spacing.min())

    def at(s, arr):
        return np.stack([np.interp(s, d, arr[:, i]) for i in range(arr.shape[1])], axis=-1)

    rings, wire_len = [], 0.0
    centres = np.arange(amp / 2.0 + 1.0, length - amp / 2.0, pitch)
    n_psi = int(np.ceil(2 * np.pi * radius * 1.6 / step))
    psi = np.linspace(0.0, 2 * np.pi, n_psi, endpoint=False)
    frac = psi * peaks / (2 * np.pi)
    tri = 2.0 * np.abs(2.0 * (frac - np.floor(frac + 0.5))) - 1.0
    for sc in centres:
        s = sc + amp / 2.0 * tri
        c, a1, a2 = at(s, line[:, :3]), at(s, n1), at(s, n2)
        pts = c + radius * (np.cos(psi)[:, None] * a1 + np.sin(psi)[:, None] * a2)
        rings.append(pts)
        wire_len += float(np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1).sum())
    s_all = np.arange(0.0, length, step)
    n_g = int(np.ceil(2 * np.pi * radius / step))
    ps = np.linspace(0.0, 2 * np.pi, n_g, endpoint=False)
    c, a1, a2 = at(s_all, line[:, :3]), at(s_all, n1), at(s_all, n2)
    fabric = (c[:, None, :] + (radius + 0.3) * (np.cos(ps)[None, :, None] * a1[:, None, :]
                                                + np.sin(ps)[None, :, None] * a2[:, None, :])).reshape(-1, 3)
    g_idx = _rasterise(canvas, fabric)
    w_idx = _rasterise(canvas, np.vstack(rings)) if rings else (np.array([], int),) * 3
    canvas.mat[g_idx] = an.STENT_GRAFT
    canvas.mat[w_idx] = an.STENT_WIRE
    v_vox = float(np.prod(canvas.spacing))
    n_wire = max(len(w_idx[0]), 1)
    n_graft = max(int(np.sum(canvas.mat[g_idx] == an.STENT_GRAFT)), 1)
    wire_fill = min(1.0, np.pi * wire ** 2 / 4.0 * wire_len / (n_wire * v_vox))
    graft_fill = min(1.0, 0.15 * 2 * np.pi * radius * length / (n_graft * v_vox))
    return {"wire_fill": wire_fill, "graft_fill": graft_fill, "metal": "nitinol",
            "wire_diameter_mm": round(wire, 3), "rings": len(rings), "peaks_per_ring": peaks,
            "ring_pitch_mm": round(pitch, 2), "radius_mm": round(radius, 2), "length_mm": round(length, 1),
            "proximal_anat_mm": line[0, :3], "distal_anat_mm": line[-1, :3],
            "centre_anat_mm": at(np.linspace(0.0, length, max(2, int(np.ceil(length / 10.0)) + 1)), line[:, :3])}
