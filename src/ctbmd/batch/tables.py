"""A batch's tables: ``cohort.csv`` / ``cohort.parquet`` (one row per scan and level, plus one
patient row per scan), ``failed.csv`` (one row per scan that failed) and the ``cohort.html``
summary (BMD distribution by category, failures, links to each scan's ``report.html``).

The rows are built from each finished scan's ``result.json`` only, and sorted
by scan ID (levels cranial to caudal, then the patient row), so a batch that
was interrupted and resumed writes the same table as one that was not.
Every file is replaced atomically (:func:`ctbmd.io.write_atomic`).
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Sequence
from pathlib import Path

from ctbmd.batch.jobs import ScanOutcome
from ctbmd.io import write_atomic
from ctbmd.result import model_value_key

#: cohort.csv columns, in order, with their Parquet type. ``row`` is ``level`` or ``patient``;
#: ``level`` is empty on the patient row, whose ``levels_used`` says which levels its mean used.
#: BMD in K2HPO4-equivalent mg/cm³; centroid in LPS mm; ``category`` (ACR-QCT) on the patient row only.
#: With ``--model``: ``model_target`` names what the model gives (``bmd_mg_cm3``, ``t_score``, ``p_low_bmd``
#: for a binary model, or another trained column such as ``tbs``) and ``model_value`` holds it, whatever the
#: target; ``bmd_dl_mg_cm3`` and ``t_score_dl`` repeat it for those two targets.
COHORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scan_id", "string"), ("source", "string"), ("series_uid", "string"), ("patient_id", "string"),
    ("row", "string"), ("level", "string"),
    ("trabecular_hu_mean", "float64"), ("trabecular_hu_median", "float64"), ("trabecular_hu_sd", "float64"),
    ("bmd_mg_cm3", "float64"), ("bmd_ci95_low_mg_cm3", "float64"), ("bmd_ci95_high_mg_cm3", "float64"),
    ("bmd_caha_mg_cm3", "float64"), ("roi_volume_mm3", "float64"),
    ("centroid_l_mm", "float64"), ("centroid_p_mm", "float64"), ("centroid_s_mm", "float64"),
    ("flags", "string"), ("used_for_patient", "bool"),
    ("levels_used", "string"), ("category", "string"), ("category_certain", "bool"),
    ("contrast_phase", "string"), ("calibration_ok", "bool"), ("calibration_method", "string"),
    ("kvp", "float64"), ("effective_energy_kev", "float64"),
    ("bmd_dl_mg_cm3", "float64"), ("t_score_dl", "float64"), ("model_target", "string"), ("model_value", "float64"),
    ("category_dl", "string"), ("warnings", "string"),
)
FAILED_COLUMNS = ("scan_id", "source", "series_uid", "exit_code", "reason")


def scan_rows(scan_id: str, result: dict) -> list[dict]:
    """The cohort rows of one finished scan: one per measured level, then the patient row.

    Parameters
    ----------
    scan_id : str
    result : dict
        Its ``result.json`` content (:meth:`ctbmd.result.Result.to_dict`).

    Returns
    -------
    list of dict
        Keys :data:`COHORT_COLUMNS`; missing values are None.
    """
    inp, cal, p = result["input"], result["calibration"], result["patient"]
    target = result["model"]["target"] if result.get("model") else None
    key = model_value_key(target) if target else None
    common = {"model_target": target, "scan_id": scan_id, "source": inp.get("path"), "series_uid": inp.get("series_uid"),
              "patient_id": inp.get("patient_id"), "contrast_phase": inp.get("contrast_phase"),
              "calibration_ok": cal.get("ok"), "calibration_method": cal.get("method"), "kvp": cal.get("kvp"),
              "effective_energy_kev": cal.get("effective_energy_kev")}
    rows = []
    for lv in result["levels"]:
        ci = lv.get("bmd_ci95_mg_cm3") or [None, None]
        centroid = lv.get("centroid_lps_mm") or [None, None, None]
        rows.append({**common, "row": "level", "level": lv["level"],
                     "trabecular_hu_mean": lv.get("trabecular_hu_mean"),
                     "trabecular_hu_median": lv.get("trabecular_hu_median"),
                     "trabecular_hu_sd": lv.get("trabecular_hu_sd"), "bmd_mg_cm3": lv.get("bmd_mg_cm3"),
                     "bmd_ci95_low_mg_cm3": ci[0], "bmd_ci95_high_mg_cm3": ci[1],
                     "bmd_caha_mg_cm3": lv.get("bmd_caha_mg_cm3"), "roi_volume_mm3": lv.get("roi_volume_mm3"),
                     "centroid_l_mm": centroid[0], "centroid_p_mm": centroid[1], "centroid_s_mm": centroid[2],
                     "flags": ";".join(lv.get("flags") or []), "used_for_patient": lv.get("used_for_patient"),
                     "bmd_dl_mg_cm3": lv.get("bmd_dl_mg_cm3"), "t_score_dl": lv.get("t_score_dl"),
                     "model_value": lv.get(key) if key else None})
    ci = p.get("bmd_ci95_mg_cm3") or [None, None]
    rows.append({**common, "row": "patient", "level": "",
                 "trabecular_hu_mean": p.get("trabecular_hu_mean"), "trabecular_hu_median": p.get("trabecular_hu_median"),
                 "bmd_mg_cm3": p.get("bmd_mg_cm3"), "bmd_ci95_low_mg_cm3": ci[0], "bmd_ci95_high_mg_cm3": ci[1],
                 "bmd_caha_mg_cm3": p.get("bmd_caha_mg_cm3"), "levels_used": "+".join(p.get("levels_used") or []),
                 "category": p.get("category"), "category_certain": p.get("category_certain"),
                 "bmd_dl_mg_cm3": p.get("bmd_dl_mg_cm3"), "t_score_dl": p.get("t_score_dl"),
                 "model_value": p.get(key) if key else None, "category_dl": p.get("category_dl"), "warnings": "; ".join(result.get("warnings") or [])})
    names = [c for c, _ in COHORT_COLUMNS]
    return [{c: r.get(c) for c in names} for r in rows]


def _csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r[c]) for c in columns})
    return buf.getvalue()


def cohort_html(out_dir: str | Path, rows: dict[str, list[dict]], failed: Sequence[dict]) -> str:
    """The ``cohort.html`` page (:func:`ctbmd.report.html.render_cohort_html`) of these rows and failures.

    Each scan links to ``scans/<scan_id>/report.html``, relative to the batch folder.
    """
    from urllib.parse import quote

    from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3
    from ctbmd.report.html import render_cohort_html

    patients = []
    for scan_id in sorted(rows):
        p = next((r for r in rows[scan_id] if r["row"] == "patient"), None)
        if p is None:
            continue
        patients.append({"scan_id": scan_id, "bmd_mg_cm3": p["bmd_mg_cm3"], "category": p["category"],
                         "category_certain": p["category_certain"], "levels_used": p["levels_used"],
                         "warnings": _warning_count(Path(out_dir) / "scans" / scan_id / "result.json"),
                         "report": f"scans/{quote(scan_id)}/report.html"})
    return render_cohort_html(patients, list(failed), (ACR_OSTEOPOROSIS_MG_CM3, ACR_NORMAL_MG_CM3),
                              Path(out_dir).resolve().name)


def _warning_count(path: Path) -> int | None:
    """The number of warnings in a scan's ``result.json`` (None when unreadable)."""
    import json

    try:
        return len(json.loads(path.read_text())["warnings"])
    except (OSError, ValueError, KeyError):
        return None


def write_tables(out_dir: str | Path, rows: dict[str, list[dict]], failures: Sequence[ScanOutcome]) -> list[Path]:
    """Write ``cohort.csv``, ``cohort.parquet``, ``failed.csv`` and ``cohort.html`` into ``out_dir`` (each atomically).

    Parameters
    ----------
    out_dir : str or Path
    rows : dict
        scan ID -> its :func:`scan_rows`; written in scan ID order.
    failures : sequence of ScanOutcome
        Written in scan ID order; their reasons must already be free of PHI.

    Returns
    -------
    list of Path
        The files written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    ordered = [r for k in sorted(rows) for r in rows[k]]
    names = [c for c, _ in COHORT_COLUMNS]
    types = {"string": pa.string(), "float64": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([(c, types[t]) for c, t in COHORT_COLUMNS])
    table = pa.table({c: [r[c] for r in ordered] for c in names}, schema=schema)
    failed = [{"scan_id": f.scan_id, "source": f.source, "series_uid": f.series_uid, "exit_code": f.exit_code,
               "reason": f.reason} for f in sorted(failures, key=lambda f: f.scan_id)]
    return [write_atomic(out / "cohort.csv", lambda p: p.write_text(_csv_text(names, ordered))),
            write_atomic(out / "cohort.parquet", lambda p: pq.write_table(table, p)),
            write_atomic(out / "failed.csv", lambda p: p.write_text(_csv_text(FAILED_COLUMNS, failed))),
            write_atomic(out / "cohort.html", lambda p: p.write_text(cohort_html(out, rows, failed), encoding="utf-8"))]
