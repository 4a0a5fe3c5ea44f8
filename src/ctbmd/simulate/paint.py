"""Painting the anatomy of a phantom onto its canvas: the abdomen (:func:`paint_abdomen`) and the chest
(:func:`paint_chest`) fields of view, with their variants.

Each keeps the order of its random draws: the same seed gives the same phantom.
"""

from __future__ import annotations

import numpy as np

from ctbmd.simulate import anatomy as an
from ctbmd.simulate import chest_paint, chest_wall, spine, thorax, variants
from ctbmd.types import VERSE_LABELS


def paint_abdomen(canvas, anat, spec, rng, vrng, shell, sacral_disc) -> dict:
    """Paint the abdomen phantom; the default options take exactly the original steps and draws.

    Parameters
    ----------
    canvas : ctbmd.simulate.anatomy.Canvas
        Painted in place.
    anat : ctbmd.simulate.anatomy.Anatomy
        From :func:`ctbmd.simulate.anatomy.draw_anatomy`.
    spec : ctbmd.simulate.spec.PhantomSpec
    rng, vrng : numpy.random.Generator
        The anatomy's generator and the variants' (``default_rng([seed, 11])``).
    shell : float
        Cortical shell thickness (mm).
    sacral_disc : float or None
        Height (mm) of a sacralised L5's disc remnant (0: none), None without that variant.

    Returns
    -------
    dict
        What the truth needs beyond ``anat``: ``rib_length_mm``, ``discs``,
        ``sacralised_sides`` and, with a stent, ``stent``.
    """
    levels = [vb.level for vb in anat.vertebrae]
    scale = anat.extras["scale"]
    transition = spec.drawn_transition()
    an.paint_torso(canvas, anat, rng)
    reach = {lv: an.TRANSVERSE_REACH[lv] * scale for lv in levels}
    for i, vb in enumerate(anat.vertebrae):
        spine.paint_vertebra(canvas, vb, an.TRABECULAR_BASE + i, VERSE_LABELS[vb.level], reach[vb.level], shell)
    discs = []
    for i, vb in enumerate(anat.vertebrae):
        last = i + 1 == len(anat.vertebrae)
        below_top = anat.vertebrae[i + 1].centre[2] + anat.vertebrae[i + 1].height / 2.0 if not last \
            else anat.sacrum_top
        z_top = vb.centre[2] - vb.height / 2.0
        kind = "normal"
        if last and transition == "sacralised_l5":
            kind = "remnant" if sacral_disc else "absent"
        else:
            spine.paint_disc(canvas, vb, below_top, anat)
        discs.append({"above": vb.level, "below": "sacrum" if last else anat.vertebrae[i + 1].level,
                      "centre_anat_mm": an.column_frame(anat.column, (z_top + below_top) / 2.0)[0],
                      "height_mm": z_top - below_top, "kind": kind})
    sides: tuple[int, ...] = ()
    if spec.drawn_sacrum() == "simple":
        spine.paint_sacrum_and_pelvis(canvas, anat, scale)
    else:
        lumbarised = transition == "lumbarised_s1"
        ala = 0.85 if lumbarised else 1.0
        segs = variants.paint_segmented_sacrum(canvas, anat, scale, first=2 if lumbarised else 1, ala_scale=ala)
        for upper, lower in zip(segs, segs[1:]):
            if upper["remnant_below"] > 0 and upper["name"] in ("S1", "S2"):
                bottom = upper["centre"] - upper["frame"][2] * upper["height"] / 2.0
                discs.append({"above": upper["name"], "below": lower["name"], "centre_anat_mm": bottom
                              - upper["frame"][2] * upper["remnant_below"] / 2.0,
                              "height_mm": upper["remnant_below"], "kind": "sacral_remnant"})
        if transition == "sacralised_l5":
            draw = vrng.uniform()
            sides = (-1, 1) if draw < 0.5 else ((-1,) if draw < 0.75 else (1,))
            variants.paint_sacralised_l5(canvas, anat, an.SACRAL_ALA_REACH_MM * scale * ala, sides,
                                         0.55 if sacral_disc else 0.0)
    rib_len = {}
    for vb in anat.vertebrae:
        if vb.ribs:
            for side in (-1, 1):
                path = spine.rib_path(vb, side, reach[vb.level], an.RIB_LENGTH[vb.level] * scale, anat)
                if vb.level == "T12" and spec.t12_rib_length_mm is not None:
                    path = chest_wall.cut_path(path, float(spec.t12_rib_length_mm))
                canvas.stamp_tube(path, 5.0, an.RIB)
                rib_len[vb.level] = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
    if spec.metal_level:
        spine.paint_screws(canvas, next(v for v in anat.vertebrae if v.level == spec.metal_level))
    out = {"rib_length_mm": rib_len, "discs": discs, "sacralised_sides": sides}
    if spec.stent:
        z_top = next(v for v in anat.vertebrae if v.level == "L1").centre[2] - 5.0 * scale
        z_bif = next((v.centre[2] for v in anat.vertebrae if v.level == "L4"), anat.z_min)
        z_len = float(vrng.uniform(70.0, 100.0)) * scale
        line = variants.abdominal_aorta_line(anat, z_top, max(z_bif + 6.0, z_top - z_len))
        out["stent"] = variants.paint_stent_graft(canvas, line, vrng)
    return out


def paint_chest(canvas, anat, spec, rng, vrng, shell) -> dict:
    """Paint the chest phantom: soft tissue, column, discs, ribs, sternum, shoulder girdle, variants.

    Parameters and returns as :func:`paint_abdomen` (``anat`` from
    :func:`ctbmd.simulate.thorax.draw_chest_anatomy`).
    """
    lay = anat.chest
    scale = anat.extras["scale"]
    verts = anat.vertebrae
    chest_paint.paint_chest_soft_tissue(canvas, anat, rng)
    reach = {vb.level: thorax.transverse_reach(vb.level) * scale for vb in verts}
    for i, vb in enumerate(verts):
        spine.paint_vertebra(canvas, vb, an.TRABECULAR_BASE + i, VERSE_LABELS[vb.level], reach[vb.level], shell)
    discs = []
    for upper, lower in zip(verts, verts[1:]):
        centre, gap = spine.paint_disc_between(canvas, upper, lower)
        discs.append({"above": upper.level, "below": lower.level, "centre_anat_mm": centre, "height_mm": gap,
                      "kind": "normal"})
    thoracic = [i for i, vb in enumerate(verts) if vb.level.startswith("T")]
    pitch = (lay.z_level["T1"] - lay.z_level["T12"]) / 11.0
    rib_len = {}
    for number, i in enumerate(thoracic, start=1):
        vb = verts[i]
        if not vb.ribs:
            continue
        length = an.RIB_LENGTH.get(f"T{number}") if number >= 11 else None
        length = None if length is None else length * scale
        if vb.level == "T12" and spec.t12_rib_length_mm is not None:
            length = float(spec.t12_rib_length_mm)
        for side in (-1, 1):
            rib = chest_wall.chest_rib(lay, verts, i, number, side, reach[vb.level], pitch, length)
            chest_wall.paint_rib(canvas, rib, number)
            rib_len[vb.level] = rib.length_mm
    chest_wall.paint_sternum(canvas, lay)
    chest_wall.paint_shoulder_girdle(canvas, lay)
    if spec.metal_level:
        spine.paint_screws(canvas, next(v for v in verts if v.level == spec.metal_level))
    out = {"rib_length_mm": rib_len, "discs": discs, "sacralised_sides": ()}
    if spec.stent:
        arch, desc = lay.tubes["aortic_arch"], lay.tubes["descending_aorta"]
        start = int(float(vrng.uniform(0.55, 0.75)) * (len(arch) - 1))
        line = np.vstack([arch[start:], desc])
        keep = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(line[:, :3], axis=0), axis=1))] \
            <= float(vrng.uniform(120.0, 200.0)) * scale
        out["stent"] = variants.paint_stent_graft(canvas, line[keep], vrng)
    return out
