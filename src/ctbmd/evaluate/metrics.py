"""Metrics: agreement of BMD values, diagnostic performance of categories, cluster-bootstrap CIs.

Every number comes from scikit-learn (``sklearn.metrics``), scipy.stats or a
numpy mean/SD; nothing is re-derived by hand.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from ctbmd.evaluate.pair import ALL_SPLITS, Paired
from ctbmd.classify import CATEGORIES, NORMAL, OSTEOPOROSIS

#: The fewest pairs (patients, or vertebrae for the per-level agreement) an agreement figure needs: Pearson
#: r, its p and r² 3 (two points always lie on a line), the SD of the differences, the Bland-Altman limits
#: and r² against the identity line 2. The regression line of ``scatter.png`` needs 3 as well.
MIN_PAIRS = {"r": 3, "p": 3, "r2": 3, "r2_identity": 2, "sd": 2, "loa_low": 2, "loa_high": 2,
             "mae": 1, "rmse": 1, "bias": 1}
#: The fewest patients a bootstrap CI needs: with one or two, the resamples repeat the same few patients
#: and the "interval" is a point or the two patients' values.
MIN_BOOTSTRAP_PATIENTS = 3
#: Bland-Altman limits of agreement: bias +- this many SDs of the differences (Bland & Altman, Lancet 1986,
#: doi 10.1016/S0140-6736(86)90837-8).
LOA_SD = 1.96
#: Percentiles of the bootstrap 95% CIs (percentile method).
CI_PERCENTILES = (2.5, 97.5)
#: The fewest finite bootstrap values a CI of :func:`evaluate` needs (fewer: no CI).
MIN_FINITE_RESAMPLES = 10
#: The fewest bootstrap values a CI of :func:`binary_agreement` needs.
MIN_BINARY_RESAMPLES = 20


# --------------------------------------------------------------------------- agreement

@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted with reference BMD (:func:`agreement`); NaN where undefined.

    Attributes
    ----------
    n : int
        Pairs.
    r, p : float
        Pearson r and its two-sided p-value (:func:`scipy.stats.pearsonr`).
    r2 : float
        r².
    r2_identity : float
        Coefficient of determination of the prediction against the identity
        line (:func:`sklearn.metrics.r2_score`).
    mae_mg_cm3, rmse_mg_cm3 : float
        Mean absolute and root mean squared error (mg/cm³).
    bias_mg_cm3, sd_mg_cm3 : float
        Mean and SD (ddof=1) of prediction - reference (mg/cm³).
    loa_low_mg_cm3, loa_high_mg_cm3 : float
        Bland-Altman 95% limits of agreement, bias -+ 1.96 SD (mg/cm³).
    """

    n: int
    r: float = math.nan
    p: float = math.nan
    r2: float = math.nan
    r2_identity: float = math.nan
    mae_mg_cm3: float = math.nan
    rmse_mg_cm3: float = math.nan
    bias_mg_cm3: float = math.nan
    sd_mg_cm3: float = math.nan
    loa_low_mg_cm3: float = math.nan
    loa_high_mg_cm3: float = math.nan

    def to_dict(self) -> dict[str, float]:
        """The figures as written to ``metrics.json``: keys n, r, p, r2, r2_identity, mae, rmse, bias, sd,
        loa_low, loa_high (all float, BMD figures in mg/cm³)."""
        return dict(n=float(self.n), r=self.r, p=self.p, r2=self.r2, r2_identity=self.r2_identity,
                    mae=self.mae_mg_cm3, rmse=self.rmse_mg_cm3, bias=self.bias_mg_cm3, sd=self.sd_mg_cm3,
                    loa_low=self.loa_low_mg_cm3, loa_high=self.loa_high_mg_cm3)


def agreement(pred: np.ndarray, ref: np.ndarray) -> Agreement:
    """Agreement of two arrays of BMD (mg/cm³), shape ``(n,)`` each.

    Pearson r and p from :func:`scipy.stats.pearsonr`; ``r2`` = r²;
    ``r2_identity`` = :func:`sklearn.metrics.r2_score` (prediction against the
    identity line); MAE and RMSE from scikit-learn; bias = mean(pred - ref);
    sd = SD(pred - ref, ddof=1); limits of agreement bias +- 1.96 sd (Bland &
    Altman 1986). NaN where n is too small (:data:`MIN_PAIRS`: r needs 3, SD 2)
    or the values do not vary (r).

    Returns
    -------
    Agreement
        ``.to_dict()`` gives the figures keyed as in ``metrics.json``.
    """
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    n = len(pred)
    if n == 0:
        return Agreement(0)
    diff = pred - ref
    bias = float(np.mean(diff))
    spread: dict[str, float] = {}
    if n >= MIN_PAIRS["sd"]:
        sd = float(np.std(diff, ddof=1))
        spread = dict(sd_mg_cm3=sd, loa_low_mg_cm3=bias - LOA_SD * sd, loa_high_mg_cm3=bias + LOA_SD * sd,
                      r2_identity=float(skm.r2_score(ref, pred)))
    if n >= MIN_PAIRS["r"] and np.ptp(pred) > 0 and np.ptp(ref) > 0:
        res = stats.pearsonr(pred, ref)
        spread.update(r=float(res.statistic), p=float(res.pvalue), r2=float(res.statistic) ** 2)
    return Agreement(n, mae_mg_cm3=float(skm.mean_absolute_error(ref, pred)),
                     rmse_mg_cm3=float(skm.root_mean_squared_error(ref, pred)), bias_mg_cm3=bias, **spread)


# --------------------------------------------------------------------------- diagnosis

@dataclass(frozen=True)
class ClassScores:
    """One-vs-rest scores of one category (or their macro average); NaN where the denominator is 0."""

    precision: float
    recall: float
    f1: float
    specificity: float


@dataclass(frozen=True)
class BinaryDiagnosis:
    """Osteoporosis vs not: ``confusion`` 2x2 ``((TN, FP), (FN, TP))``, and scikit-learn's figures.

    ``recall`` is the sensitivity; NaN where a denominator is 0.
    """

    confusion: tuple[tuple[int, int], tuple[int, int]]
    accuracy: float
    precision: float
    recall: float
    specificity: float
    f1: float

    def to_dict(self) -> dict:
        """The figures as written to ``metrics.json`` (``confusion`` as a list of lists)."""
        return {"confusion": [list(row) for row in self.confusion], "accuracy": self.accuracy,
                "precision": self.precision, "recall": self.recall, "specificity": self.specificity, "f1": self.f1}


@dataclass(frozen=True)
class Diagnosis:
    """Diagnostic performance of predicted categories against reference categories (:func:`diagnosis`).

    Attributes
    ----------
    n : int
        Patients.
    confusion : tuple of tuple of int
        3x3, rows = reference, columns = prediction, in the order of :data:`CATEGORIES`.
    accuracy : float
        3-class accuracy.
    per_class : tuple of ClassScores
        One per category, in the order of :data:`CATEGORIES`.
    macro : ClassScores
        Mean of the defined (finite) per-class values.
    binary : BinaryDiagnosis
        Osteoporosis vs not.
    auc_osteoporosis, auc_low_bmd : float
        ROC AUC of osteoporosis, and of low BMD (osteopenia or osteoporosis),
        scored by the predicted BMD (lower = more likely); NaN with one class.
    """

    n: int
    confusion: tuple[tuple[int, ...], ...]
    accuracy: float
    per_class: tuple[ClassScores, ...]
    macro: ClassScores
    binary: BinaryDiagnosis
    auc_osteoporosis: float
    auc_low_bmd: float

    def to_dict(self) -> dict:
        """The figures as written to ``metrics.json``: ``n``, ``confusion``, ``accuracy``, then
        ``precision_<category>`` ... ``specificity_<category>``, ``<name>_macro``, ``binary`` and the AUCs."""
        out: dict = {"n": float(self.n), "confusion": [list(row) for row in self.confusion],
                     "accuracy": self.accuracy}
        names = ("precision", "recall", "f1", "specificity")
        for name in names:
            for c, scores in zip(CATEGORIES, self.per_class):
                out[f"{name}_{c}"] = getattr(scores, name)
        for name in names:
            out[f"{name}_macro"] = getattr(self.macro, name)
        out["binary"] = self.binary.to_dict()
        out["auc_osteoporosis"], out["auc_low_bmd"] = self.auc_osteoporosis, self.auc_low_bmd
        return out


def _binary_diagnosis(yb: np.ndarray, ypb: np.ndarray) -> BinaryDiagnosis:
    """Osteoporosis (True) vs not, from bool ``(n,)`` reference and prediction."""
    # per class of the binary split: index 1 = osteoporosis (precision, recall = sensitivity, F1),
    # index 0 = not osteoporosis, whose recall is the specificity
    bp, br, bf, _ = skm.precision_recall_fscore_support(yb, ypb, labels=[False, True], zero_division=np.nan)
    cm = skm.confusion_matrix(yb, ypb, labels=[False, True]).tolist()
    return BinaryDiagnosis(confusion=(tuple(cm[0]), tuple(cm[1])), accuracy=float(skm.accuracy_score(yb, ypb)),
                           precision=float(bp[1]), recall=float(br[1]), specificity=float(br[0]), f1=float(bf[1]))


def diagnosis(ref_category: np.ndarray, pred_category: np.ndarray, pred_bmd: np.ndarray) -> Diagnosis:
    """Diagnostic performance of predicted categories and BMD against reference categories.

    Parameters
    ----------
    ref_category, pred_category : (n,) arrays of str
        Names from :data:`CATEGORIES`.
    pred_bmd : (n,) array of float
        Predicted BMD (mg/cm³); its negative is the score of the ROC curves.

    Returns
    -------
    Diagnosis
        All from :mod:`sklearn.metrics`. A ratio with a zero denominator (a
        class never predicted or absent) is NaN, and the macro averages are
        over the defined per-class values. ``.to_dict()`` gives the figures
        keyed as in ``metrics.json``.
    """
    y, yp = np.asarray(ref_category, object), np.asarray(pred_category, object)
    score = -np.asarray(pred_bmd, float)
    labels = list(CATEGORIES)
    # undefined ratios (no such class predicted, or none in the reference) are NaN, not 0, so a bootstrap
    # resample that lacks a class does not drag the CI to 0
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, yp, labels=labels, zero_division=np.nan)
    # specificity of class c = recall of "not c" (one-vs-rest), from sklearn's per-class confusion matrices
    mcm = skm.multilabel_confusion_matrix(y, yp, labels=labels)  # [[TN, FP], [FN, TP]] per class
    spec = [float(m[0, 0] / (m[0, 0] + m[0, 1])) if m[0].sum() else math.nan for m in mcm]
    per_class = tuple(ClassScores(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(prec, rec, f1, spec))

    def macro(values) -> float:
        defined = [float(v) for v in values if math.isfinite(v)]
        return float(np.mean(defined)) if defined else math.nan

    auc = {}
    for name, positive in (("osteoporosis", y == OSTEOPOROSIS), ("low_bmd", y != NORMAL)):
        auc[name] = float(skm.roc_auc_score(positive, score)) if 0 < positive.sum() < len(y) else math.nan
    confusion = skm.confusion_matrix(y, yp, labels=labels).tolist()
    return Diagnosis(n=len(y), confusion=tuple(tuple(row) for row in confusion),
                     accuracy=float(skm.accuracy_score(y, yp)), per_class=per_class,
                     macro=ClassScores(macro(prec), macro(rec), macro(f1), macro(spec)),
                     binary=_binary_diagnosis(y == OSTEOPOROSIS, yp == OSTEOPOROSIS),
                     auc_osteoporosis=auc["osteoporosis"], auc_low_bmd=auc["low_bmd"])


# --------------------------------------------------------------------------- per split, with CIs

def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    """The float figures of a nested metrics dict under dotted keys (``patient.mae``, ``diagnosis.binary.f1``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            out[prefix + k] = v
    return out


def _level_rows(p: Paired) -> list[np.ndarray]:
    """For each patient index, the indices of its level pairs."""
    where: dict[str, list[int]] = {}
    for j, pid in enumerate(p.level_patient):
        where.setdefault(pid, []).append(j)
    return [np.asarray(where.get(pid, []), int) for pid in p.patient_id]


def _metrics(p: Paired, patients: np.ndarray, rows: list[np.ndarray]) -> dict:
    """Agreement (QCT) and diagnosis for the patients at indices ``patients`` (repeats allowed) with their levels."""
    levels = np.concatenate([rows[i] for i in patients] + [np.array([], int)]).astype(int)
    out: dict = {}
    if p.kind == "qct":
        out["level"] = agreement(p.level_pred[levels], p.level_ref[levels]).to_dict()
        out["patient"] = agreement(p.patient_pred[patients], p.patient_ref[patients]).to_dict()
    out["diagnosis"] = diagnosis(p.patient_ref_category[patients], p.patient_pred_category[patients],
                                 p.patient_pred[patients]).to_dict()
    return out


def _percentile_ci(values: list[float]) -> list[float]:
    """The percentile 95% interval ``[low, high]`` of bootstrap values."""
    return [float(np.percentile(values, CI_PERCENTILES[0])), float(np.percentile(values, CI_PERCENTILES[1]))]


def _bootstrap(p: Paired, patients: np.ndarray, rows: list[np.ndarray], n_boot: int,
               rng: np.random.Generator) -> dict[str, list | None]:
    """Percentile 95% CI per flat metric key, resampling patients (with their levels) with replacement.

    A key whose resamples give fewer than 10 finite values (r of resamples with two distinct patients, an
    AUC of resamples with one class) has no CI: None.
    """
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.choice(patients, size=len(patients), replace=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = _metrics(p, pick, rows)
        for k, v in _flat(m).items():
            samples.setdefault(k, []).append(v)
    ci = {}
    for k, v in samples.items():
        arr = np.asarray(v, float)
        arr = arr[np.isfinite(arr)]
        ci[k] = _percentile_ci(arr) if len(arr) >= MIN_FINITE_RESAMPLES else None
    return ci


def _not_computed(m: dict, n_patients: int, n_boot: int) -> dict[str, str]:
    """Why figures of one split's metrics ``m`` are missing: ``{flat key: reason}``, e.g.
    ``{"patient.r": "needs at least 3 patients, got 1", "ci": "needs at least 3 patients, got 1"}``."""
    out = {}
    for unit, one, many in (("level", "vertebra", "vertebrae"), ("patient", "patient", "patients")):
        if unit in m:
            n = int(m[unit]["n"])
            out.update({f"{unit}.{k}": f"needs at least {need} {one if need == 1 else many}, got {n}"
                        for k, need in MIN_PAIRS.items() if n < need})
    d = m["diagnosis"]
    for key, classes in (("auc_osteoporosis", "osteoporosis and no osteoporosis"),
                         ("auc_low_bmd", "low and normal BMD")):
        if not math.isfinite(d[key]):
            out[f"diagnosis.{key}"] = (f"needs at least 2 patients, got {n_patients}" if n_patients < 2 else
                                       f"needs reference patients with {classes}")
    if n_boot > 0 and n_patients < MIN_BOOTSTRAP_PATIENTS:
        out["ci"] = f"needs at least {MIN_BOOTSTRAP_PATIENTS} patients, got {n_patients}"
    return out


def figure_text(m: dict, key: str, fmt: str, ci: bool = False) -> str:
    """One figure of a split's metrics ``m`` (:func:`evaluate`), formatted, or why it is missing.

    ``key`` is dotted (``patient.r2``, ``diagnosis.auc_osteoporosis``); ``fmt`` a format such as ``"{:.3f}"``.
    With ``ci``, the bootstrap 95% CI follows in brackets where there is one. A figure that could not be
    computed reads ``not computed: needs at least 3 patients, got 1`` (the reason from ``m["not_computed"]``),
    or ``–`` where it is undefined for another reason (a ratio with no patient in its denominator).
    """
    value = m
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        reason = m.get("not_computed", {}).get(key)
        return f"not computed: {reason}" if reason else "–"
    text = fmt.format(value)
    interval = m.get("ci", {}).get(key) if ci else None
    if interval and all(c is not None and math.isfinite(c) for c in interval):
        text += f" [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"
    return text


def evaluate(p: Paired, n_boot: int = 1000, seed: int = 0) -> dict:
    """All metrics, per split and for all patients, each figure with a bootstrap 95% CI.

    Parameters
    ----------
    p : Paired
    n_boot : int
        Bootstrap resamples (0 for none).
    seed : int
        Seed of the resampling (:func:`numpy.random.default_rng`).

    Returns
    -------
    dict
        ``{"kind", "n_boot", "seed", "ci_method", "unmatched_reference",
        "notes", "splits": {name: {"level", "patient", "diagnosis", "ci":
        {flat_key: [low, high] or None}, "not_computed": {flat_key:
        reason}}}}``; ``level`` and ``patient`` are :meth:`Agreement.to_dict`
        (QCT only), ``diagnosis`` :meth:`Diagnosis.to_dict`. The split ``all``
        holds every patient. A figure that needs more pairs than the split has
        (:data:`MIN_PAIRS`) is NaN, with the reason in ``not_computed``
        (``"needs at least 3 patients, got 1"``); so are the CIs (``ci`` empty
        and ``not_computed["ci"]``) of a split with fewer than
        :data:`MIN_BOOTSTRAP_PATIENTS` patients.
    """
    names = [ALL_SPLITS] + sorted({s for s in p.patient_split if s != ALL_SPLITS})
    out = {"kind": p.kind, "n_boot": n_boot, "seed": seed, "ci_method": "percentile bootstrap over patients",
           "unmatched_reference": list(p.unmatched_reference), "notes": list(p.notes), "splits": {}}
    rng = np.random.default_rng(seed)
    rows = _level_rows(p)
    for name in names:
        members = np.arange(len(p.patient_id)) if name == ALL_SPLITS else np.nonzero(p.patient_split == name)[0]
        m = _metrics(p, members, rows)
        enough = n_boot > 0 and len(members) >= MIN_BOOTSTRAP_PATIENTS
        m["ci"] = _bootstrap(p, members, rows, n_boot, rng) if enough else {}
        m["not_computed"] = _not_computed(m, len(members), n_boot)
        out["splits"][name] = m
    return out


# --------------------------------------------------------------------------- binary classifiers

def _binary_figures(y: np.ndarray, p: np.ndarray, cut: float) -> dict[str, float | None]:
    """AUC, F1, recall, precision, specificity and accuracy of scores ``p`` cut at ``cut`` against bool ``y``."""
    pred = p >= cut
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[False, True]).ravel()
    return {"auc": float(skm.roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
            "f1": float(skm.f1_score(y, pred, zero_division=0)) if y.any() or pred.any() else None,
            "recall": float(tp / (tp + fn)) if tp + fn else None,
            "precision": float(tp / (tp + fp)) if tp + fp else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "accuracy": float((tp + tn) / len(y)) if len(y) else None}


def binary_agreement(low: np.ndarray, p_low: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                     seed: int = 0, cut: float = 0.5) -> dict:
    """A binary classifier of low BMD against its reference, as Peng et al. 2024 reported theirs.

    Parameters
    ----------
    low : numpy.ndarray
        bool ``(n,)``: the reference says low BMD.
    p_low : numpy.ndarray
        float ``(n,)``: the predicted probability of low BMD.
    groups : numpy.ndarray
        ``(n,)`` patient of each row; the bootstrap resamples patients with all their rows.
    n_boot, seed : int
        Bootstrap resamples and seed (95% percentile intervals).
    cut : float
        Probability at or above which the prediction is "low".

    Returns
    -------
    dict
        ``n``, ``n_low`` and, each as ``{"value", "ci95"}`` (None where undefined, e.g. an AUC with one
        class; ``ci95`` None with fewer than 20 defined resamples): ``auc`` (ROC AUC), ``f1``, ``recall``
        (sensitivity), ``precision``, ``specificity`` and ``accuracy`` (scikit-learn).
    """
    low = np.asarray(low, bool)
    p_low = np.asarray(p_low, float)
    groups = np.asarray(groups)
    point = _binary_figures(low, p_low, cut)
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    rows = {g: np.nonzero(groups == g)[0] for g in ids}
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot if len(ids) > 1 else 0):
        ix = np.concatenate([rows[g] for g in rng.choice(ids, len(ids))])
        for k, v in _binary_figures(low[ix], p_low[ix], cut).items():
            if v is not None:
                samples[k].append(v)
    out: dict = {"n": int(len(low)), "n_low": int(low.sum())}
    for k, v in point.items():
        ci = samples[k]
        out[k] = {"value": v, "ci95": _percentile_ci(ci) if v is not None and len(ci) >= MIN_BINARY_RESAMPLES
                  else None}
    return out
