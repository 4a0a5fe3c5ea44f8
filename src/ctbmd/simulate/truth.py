"""The ground truth saved beside a phantom (``truth.json``): per level, per disc, the scan and the variant.

Frame: positions are LPS mm (the canvas's :meth:`~ctbmd.simulate.anatomy.Canvas.world` of the
anatomy's millimetres); see :func:`ctbmd.simulate.simulate_phantom` for the keys.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ctbmd.simulate.spec import PhantomSpec
from ctbmd.types import VERSE_LABELS, Grid


def _fracture_truth(vb) -> dict | None:
    """The truth of a fractured vertebra: kind, loss, drawn heights (mm) and the Genant grade it implies
    (:data:`ctbmd.heights.GENANT_LOSS`)."""
    if vb.fracture is None:
        return None
    from ctbmd.heights import GENANT_LOSS

    kind, loss = vb.fracture
    heights = vb.fractured_heights()
    grade = sum(loss >= g for g in GENANT_LOSS)
    return {"kind": kind, "height_loss": round(loss, 4), "genant_grade": int(grade),
            **{f"{k}_height_mm": round(v, 2) for k, v in heights.items()}}


def phantom_truth(spec: PhantomSpec, anat, canvas, labels: np.ndarray, grid: Grid, bmd: dict, table: dict,
                  scan: dict, energy: float) -> dict:
    """The truth of the default phantom: ``schema``, ``settings``, ``scan``, ``levels``, ``patient``,
    ``label_numbering`` and ``frame`` (see :func:`ctbmd.simulate.simulate_phantom`).

    Parameters
    ----------
    spec : PhantomSpec
    anat : ctbmd.simulate.anatomy.Anatomy
        The drawn anatomy (anatomy mm).
    canvas : ctbmd.simulate.anatomy.Canvas
        The painted canvas (maps anatomy mm to LPS mm).
    labels : numpy.ndarray
        ``(nx, ny, nz)`` VerSe labels on ``grid``.
    grid : Grid
        The image's geometry.
    bmd : dict
        Level -> K2HPO4 mg/cm^3 set.
    table : dict
        The :func:`ctbmd.simulate.physics.material_table` at the scan's energy.
    scan : dict
        Scan values already recorded (cupping, Dw, energy offset, iodine ...).
    energy : float
        Effective energy, keV.

    Returns
    -------
    dict
        JSON-ready.
    """
    from ctbmd.classify import acr_category

    levels_out = []
    for i, vb in enumerate(anat.vertebrae):
        lab = VERSE_LABELS[vb.level]
        idx = np.argwhere(labels == lab)
        centroid = None
        if len(idx):
            centroid = [round(float(c), 2) for c in grid.affine_lps[:3, :3] @ idx.mean(0) + grid.affine_lps[:3, 3]]
        info = table["trabecular"][vb.level]
        centre_world = canvas.world(vb.centre)
        levels_out.append({
            "level": vb.level,
            "verse_label": lab,
            "bmd_mg_cm3": round(bmd[vb.level], 3),
            "qct_equivalent_mg_cm3": round(info["qct_equivalent_mg_cm3"], 3),
            "trabecular_hu_native": round(info["hu_native"], 2),
            "trabecular_hu": round(info["hu"], 2),
            "body_centre_lps_mm": [round(float(c), 2) for c in centre_world],
            "label_centroid_lps_mm": centroid,
            "body_height_mm": round(vb.height, 2),
            "ribs": vb.ribs,
            "metal": spec.metal_level == vb.level,
            "in_view": bool(len(idx)),
            "fracture": _fracture_truth(vb),
        })
    by = {lv["level"]: lv for lv in levels_out}
    patient = {}
    if "L1" in by and "L2" in by:
        qct = (by["L1"]["qct_equivalent_mg_cm3"] + by["L2"]["qct_equivalent_mg_cm3"]) / 2.0
        mineral = (by["L1"]["bmd_mg_cm3"] + by["L2"]["bmd_mg_cm3"]) / 2.0
        patient = {"levels": ["L1", "L2"], "qct_equivalent_mg_cm3": round(qct, 3),
                   "bmd_mg_cm3": round(mineral, 3), "category": acr_category(qct),
                   "category_mineral": acr_category(mineral)}
    settings = asdict(spec)
    return {
        "schema": "ctbmd-phantom-truth 1.0",
        "settings": settings,
        "scan": {"effective_energy_kev": round(energy, 3), **scan,
                 "body_width_mm": round(anat.width, 1), "body_depth_mm": round(anat.depth, 1),
                 "subcutaneous_fat_mm": round(anat.subcut_fat, 1),
                 "anatomy": {k: round(float(v), 3) for k, v in anat.extras.items()}},
        "levels": levels_out,
        "patient": patient,
        "label_numbering": ("VerSe (T10=17, T11=18, T12=19, L1=20 ... L5=24, L6=25, sacrum=26)"
                            if spec.fov == "abdomen" and spec.drawn_rib_pairs() != 13 else
                            "VerSe (C6=6, C7=7, T1=8 ... T12=19, T13=28, L1=20 ... L5=24, L6=25, sacrum=26)"),
        "frame": "LPS mm; image axes (i, j, k) = (L, P, S), identity direction",
    }


def add_variant_truth(truth: dict, spec: PhantomSpec, anat, canvas, grid: Grid, drawn: dict) -> None:
    """Add the keys that describe the variant (new keys only: the default phantom's values stay).

    Parameters
    ----------
    truth : dict
        From :func:`phantom_truth`, changed in place: ``rib_length_mm`` and
        ``cut_by_edge`` per level, ``discs`` and ``variant``.
    spec : PhantomSpec
    anat, canvas
        The drawn anatomy and its painted canvas.
    grid : Grid
        The image's geometry (its z extent decides ``cut_by_edge``).
    drawn : dict
        From :func:`ctbmd.simulate.paint.paint_abdomen` or :func:`~ctbmd.simulate.paint.paint_chest`.
    """
    def lps(p):
        return [round(float(c), 2) for c in canvas.world(np.asarray(p, float))]

    z_lo = grid.origin_lps_mm[2] - grid.spacing_mm[2] / 2.0
    z_hi = z_lo + grid.spacing_mm[2] * grid.size[2]
    by = {vb.level: vb for vb in anat.vertebrae}
    for lv in truth["levels"]:
        vb = by[lv["level"]]
        half = vb.height / 2.0 * abs(float(vb.frame[2][2])) + vb.half_depth * abs(float(vb.frame[1][2]))
        length = drawn["rib_length_mm"].get(lv["level"])
        lv["rib_length_mm"] = None if length is None else round(length, 1)
        lv["cut_by_edge"] = bool(vb.centre[2] + half > z_hi or vb.centre[2] - half < z_lo)
    truth["discs"] = [{"above": d["above"], "below": d["below"], "centre_lps_mm": lps(d["centre_anat_mm"]),
                       "height_mm": round(float(d["height_mm"]), 2), "kind": d["kind"]} for d in drawn["discs"]]
    stent = drawn.get("stent")
    graft = None
    if stent is not None:
        graft = {k: v for k, v in stent.items() if not k.endswith("_anat_mm") and not k.endswith("_fill")}
        graft.update(proximal_lps_mm=lps(stent["proximal_anat_mm"]), distal_lps_mm=lps(stent["distal_anat_mm"]),
                     centre_line_lps_mm=[lps(p) for p in stent["centre_anat_mm"]],
                     wire_volume_fraction=round(float(stent["wire_fill"]), 4))
    sides = drawn["sacralised_sides"]
    truth["variant"] = {
        "fov": spec.fov,
        "rib_pairs": spec.drawn_rib_pairs(),
        "rib_levels": list(spec.rib_levels()),
        "transition": spec.drawn_transition(),
        "sacralised_sides": (None if not sides else "bilateral" if len(sides) == 2
                             else "right" if sides[0] < 0 else "left"),
        "sacrum": spec.drawn_sacrum(),
        "stent": bool(spec.stent),
        "stent_graft": graft,
        "t12_rib_length_mm": spec.t12_rib_length_mm,
    }
