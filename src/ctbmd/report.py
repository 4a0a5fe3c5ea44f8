"""Stage 5: result.json, levels.csv, vertebrae.nii.gz, roi.nii.gz and report.png.

Every file is written through :func:`ctbmd.io.write_atomic` (temporary file,
then rename). ``result.json`` follows :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import csv
import io as _io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ctbmd import __version__
from ctbmd.calibrate import k2hpo4_to_caha
from ctbmd.io import labels_on_input_grid, write_atomic, write_image_atomic
from ctbmd.types import (VERSE_LABELS, Calibration, ContrastPhase, CTVolume, LabellingRecord,
                         LevelMeasurement, PatientClassification, SpineSegmentation)

SCHEMA_VERSION = "1.1"  # 1.1: BMD from the ROI mean, QCT Pro line, 95% intervals
DISCLAIMER = "Research use only; not a medical device."
#: What :func:`render_png` imports: a standalone Figure and the Agg canvas that writes PNG (no pyplot,
#: which imports about twice as much and may pick a GUI backend).
PLOTTING_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


@dataclass(frozen=True)
class Result:
    """Everything one run produced, ready to be written.

    Attributes
    ----------
    ct, seg, levels, roi_labels, calibration, phase, patient, warnings :
        Stage outputs; ``roi_labels`` is uint8 on the CT's canonical grid.
    dl : ctbmd.model.store.ModelOutput or None
        A learned model's values (``ctbmd run --model``).
    """

    ct: CTVolume
    seg: SpineSegmentation
    levels: list[LevelMeasurement]
    roi_labels: np.ndarray
    calibration: Calibration
    phase: ContrastPhase
    patient: PatientClassification
    warnings: list[str]
    dl: object = None


def _r(v, nd=1):
    return None if v is None else round(float(v), nd)


def result_dict(res: Result) -> dict:
    """The ``result.json`` content (schema :data:`SCHEMA_VERSION`)."""
    cal = res.calibration
    info = res.ct.info
    levels = []
    for m in res.levels:
        bmd = cal.to_mg_cm3(m.hu_mean if m.hu_mean is not None else m.hu_median)
        ci = cal.interval_mg_cm3(m.hu_mean if m.hu_mean is not None else m.hu_median)
        levels.append({
            "level": m.level, "verse_label": VERSE_LABELS[m.level], "centroid_lps_mm": list(m.centroid_lps_mm),
            "roi_voxels": m.roi_voxels, "roi_volume_mm3": m.roi_volume_mm3,
            "trabecular_hu_median": _r(m.hu_median), "trabecular_hu_mean": _r(m.hu_mean),
            "trabecular_hu_sd": _r(m.hu_sd), "bmd_mg_cm3": _r(bmd),
            "bmd_ci95_mg_cm3": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "bmd_from_median_mg_cm3": _r(cal.to_mg_cm3(m.hu_median)), "bmd_caha_mg_cm3": _r(k2hpo4_to_caha(bmd)),
            "heights_mm": m.heights_mm, "flags": list(m.flags), "used_for_patient": m.level in res.patient.levels_used,
        })
    p = res.patient
    out = {
        "schema_version": SCHEMA_VERSION, "ctbmd_version": __version__, "disclaimer": DISCLAIMER,
        "input": {"path": info.path, "format": "dicom" if info.format == "dicom" else info.format,
                  "shape": list(info.input_grid.size), "spacing_mm": [round(s, 4) for s in info.input_grid.spacing_mm],
                  "series_uid": info.series_uid, "patient_id": info.patient_id, "kvp": info.kvp, "convolution_kernel": info.convolution_kernel,
                  "contrast_phase": res.phase.phase, "contrast_evidence": res.phase.evidence,
                  "aorta_hu": res.phase.aorta_hu, "frame": "LPS (DICOM patient coordinates), mm"},
        "segmentation": {"backend": res.seg.backend, "levels": list(res.seg.levels), "anchors": res.seg.anchors,
                         "label_map": "VerSe (T1=8 ... T12=19, L1=20 ... L5=24)",
                         "levels_in_label_map": _levels_in(res.seg.boxes)},
        "labelling": labelling_dict(res.seg.labelling),
        "calibration": {"ok": cal.ok, "method": cal.method, "description": cal.description,
                        "convention": "Mindways QCT Pro: HU = sigma_ct * BMD + beta_ct, BMD in mg/cm3 K2HPO4; "
                                      "BMD from the trabecular ROI mean HU",
                        "sigma_ct_hu_per_mg_cm3": cal.sigma_ct, "beta_ct_hu": cal.beta_ct,
                        "sigma_ct_95": None if cal.sigma_ct_95 is None else list(cal.sigma_ct_95),
                        "slope": _r(cal.slope, 6), "intercept": _r(cal.intercept, 3),
                        "units": "bmd_mg_cm3 = slope * HU + intercept = (HU - beta_ct) / sigma_ct (K2HPO4-equivalent)",
                        "effective_energy_kev": cal.effective_energy_kev, "energy_sd_kev": cal.energy_sd_kev,
                        "kvp": cal.kvp, "kvp_source": cal.kvp_source, "water_equivalent_diameter_cm": cal.dw_cm,
                        "reason": cal.reason, "qc_flags": list(cal.qc_flags),
                        "reference_tissues": {n: asdict(t) for n, t in cal.tissues.items()},
                        "residuals_hu": cal.residuals_hu, "details": cal.details,
                        "caha_conversion": "HA = 1.15 * K2HPO4 - 7.32 (Faulkner 1993)"},
        "levels": levels,
        "patient": {"bmd_mg_cm3": p.bmd_mg_cm3,
                    "bmd_ci95_mg_cm3": None if p.bmd_ci95_mg_cm3 is None else list(p.bmd_ci95_mg_cm3),
                    "bmd_ci95_covers": "the calibration's uncertainty only (effective energy, or the rod fit); "
                                       "ROI noise and partial volume are not in it",
                    "category_certain": p.category_certain, "bmd_caha_mg_cm3": _r(k2hpo4_to_caha(p.bmd_mg_cm3)),
                    "trabecular_hu_mean": p.hu_mean, "trabecular_hu_median": p.hu_median_mean, "levels_used": list(p.levels_used), "category": p.category,
                    "category_system": p.category_system,
                    "thresholds_mg_cm3": {"osteoporosis_below": 80.0, "normal_above": 120.0},
                    "pickhardt_l1": p.pickhardt, "notes": list(p.notes)},
        "warnings": list(res.warnings),
    }
    if res.dl is not None:
        _add_model_values(out, res.dl)
    return out


def _levels_in(boxes: dict[int, tuple]) -> list[str]:
    from ctbmd.types import LEVEL_ORDER, VERSE_NAMES

    names = [VERSE_NAMES[v] for v in boxes if v in VERSE_NAMES]
    return sorted(names, key=LEVEL_ORDER.index)


def labelling_dict(rec: LabellingRecord | None) -> dict | None:
    """The ``labelling`` block of ``result.json`` (None for a label map or TotalSegmentator).

    Per vertebra, cranial to caudal: the name given, body centre (LPS mm), disc-to-disc
    height and body width (mm), whether discs bound it on both sides, the rib seen on
    each side (confidence 0-1 and lateral reach in mm), the lung fraction beside the
    body, and the sacral-ala score; then the anchors in view, the chosen labelling,
    its runner-up and the log-likelihood margin between them.
    """
    if rec is None:
        return None
    verts = []
    for v in rec.vertebrae:
        verts.append({
            "name": v.name, "centre_lps_mm": list(v.centre_lps_mm), "height_mm": v.height_mm, "width_mm": v.width_mm,
            "complete": v.complete,
            "ribs": {"left": {"confidence": v.rib_left, "reach_mm": v.rib_reach_left_mm},
                     "right": {"confidence": v.rib_right, "reach_mm": v.rib_reach_right_mm}},
            "lung_fraction": v.lung, "sacral_alae": v.sacral, "ala_reach_mm": v.ala_mm})
    return {
        "method": "builtin: canal-tracked column, discs, evidence per vertebra (ribs, lung, sacral alae, size), "
                  "every labelling scored (standard and transitional anatomy)",
        "best": rec.best, "runner_up": rec.runner_up,
        "runner_up_names": None if rec.runner_up_names is None else list(rec.runner_up_names),
        "margin": None if not np.isfinite(rec.margin) else round(rec.margin, 2),
        "margin_units": "natural log of the likelihood ratio of best over runner-up",
        "anchors": [asdict(a) for a in rec.anchors], "refusal": rec.refusal, "vertebrae": verts}


def _add_model_values(result: dict, dl) -> None:
    """Add a model's per-level value (``bmd_dl_mg_cm3`` or ``t_score_dl``), its patient mean over the levels
    the calibrated value used (or L1-L4 for a T-score) with the category, and the ``model`` provenance block."""
    from ctbmd.classify import acr_category
    from ctbmd.evaluate import who_category

    key = "bmd_dl_mg_cm3" if dl.target == "bmd_mg_cm3" else "t_score_dl"
    for lv in result["levels"]:
        pred = dl.levels.get(lv["level"])
        lv[key] = None if pred is None else round(pred.value, 2 if key == "t_score_dl" else 1)
        lv["dl_member_sd"] = None if pred is None else round(pred.member_sd, 2)
        if pred is not None and pred.class_probabilities:
            lv["dl_class_probabilities"] = {k: round(v, 3) for k, v in pred.class_probabilities.items()}
    p = result["patient"]
    used = p["levels_used"] if key == "bmd_dl_mg_cm3" else ["L1", "L2", "L3", "L4"]
    vals = [dl.levels[lv].value for lv in used if lv in dl.levels]
    value = float(np.mean(vals)) if vals else None
    p[key] = None if value is None else round(value, 2 if key == "t_score_dl" else 1)
    p["category_dl"] = None if value is None else (acr_category(value) if key == "bmd_dl_mg_cm3" else who_category(value))
    p["category_dl_system"] = "ACR-QCT" if key == "bmd_dl_mg_cm3" else "WHO (T-score)"
    result["model"] = dl.model


CSV_FIELDS = ["level", "trabecular_hu_median", "trabecular_hu_mean", "trabecular_hu_sd", "bmd_mg_cm3",
              "bmd_ci95_low_mg_cm3", "bmd_ci95_high_mg_cm3", "bmd_from_median_mg_cm3", "bmd_caha_mg_cm3", "roi_voxels", "roi_volume_mm3", "centroid_lps_mm", "flags", "used_for_patient"]


def levels_csv(result: dict) -> str:
    """``levels.csv`` text: one row per level, :data:`CSV_FIELDS` columns."""
    buf = _io.StringIO()
    fields = CSV_FIELDS + [k for k in ("bmd_dl_mg_cm3", "t_score_dl") if result["levels"] and k in result["levels"][0]]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for lv in result["levels"]:
        ci = lv.get("bmd_ci95_mg_cm3") or [None, None]
        row = {k: lv.get(k) for k in fields}
        row["bmd_ci95_low_mg_cm3"], row["bmd_ci95_high_mg_cm3"] = ci
        row["centroid_lps_mm"] = " ".join(f"{c:.1f}" for c in lv["centroid_lps_mm"])
        row["flags"] = ";".join(lv["flags"])
        w.writerow(row)
    return buf.getvalue()


def render_png(res: Result, result: dict, path: Path) -> None:
    """The report picture: sagittal and coronal views and, for the builtin labeller, the labelled column.

    The sagittal and coronal views (through the measured vertebrae) outline every
    named vertebra, fill the trabecular ROIs of the measured ones and give their
    BMD and flags. The third panel is the straightened column seen from behind
    (:func:`_column_panel`): every vertebra with its name, the ribs found on each
    side and the sacrum, so the count can be checked at a glance.
    """
    import matplotlib
    from matplotlib.figure import Figure

    from ctbmd.types import VERSE_NAMES

    hu, labels, roi = res.ct.hu, res.seg.labels, res.roi_labels
    sp = res.ct.spacing_mm
    measured_values = [VERSE_LABELS[lv] for lv in res.seg.levels]
    boxes = res.seg.boxes
    box = tuple(slice(min(boxes[v][a].start for v in measured_values if v in boxes),
                      max(boxes[v][a].stop for v in measured_values if v in boxes)) for a in range(3))
    idx = np.nonzero(np.isin(labels[box], measured_values))  # within the measured levels' box
    cx, cy = int(np.median(idx[0])) + box[0].start, int(np.median(idx[1])) + box[1].start
    rec = res.seg.labelling
    panels = 3 if rec is not None and rec.overview is not None else 2
    fig = Figure(figsize=(5.8 * panels, 7.5), facecolor="black")
    axes = fig.subplots(1, panels)
    views = [("sagittal", hu[cx].T, labels[cx].T, roi[cx].T, sp[1]), ("coronal", hu[:, cy].T, labels[:, cy].T, roi[:, cy].T, sp[0])]
    cmap = matplotlib.colormaps["tab10"]
    by_level = {lv["level"]: lv for lv in result["levels"]}
    for ax, (name, img, lab, r, s_in) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=-250, vmax=900, origin="lower", aspect=sp[2] / s_in)
        for value in np.unique(lab):
            level = VERSE_NAMES.get(int(value))
            if not value or level in res.seg.levels or level is None:
                continue
            _outline(ax, lab == value, levels=[0.5], colors=["0.6"], linewidths=0.5)
            ys, xs = np.nonzero(lab == value)
            if name == "sagittal":
                ax.text(xs.min() - 2, ys.mean(), level, color="0.75", ha="right", va="center", fontsize=7)
        for i, level in enumerate(res.seg.levels):
            v = VERSE_LABELS[level]
            if (lab == v).any():
                _outline(ax, lab == v, levels=[0.5], colors=[cmap(i % 10)], linewidths=0.8)
            if (r == v).any():
                _outline(ax, r == v, filled=True, levels=[0.5, 1.5], colors=[cmap(i % 10)], alpha=0.45)
            ys, xs = np.nonzero(lab == v)
            if len(ys) and name == "sagittal":
                lv = by_level[level]
                val = f"{lv['bmd_mg_cm3']:.0f} mg/cm³" if lv["bmd_mg_cm3"] is not None else (
                    f"{lv['trabecular_hu_median']:.0f} HU" if lv["trabecular_hu_median"] is not None else "n/a")
                if lv.get("bmd_dl_mg_cm3") is not None:
                    val += f" (model {lv['bmd_dl_mg_cm3']:.0f})"
                flag = " [" + ",".join(lv["flags"]) + "]" if lv["flags"] else ""
                ax.text(xs.min() - 2, ys.mean(), f"{level} {val}{flag}", color=cmap(i % 10), ha="right",
                        va="center", fontsize=8, fontweight="bold")
        ax.set_title(name, color="white")
        ax.axis("off")
    if panels == 3:
        _column_panel(axes[2], rec)
    p = result["patient"]
    cat = p["category"] or "not classified"
    bmd = f"{p['bmd_mg_cm3']:.0f} mg/cm³ K2HPO4" if p["bmd_mg_cm3"] is not None else "BMD n/a"
    if p.get("bmd_ci95_mg_cm3"):
        bmd += f", 95% {p['bmd_ci95_mg_cm3'][0]:.0f}-{p['bmd_ci95_mg_cm3'][1]:.0f}"
    if p.get("category_certain") is False:
        cat += " (uncertain)"
    fig.suptitle(f"{Path(res.ct.info.path).name}: {cat.upper()} ({bmd}, {'+'.join(p['levels_used']) or '-'}, ACR-QCT)\n"
                 f"contrast: {result['input']['contrast_phase']}   {_calibration_line(result['calibration'])}   "
                 f"{DISCLAIMER}" + _model_line(result),
                 color="white", fontsize=10)
    fig.tight_layout()
    # zlib level 3: half the time of the default 6 for a file about 15% larger
    fig.savefig(path, dpi=110, facecolor="black", format="png", pil_kwargs={"compress_level": 3})


def _outline(ax, mask: np.ndarray, filled: bool = False, **style) -> None:
    """Draw the 0.5 contour of a 2-D bool ``mask`` (rows y, columns x, as shown by ``imshow``), or fill it.

    Contoured on the mask's bounding box with a one-pixel margin, in the full
    image's pixel coordinates: the same lines as contouring the whole image,
    without walking its empty part (a full-resolution slice is mostly empty).
    """
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return
    r0, r1 = max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2)
    c0, c1 = max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2)
    draw = ax.contourf if filled else ax.contour
    draw(np.arange(c0, c1), np.arange(r0, r1), mask[r0:r1, c0:c1], **style)


def _calibration_line(cal: dict) -> str:
    """One line on how HU became BMD, for the report picture."""
    if not cal["ok"]:
        return "BMD not calibrated (HU only)"
    kvp = "" if cal.get("kvp") is None else (
        f", {cal['kvp']:g} kV" + (" assumed" if cal.get("kvp_source") == "assumed" else ""))
    energy = "" if cal.get("effective_energy_kev") is None else f", E {cal['effective_energy_kev']:.1f} keV"
    return f"calibration: {cal['method'].replace('_', ' ')}{kvp}{energy}"


def _column_panel(ax, rec: LabellingRecord) -> None:
    """The straightened column seen from behind, with names, ribs and the sacrum (see :func:`render_png`)."""
    s = rec.overview_s_mm
    half = (rec.overview.shape[0] - 1)  # u spans -half..half in 2 mm steps
    u_max = float(half)  # mm: (n - 1) * 2 mm / 2
    ax.imshow(rec.overview.T, cmap="gray", vmin=-200, vmax=1000, origin="lower", aspect="equal",
              extent=[-u_max, u_max, float(s[0]), float(s[-1])])
    for v, (lo, hi) in zip(rec.vertebrae, rec.segment_s_mm):
        ax.axhline(lo, color="#4fc3f7", lw=0.5, alpha=0.7)
        mid = (lo + hi) / 2.0
        name = v.name or "?"
        colour = "#ffd54f" if v.name not in (None, "S") else ("#ce93d8" if v.name == "S" else "0.6")
        text = "sacrum" if v.name == "S" else name
        ax.text(-u_max - 3, mid, text, color=colour, fontsize=8, fontweight="bold", va="center", ha="right",
                clip_on=False)
        for side, conf in ((-1, v.rib_right), (1, v.rib_left)):
            if conf >= 0.5:
                ax.plot(side * (u_max - 6), mid, "o", ms=5, color="#66bb6a")
        if v.lung >= 0.5:
            ax.plot(-u_max + 22, mid, "s", ms=3, color="#42a5f5")
    anchors = ", ".join(f"{a.kind.replace('_', ' ')} = {a.named}" for a in rec.anchors)
    ax.set_title(f"column seen from behind: {rec.best}\nanchors: {anchors or 'none'}; margin {rec.margin:.1f}\n"
                 "● rib on that side   ■ lung beside the body", color="white", fontsize=8)
    ax.text(-u_max + 2, float(s[0]) + 2, "R", color="white", fontsize=9)
    ax.text(u_max - 8, float(s[0]) + 2, "L", color="white", fontsize=9)
    ax.axis("off")


def _model_line(result: dict) -> str:
    m = result.get("model")
    if not m:
        return ""
    p = result["patient"]
    value = p.get("bmd_dl_mg_cm3", p.get("t_score_dl"))
    shown = "n/a" if value is None else (f"{value:.0f} mg/cm³" if "bmd_dl_mg_cm3" in p else f"T {value:.1f}")
    origin = "trained on phantoms" if m["phantom_trained"] else "research model"
    return f"\nmodel ({m['arch']}, {origin}): {shown}, {p.get('category_dl') or '-'}"


def write_outputs(res: Result, out_dir: str | Path) -> dict:
    """Write all outputs of a run into ``out_dir`` (each atomically); return the result dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = result_dict(res)

    def label_maps() -> None:
        write_image_atomic(labels_on_input_grid(res.seg.labels, res.ct), out / "vertebrae.nii.gz")
        write_image_atomic(labels_on_input_grid(res.roi_labels, res.ct), out / "roi.nii.gz")

    # the label maps (array copies and zlib in SimpleITK, which release the GIL) are written in a
    # second thread while matplotlib draws the picture; an error in either is raised here
    with ThreadPoolExecutor(max_workers=1) as pool:
        maps = pool.submit(label_maps)
        write_atomic(out / "levels.csv", lambda p: p.write_text(levels_csv(result)))
        write_atomic(out / "report.png", lambda p: render_png(res, result, p))
        write_atomic(out / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
        maps.result()
    return result
