"""The analysis of one scan (:class:`Result`) and its ``result.json`` form.

:class:`Result` is what :func:`ctbmd.analyse` returns: every stage's typed
output, from the read CT to the patient's category, plus a learned model's
values when one was applied (:func:`ctbmd.model.store.add_model`).
:meth:`Result.to_dict` is the ``result.json`` content (schema
:data:`SCHEMA_VERSION`); :mod:`ctbmd.report` writes it with the tables,
label maps and picture.

This module sits between the stages (it imports :mod:`ctbmd.calibrate` and
:mod:`ctbmd.classify` for the unit conversions and categories) and everything
that uses a finished analysis: :mod:`ctbmd.report`, :mod:`ctbmd.model`,
:mod:`ctbmd.api` and :mod:`ctbmd.batch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ctbmd import __version__
from ctbmd.calibrate import k2hpo4_to_caha
from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, NORMAL, acr_category, who_category
from ctbmd.types import (LEVEL_ORDER, VERSE_LABELS, VERSE_NAMES, Calibration, ContrastPhase, CTVolume,
                         LabellingRecord, LevelMeasurement, ModelOutput, PatientClassification, SpineSegmentation)

SCHEMA_VERSION = "1.1"  # 1.1: BMD from the ROI mean, QCT Pro line, 95% intervals
DISCLAIMER = "Research use only; not a medical device."


@dataclass(frozen=True)
class Result:
    """Everything the analysis of one scan produced.

    Attributes
    ----------
    ct : CTVolume
        The scan as read: float32 HU, shape ``(nx, ny, nz)``, canonical L/P/S axes.
    seg : SpineSegmentation
        Vertebra labels (VerSe numbering) on the CT's canonical grid, the named
        levels and, for the builtin labeller, the labelling evidence.
    levels : tuple of LevelMeasurement
        One per measured level, cranial to caudal: trabecular ROI HU, size, heights, flags.
    roi_labels : numpy.ndarray
        uint8, shape ``ct.hu.shape``: the trabecular ROIs in VerSe numbering.
    calibration : Calibration
        HU -> K2HPO4 mg/cm³ (phantomless, rods or scanner profile).
    phase : ContrastPhase
        Native or contrast-enhanced, with the evidence.
    patient : PatientClassification
        The patient's BMD (mean of the levels used) and ACR-QCT category.
    warnings : tuple of str
        Every warning of every stage, merged in one place (:func:`ctbmd.pipeline.merge_warnings`).
    dl : ModelOutput or None
        A learned model's per-level values, when one was applied
        (:func:`ctbmd.model.store.add_model`).
    """

    ct: CTVolume
    seg: SpineSegmentation
    levels: tuple[LevelMeasurement, ...]
    roi_labels: np.ndarray = field(repr=False)
    calibration: Calibration
    phase: ContrastPhase
    patient: PatientClassification
    warnings: tuple[str, ...] = ()
    dl: ModelOutput | None = None

    def to_dict(self) -> dict:
        """The ``result.json`` content (schema :data:`SCHEMA_VERSION`): plain JSON types only.

        BMD values in K2HPO4-equivalent mg/cm³, coordinates in LPS mm,
        rounded as written to ``result.json``.
        """
        return result_dict(self)

    def bmd_mg_cm3(self) -> dict[str, float | None]:
        """Level -> calibrated trabecular BMD (K2HPO4 mg/cm³, unrounded; None without a calibration)."""
        return {m.level: self.calibration.to_mg_cm3(m.reported_hu) for m in self.levels}


def _r(v, nd=1):
    return None if v is None else round(float(v), nd)


def result_dict(res: Result) -> dict:
    """The ``result.json`` content of ``res`` (schema :data:`SCHEMA_VERSION`); see :meth:`Result.to_dict`."""
    cal = res.calibration
    info = res.ct.info
    levels = []
    for m in res.levels:
        bmd = cal.to_mg_cm3(m.reported_hu)
        ci = cal.interval_mg_cm3(m.reported_hu)
        levels.append({
            "level": m.level, "verse_label": VERSE_LABELS[m.level], "centroid_lps_mm": list(m.centroid_lps_mm),
            "roi_voxels": m.roi_voxels, "roi_volume_mm3": m.roi_volume_mm3,
            "trabecular_hu_median": _r(m.hu_median), "trabecular_hu_mean": _r(m.hu_mean),
            "trabecular_hu_sd": _r(m.hu_sd), "bmd_mg_cm3": _r(bmd),
            "bmd_ci95_mg_cm3": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "bmd_from_median_mg_cm3": _r(cal.to_mg_cm3(m.hu_median)), "bmd_caha_mg_cm3": _r(k2hpo4_to_caha(bmd)),
            "heights_mm": m.heights_mm, "genant_grade": m.genant_grade, "deformity": m.deformity,
            "height_ratios": m.height_ratios, "flags": list(m.flags), "used_for_patient": m.level in res.patient.levels_used,
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
                    "thresholds_mg_cm3": {"osteoporosis_below": ACR_OSTEOPOROSIS_MG_CM3,
                                          "normal_above": ACR_NORMAL_MG_CM3},
                    "pickhardt_l1": p.pickhardt.to_dict(), "notes": list(p.notes)},
        "warnings": list(res.warnings),
    }
    if res.dl is not None:
        _add_model_values(out, res.dl)
    return out


def _levels_in(boxes: dict[int, tuple]) -> list[str]:
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


def model_value_key(target: str) -> str:
    """The ``result.json`` key of a model's value: ``bmd_dl_mg_cm3``, ``t_score_dl``, or ``<target>_dl`` (``tbs_dl``)."""
    return "bmd_dl_mg_cm3" if target == "bmd_mg_cm3" else f"{target}_dl"


def model_value_text(target: str, value: float | None, model: dict | None = None) -> str:
    """A model's value for people: ``87 mg/cm³``, ``T-score -1.2``, ``P(low BMD) 0.73`` or ``tbs 1.21``.

    ``target`` is the model's output target (``result["model"]["target"]``);
    ``value`` its value, or None (``n/a``). With the ``model`` block of a
    binary model, the probability names what "low" meant in training, as in
    ``P(low BMD: bmd_mg_cm3 < 80) 0.73`` (Huang 2025's osteoporosis).
    """
    if value is None:
        return "n/a"
    low = "low BMD"
    if model and model.get("binary_threshold") is not None:
        low += f": {model.get('trained_on_target')} < {model['binary_threshold']:g}"
    return {"bmd_mg_cm3": f"{value:.0f} mg/cm³", "t_score": f"T-score {value:.1f}",
            "p_low_bmd": f"P({low}) {value:.2f}"}.get(target, f"{target} {value:.3g}")


def _add_model_values(result: dict, dl: ModelOutput) -> None:
    """Add a model's per-level value (:func:`model_value_key`), its patient mean over the levels the calibrated
    value used (or L1-L4 for a per-patient target such as a T-score or TBS) with the category (ACR for BMD,
    WHO for a T-score, none for other targets), and the ``model`` provenance block."""
    key = model_value_key(dl.target)
    digits = 1 if key == "bmd_dl_mg_cm3" else (2 if key == "t_score_dl" else 3)
    for lv in result["levels"]:
        pred = dl.levels.get(lv["level"])
        lv[key] = None if pred is None else round(pred.value, digits)
        lv["dl_member_sd"] = None if pred is None else round(pred.member_sd, 2)
        if pred is not None and pred.class_probabilities:
            lv["dl_class_probabilities"] = {k: round(v, 3) for k, v in pred.class_probabilities.items()}
    p = result["patient"]
    used = p["levels_used"] if key == "bmd_dl_mg_cm3" else ["L1", "L2", "L3", "L4"]
    vals = [dl.levels[lv].value for lv in used if lv in dl.levels]
    value = float(np.mean(vals)) if vals else None
    p[key] = None if value is None else round(value, digits)
    low = "low BMD"
    if dl.model.get("binary_threshold") is not None:  # what "low" meant in training (Huang 2025: osteoporosis)
        low += f" ({dl.model.get('trained_on_target')} below {dl.model['binary_threshold']:g})"
    systems = {"bmd_dl_mg_cm3": ("ACR-QCT", acr_category), "t_score_dl": ("WHO (T-score)", who_category),
               "p_low_bmd_dl": (f"{low} if p >= 0.5", lambda v: "low BMD" if v >= 0.5 else NORMAL)}
    system, categorise = systems.get(key, (None, None))
    p["category_dl"] = None if value is None or categorise is None else categorise(value)
    p["category_dl_system"] = system
    result["model"] = dl.model
