"""The out-of-fold evaluation of ``ctbmd train`` and the summary it prints.

:func:`ctbmd.model.workflow.train_cohort` predicts every vertebra once (its
fold's member for the cross-validation patients, the ensemble for the test
patients and external sites: :class:`OutOfFold`), then evaluates them here by
target:

* ``bmd_mg_cm3``: :func:`evaluate_bmd`, ``ctbmd evaluate`` reports of the model
  and of the calibration alone (``evaluation/model/``,
  ``evaluation/calibration/``, each external site in ``evaluation/<site>/``);
* a per-patient target (``t_score``, ``tbs``): :func:`evaluate_patient_target`;
* the binary task: :func:`evaluate_binary`.

Each returns the headline figures that ``config.json`` keeps as
``training.out_of_fold`` and :func:`out_of_fold_lines` prints. A figure that
cannot be computed (an r² of fewer than 3 patients, an AUC of one class) is
``null`` in the JSON files, never ``NaN``; for ``bmd_mg_cm3`` the split then has
``not_computed``, ``{figure: reason}`` from ``ctbmd evaluate``
(``{"patient.r2": "needs at least 3 patients, got 1"}``), and the summary reads
``r² not computed (needs at least 3 patients, got 1)``.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctbmd.classify import WHO_OSTEOPOROSIS_T
from ctbmd.io import write_atomic
from ctbmd.model.cohort import Samples, external_number, is_external

#: Bootstrap resamples of the out-of-fold evaluation (95% CIs).
EVAL_BOOTSTRAP = 200
#: Reason given for a figure that ``ctbmd evaluate`` left undefined without saying why.
UNDEFINED = "undefined for these values (no spread, or no patient in a ratio's denominator)"


@dataclass(frozen=True)
class OutOfFold:
    """Every evaluated vertebra's prediction by a model that did not train on its patient.

    Attributes
    ----------
    rows : numpy.ndarray
        int ``(m,)`` indices into :class:`~ctbmd.model.cohort.Samples`: the
        validation vertebrae fold by fold, then the test vertebrae, then the
        external sites'.
    sets : numpy.ndarray
        object ``(m,)``: ``out-of-fold``, ``test`` or the external site's name.
    values : numpy.ndarray
        float32 ``(m,)``: the prediction in target units (or the probability of
        low BMD for a binary model).
    fold : numpy.ndarray
        int ``(m,)``: the fold that predicted it, -1 outside cross-validation.
    """

    rows: np.ndarray
    sets: np.ndarray
    values: np.ndarray
    fold: np.ndarray


def csv_text(header: list[str], rows: list[list]) -> str:
    """CSV text (``\\n`` line ends) of ``header`` and ``rows``."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`ctbmd.io.write_atomic`)."""
    write_atomic(path, lambda p: p.write_text(text))


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None, so ``json.dumps`` writes valid JSON
    (``null``, not ``NaN``); dicts, lists and tuples are walked (tuples become lists)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _bmd_figures(m: dict) -> dict:
    """The headline figures of one split of :func:`ctbmd.evaluate.evaluate`, NaN as None with the reason
    (``not_computed``, only when a figure is missing)."""
    figures = {"vertebra": {k: m["level"][k] for k in ("n", "r2", "mae", "rmse", "bias")},
               "patient": {k: m["patient"][k] for k in ("n", "r2", "mae", "rmse", "bias")},
               "auc_osteoporosis": m["diagnosis"]["auc_osteoporosis"],
               "accuracy": m["diagnosis"]["accuracy"]}
    source = {"vertebra": "level", "patient": "patient", "auc_osteoporosis": "diagnosis.auc_osteoporosis",
              "accuracy": "diagnosis.accuracy"}
    reasons = m.get("not_computed", {})
    missing = {}
    for key, value in figures.items():
        for sub, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            if isinstance(v, float) and not math.isfinite(v):
                name, evaluated = (f"{key}.{sub}", f"{source[key]}.{sub}") if sub else (key, source[key])
                missing[name] = reasons.get(evaluated, UNDEFINED)
    figures = finite_json(figures)
    if missing:
        figures["not_computed"] = missing
    return figures


def evaluate_bmd(out: Path, samples: Samples, oof: OutOfFold) -> dict:
    """``ctbmd evaluate`` reports of the model and of the calibration alone, and of each external site.

    Writes ``evaluation/reference.csv``, ``evaluation/<name>_predictions.csv`` and the reports
    (:func:`ctbmd.evaluate.write_evaluation`) in ``evaluation/model/``, ``evaluation/calibration/`` and
    ``evaluation/<site>/``.

    Returns
    -------
    dict
        ``{"model" | "calibration": {split: {"vertebra": {n, r2, mae, rmse, bias}, "patient": {...},
        "auc_osteoporosis", "accuracy"}}}`` (mg/cm³), a figure that cannot be computed None and its
        reason in the split's ``not_computed`` (see the module docstring).
    """
    from ctbmd import evaluate as ev

    rows, sets, pred = oof.rows, oof.sets, oof.values
    ref = out / "evaluation" / "reference.csv"
    ref.parent.mkdir(parents=True, exist_ok=True)
    write_text(ref, csv_text(["patient_id", "level", "bmd_mg_cm3", "set"],
                             [[samples.patient[i], samples.level[i], f"{samples.target[i]:.3f}", sets[j]]
                              for j, i in enumerate(rows)]))
    reference = ev.read_reference(ref, split_column="set")
    summary = {}
    for name, values in (("model", pred), ("calibration", samples.baseline[rows])):
        p = out / "evaluation" / f"{name}_predictions.csv"
        write_text(p, csv_text(["patient_id", "level", "bmd_mg_cm3"],
                               [[samples.patient[i], samples.level[i], f"{values[j]:.3f}"] for j, i in enumerate(rows)]))
        paired = ev.pair(ev.read_predictions(p), reference)
        result = ev.evaluate(paired, n_boot=EVAL_BOOTSTRAP, seed=0)
        ev.write_evaluation(paired, result, out / "evaluation" / name)
        summary[name] = {s: _bmd_figures(m) for s, m in result["splits"].items()}
    for site in sorted({str(x) for x in sets if is_external(x)}, key=external_number):
        sel = [j for j, x in enumerate(sets) if str(x) == site]
        site_dir = out / "evaluation" / site
        site_dir.mkdir(parents=True, exist_ok=True)
        write_text(site_dir / "reference.csv", csv_text(
            ["patient_id", "level", "bmd_mg_cm3"],
            [[samples.patient[rows[j]], samples.level[rows[j]], f"{samples.target[rows[j]]:.3f}"] for j in sel]))
        write_text(site_dir / "model_predictions.csv", csv_text(
            ["patient_id", "level", "bmd_mg_cm3"],
            [[samples.patient[rows[j]], samples.level[rows[j]], f"{pred[j]:.3f}"] for j in sel]))
        paired = ev.pair(ev.read_predictions(site_dir / "model_predictions.csv"),
                         ev.read_reference(site_dir / "reference.csv"))
        ev.write_evaluation(paired, ev.evaluate(paired, n_boot=EVAL_BOOTSTRAP, seed=0), site_dir)
    return summary


def _write_summary(out: Path, summary: dict) -> dict:
    """Write the per-set ``summary`` to ``evaluation/metrics.json`` and each external site's part to
    ``evaluation/<site>/metrics.json``; return it."""
    (out / "evaluation").mkdir(parents=True, exist_ok=True)
    write_text(out / "evaluation" / "metrics.json", json.dumps(finite_json(summary), indent=2))
    for site in (n for n in summary if is_external(n)):
        (out / "evaluation" / site).mkdir(parents=True, exist_ok=True)
        write_text(out / "evaluation" / site / "metrics.json", json.dumps(finite_json(summary[site]), indent=2))
    return summary


def evaluate_patient_target(out: Path, samples: Samples, oof: OutOfFold, target: str = "t_score") -> dict:
    """Per set: Pearson r and r², MAE, RMSE (scipy, sklearn) of the patient means of a per-patient target
    (T-score, TBS, ...); for a T-score also the AUC of osteoporosis (T <= -2.5, WHO).

    Written to ``evaluation/metrics.json`` and, for each external site, ``evaluation/<site>/metrics.json``;
    r, r² and the AUC are None where they cannot be computed (fewer than 3 patients, no spread, one class).
    """
    from scipy import stats
    from sklearn import metrics as skm

    rows, sets, pred = oof.rows, oof.sets, oof.values
    summary = {}
    for name in sorted(set(sets)):
        sel = rows[sets == name]
        ps = np.array(sorted(set(samples.patient[sel])))
        ref = np.array([samples.target[sel][samples.patient[sel] == p].mean() for p in ps])
        prd = np.array([pred[sets == name][samples.patient[sel] == p].mean() for p in ps])
        porotic = ref <= WHO_OSTEOPOROSIS_T
        r = float(stats.pearsonr(ref, prd).statistic) if len(ps) > 2 and np.std(prd) > 0 and np.std(ref) > 0 else None
        summary[name] = {"n_patients": len(ps), "r": r, "r2": None if r is None else r * r,
                         "mae": float(skm.mean_absolute_error(ref, prd)),
                         "rmse": float(np.sqrt(skm.mean_squared_error(ref, prd))),
                         "auc_osteoporosis": (float(skm.roc_auc_score(porotic, -prd))
                                              if target == "t_score" and 0 < porotic.sum() < len(ps) else None)}
    return _write_summary(out, summary)


def evaluate_binary(out: Path, samples: Samples, oof: OutOfFold, threshold: float) -> dict:
    """Per set, per vertebra and per patient (mean probability against the patient's mean reference):
    AUC, F1, recall, precision, specificity and accuracy with bootstrap 95% CIs
    (:func:`ctbmd.evaluate.binary_agreement`); written to ``evaluation/metrics.json`` and, for each
    external site, ``evaluation/<site>/metrics.json``."""
    from ctbmd import evaluate as ev

    rows, sets, pred = oof.rows, oof.sets, oof.values
    summary = {}
    for name in sorted(set(sets)):
        sel = rows[sets == name]
        p_sel = pred[sets == name]
        ps = np.array(sorted(set(samples.patient[sel])))
        ref_p = np.array([samples.target[sel][samples.patient[sel] == p].mean() for p in ps])
        prob_p = np.array([p_sel[samples.patient[sel] == p].mean() for p in ps])
        summary[name] = {
            "threshold": threshold, "low_means": f"reference below {threshold:g}",
            "vertebra": ev.binary_agreement(samples.target[sel] < threshold, p_sel, samples.patient[sel],
                                            n_boot=EVAL_BOOTSTRAP),
            "patient": ev.binary_agreement(ref_p < threshold, prob_p, ps, n_boot=EVAL_BOOTSTRAP)}
    return _write_summary(out, summary)


def _figure(m: dict, key: str, fmt: str) -> str:
    """One figure of a ``bmd_mg_cm3`` split summary, formatted, or ``not computed (reason)``."""
    value = m
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        reason = m.get("not_computed", {}).get(key)
        return f"not computed ({reason})" if reason else "not computed"
    return fmt.format(value)


def _binary_cell(m: dict, key: str) -> str:
    v = m[key]
    if v["value"] is None:
        return f"{key} n/a"
    ci = f" ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})" if v["ci95"] else ""
    return f"{key} {v['value']:.3f}{ci}"


def out_of_fold_lines(config: dict) -> list[str]:
    """The lines ``ctbmd train`` prints for the out-of-fold figures of a model's ``config.json``.

    One line per set (and per unit, vertebra and patient, for a binary model; per evaluated model,
    ``model`` and ``calibration``, for ``bmd_mg_cm3``). A figure that could not be computed reads
    ``not computed (reason)`` (``bmd_mg_cm3``) or ``n/a``.
    """
    lines = []
    target = config["target"]
    for name, figures in config["training"]["out_of_fold"].items():
        if config.get("task") == "binary":
            for unit in ("vertebra", "patient"):
                m = figures[unit]
                lines.append(f"{name:11s} {unit:9s}: n {m['n']} ({m['n_low']} low, below {figures['threshold']:g}); "
                             + ", ".join(_binary_cell(m, k) for k in ("auc", "f1", "recall", "precision",
                                                                      "specificity", "accuracy")))
        elif target == "bmd_mg_cm3":
            for split, m in figures.items():
                lines.append(f"{name:11s} {split:11s}: vertebrae n {_figure(m, 'vertebra.n', '{:.0f}')}, "
                             f"r² {_figure(m, 'vertebra.r2', '{:.3f}')}, MAE {_figure(m, 'vertebra.mae', '{:.2f}')} "
                             f"mg/cm³, RMSE {_figure(m, 'vertebra.rmse', '{:.2f}')}; "
                             f"AUC osteoporosis {_figure(m, 'auc_osteoporosis', '{:.3f}')}")
        else:
            auc, r = figures["auc_osteoporosis"], figures["r"]
            lines.append(f"{name:11s}: patients n {figures['n_patients']}, r "
                         + ("n/a" if r is None else f"{r:.3f}, r² {r * r:.3f}")
                         + f", MAE {figures['mae']:.3f}, RMSE {figures['rmse']:.3f} ({target})"
                         + ("" if target != "t_score" else
                            "; AUC osteoporosis " + ("n/a" if auc is None else f"{auc:.3f}")))
    return lines
