"""Evaluation: compare ctbmd (or any) BMD predictions with QCT or DXA references.

The tables follow what the field's papers report (e.g. Peng et al. 2024,
Li et al. 2024, see ``docs/BACKGROUND.md``):

* **agreement** per level and per patient: n, Pearson r with its p-value, r²
  (Pearson r squared), the coefficient of determination against the identity
  line (``r2_identity``), MAE, RMSE, bias (mean of prediction - reference), the
  SD of the differences and the Bland-Altman 95% limits of agreement (bias +-
  1.96 SD; Bland & Altman, Lancet 1986, doi 10.1016/S0140-6736(86)90837-8);
* **diagnosis** per patient: the 3-class confusion matrix (normal, osteopenia,
  osteoporosis), accuracy, per-class and macro precision, recall, F1 and
  specificity; the same for the binary osteoporosis split; ROC AUC for
  osteoporosis and for low BMD (osteopenia or osteoporosis), scored by the
  predicted BMD (lower = more likely);
* a seeded **bootstrap 95% CI** (percentile method, 2.5th-97.5th) for every
  figure, resampling patients with replacement so that the levels of one
  patient stay together (cluster bootstrap).

Every number comes from scikit-learn (``sklearn.metrics``), scipy.stats or a
numpy mean/SD; nothing is re-derived by hand.

Reference kinds
---------------
``qct``
    Per-level volumetric BMD (``patient_id``, ``level``, ``bmd_mg_cm3``;
    K2HPO4- or CaHA-equivalent as the user's QCT reports it). The reference
    category is ACR-QCT (> 120 normal, 80-120 osteopenia, < 80 osteoporosis
    mg/cm³; ACR-SPR-SSR practice parameter for QCT, 2018) of the patient mean.
``dxa``
    Per-patient ``t_score`` and/or ``category``. The reference category is the
    given one, or WHO from the T-score (<= -2.5 osteoporosis, < -1 osteopenia;
    WHO Technical Report Series 843, 1994).

In both cases the predicted category is ACR-QCT of the predicted patient BMD
(mean of the levels used), so it can be compared with either reference.

Matching scans to patients
--------------------------
A prediction folder holds one ``result.json`` per scan (from ``ctbmd run``),
found recursively. Its patient is, in order: the ``patient_id`` column of a
mapping CSV (``--map``, with a ``scan`` column holding the folder's path
relative to PRED, its name, or the input path recorded in ``result.json``);
the DICOM PatientID stored in ``result.json``; the name of the folder that
holds ``result.json``. A prediction CSV carries ``patient_id`` (and ``level``
+ ``bmd_mg_cm3`` per level, or ``bmd_mg_cm3`` per patient) itself.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from ctbmd.classify import ACR_LEVELS, acr_category, who_category
from ctbmd.errors import InvalidInputError
from ctbmd.types import VERSE_LABELS

CATEGORIES = ("normal", "osteopenia", "osteoporosis")
#: Areal DXA BMD is 0.3-1.6 g/cm²; volumetric QCT BMD is 10-350 mg/cm³. A reference
#: column whose median is below this is taken for g/cm² and refused.
MIN_PLAUSIBLE_MEDIAN_MG_CM3 = 5.0
#: Largest plausible trabecular BMD (mg/cm³); larger values are not mg/cm³ (HU? mg/mL x 10?).
MAX_PLAUSIBLE_MG_CM3 = 1000.0
ALL_SPLITS = "all"
#: The fewest pairs (patients, or vertebrae for the per-level agreement) an agreement figure needs: Pearson
#: r, its p and r² 3 (two points always lie on a line), the SD of the differences, the Bland-Altman limits
#: and r² against the identity line 2. The regression line of ``scatter.png`` needs 3 as well.
MIN_PAIRS = {"r": 3, "p": 3, "r2": 3, "r2_identity": 2, "sd": 2, "loa_low": 2, "loa_high": 2,
             "mae": 1, "rmse": 1, "bias": 1}
#: The fewest patients a bootstrap CI needs: with one or two, the resamples repeat the same few patients
#: and the "interval" is a point or the two patients' values.
MIN_BOOTSTRAP_PATIENTS = 3


@dataclass(frozen=True)
class LevelValue:
    """One vertebra's BMD (mg/cm³) for one patient."""

    patient_id: str
    level: str
    bmd_mg_cm3: float


@dataclass(frozen=True)
class PatientValue:
    """One patient's value: mean BMD of the levels used (mg/cm³), T-score and category."""

    patient_id: str
    bmd_mg_cm3: float | None = None
    t_score: float | None = None
    category: str | None = None
    levels_used: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reference:
    """A reference table: ``kind`` is ``"qct"`` (per-level) or ``"dxa"`` (per-patient)."""

    kind: str
    path: str
    levels: tuple[LevelValue, ...] = ()
    patients: tuple[PatientValue, ...] = ()
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Predictions:
    """Predicted per-level and per-patient BMD, with the scans that had no result."""

    path: str
    levels: tuple[LevelValue, ...]
    patients: tuple[PatientValue, ...]
    splits: dict[str, str] = field(default_factory=dict)
    failed: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- reading

def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV keyed by lower-case stripped column names; errors for empty or unreadable files."""
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the file as UTF-8 text ({type(exc).__name__})", path) from None
    if not text.strip():
        raise InvalidInputError("empty file: no header and no rows", path)
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = [h.strip().lower() for h in next(reader)]
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise InvalidInputError(f"row {reader.line_num} has {len(values)} fields, the header has {len(header)}",
                                    path)
        rows.append({h: v.strip() for h, v in zip(header, values)})
    if not rows:
        raise InvalidInputError("empty file: a header but no rows", path)
    return header, rows


def _require(header: list[str], names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in header]
    if missing:
        raise InvalidInputError(f"missing column {', '.join(repr(m) for m in missing)} "
                                f"(columns found: {', '.join(header)})", path)


def normalise_level(text: str) -> str | None:
    """``"l1"``, ``"L 1"``, ``"L1 "`` -> ``"L1"``; None when not a vertebral level T1-T12, L1-L6 (VerSe names)."""
    name = re.sub(r"\s+", "", text).upper()
    return name if name in VERSE_LABELS and name[0] in "TL" else None


def _number(value: str, column: str, row: int, path: Path) -> float | None:
    if value == "" or value.lower() in ("na", "nan", "none"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(f"row {row}: {column} {value!r} is not a number", path) from None
    if not math.isfinite(number):
        return None
    return number


def _category(value: str, row: int, path: Path) -> str | None:
    if value == "":
        return None
    name = value.strip().lower()
    if name not in CATEGORIES:
        raise InvalidInputError(f"row {row}: category {value!r} is not one of {', '.join(CATEGORIES)}", path)
    return name


def _check_mg_cm3(values: list[float], column: str, path: Path) -> None:
    if not values:
        raise InvalidInputError(f"column {column!r} holds no numbers", path)
    median = float(np.median(values))
    if median < MIN_PLAUSIBLE_MEDIAN_MG_CM3:
        raise InvalidInputError(
            f"column {column!r} looks like areal DXA BMD in g/cm² (median {median:.3g}), not volumetric "
            "BMD in mg/cm³; give QCT values in mg/cm³, or DXA as t_score/category", path)
    if max(values) > MAX_PLAUSIBLE_MG_CM3 or min(values) < -100.0:
        raise InvalidInputError(f"column {column!r} has values outside -100..{MAX_PLAUSIBLE_MG_CM3:.0f} mg/cm³ "
                                f"(range {min(values):.4g}..{max(values):.4g}); is it in mg/cm³?", path)


def _splits(rows: list[dict[str, str]], split_column: str | None, path: Path) -> dict[str, str]:
    if split_column is None:
        return {}
    out: dict[str, str] = {}
    for i, r in enumerate(rows, start=2):
        value = r.get(split_column, "")
        if not value:
            raise InvalidInputError(f"row {i}: empty {split_column!r} for patient {r['patient_id']!r}", path)
        if out.setdefault(r["patient_id"], value) != value:
            raise InvalidInputError(f"patient {r['patient_id']!r} is in two splits "
                                    f"({out[r['patient_id']]!r} and {value!r})", path)
    return out


def read_reference(path: str | Path, split_column: str | None = None) -> Reference:
    """Read a QCT (per-level) or DXA (per-patient) reference CSV.

    Parameters
    ----------
    path : str or Path
        CSV with ``patient_id`` and either ``level`` + ``bmd_mg_cm3`` (QCT) or
        ``t_score`` and/or ``category`` (DXA). Column names are matched
        case-insensitively; the delimiter may be ``,``, ``;`` or a tab.
    split_column : str, optional
        Column naming each patient's data set (e.g. train/validation/test/external).

    Returns
    -------
    Reference

    Raises
    ------
    InvalidInputError
        Missing file, empty file, missing column, unknown level name, duplicate
        patient (or patient-level pair), non-numeric value, a ``bmd_mg_cm3``
        column that looks like g/cm², a T-score outside -10..10, an unknown
        category, or a patient in two splits. The message names the file, the
        row and the problem on one line.
    """
    path = Path(path)
    header, rows = _read_csv(path)
    _require(header, ("patient_id",), path)
    split_column = split_column.lower() if split_column else None
    if split_column:
        _require(header, (split_column,), path)
    for i, r in enumerate(rows, start=2):
        if not r["patient_id"]:
            raise InvalidInputError(f"row {i}: empty patient_id", path)
    splits = _splits(rows, split_column, path)
    if "level" in header or "bmd_mg_cm3" in header:
        _require(header, ("level", "bmd_mg_cm3"), path)
        levels, seen = [], {}
        for i, r in enumerate(rows, start=2):
            level = normalise_level(r["level"])
            if level is None:
                raise InvalidInputError(f"row {i}: unknown level name {r['level']!r} (expected T1-T12 or L1-L6, "
                                        "e.g. L1)", path)
            key = (r["patient_id"], level)
            if key in seen:
                raise InvalidInputError(f"duplicate patient {r['patient_id']!r} level {level} "
                                        f"(rows {seen[key]} and {i})", path)
            seen[key] = i
            value = _number(r["bmd_mg_cm3"], "bmd_mg_cm3", i, path)
            if value is not None:
                levels.append(LevelValue(r["patient_id"], level, value))
        _check_mg_cm3([lv.bmd_mg_cm3 for lv in levels], "bmd_mg_cm3", path)
        return Reference("qct", str(path), levels=tuple(levels), splits=splits)
    if "t_score" not in header and "category" not in header:
        raise InvalidInputError("missing column: a QCT reference needs 'level' and 'bmd_mg_cm3', a DXA reference "
                                f"'t_score' or 'category' (columns found: {', '.join(header)})", path)
    patients, seen = [], {}
    for i, r in enumerate(rows, start=2):
        pid = r["patient_id"]
        if pid in seen:
            raise InvalidInputError(f"duplicate patient {pid!r} (rows {seen[pid]} and {i})", path)
        seen[pid] = i
        t = _number(r.get("t_score", ""), "t_score", i, path)
        if t is not None and not -10.0 <= t <= 10.0:
            raise InvalidInputError(f"row {i}: t_score {t:g} is outside -10..10", path)
        cat = _category(r.get("category", ""), i, path)
        if cat is None and t is not None:
            cat = who_category(t)
        if cat is None:
            raise InvalidInputError(f"row {i}: patient {pid!r} has neither a t_score nor a category", path)
        patients.append(PatientValue(pid, t_score=t, category=cat))
    return Reference("dxa", str(path), patients=tuple(patients), splits=splits)


def _read_mapping(path: Path) -> dict[str, str]:
    header, rows = _read_csv(path)
    _require(header, ("scan", "patient_id"), path)
    out = {}
    for i, r in enumerate(rows, start=2):
        if r["scan"] in out:
            raise InvalidInputError(f"duplicate scan {r['scan']!r} (row {i})", path)
        out[r["scan"]] = r["patient_id"]
    return out


def _patient_from_result(result: dict, field_name: str) -> PatientValue | None:
    p = result.get("patient") or {}
    if field_name == "bmd_mg_cm3":
        value, used = p.get("bmd_mg_cm3"), tuple(p.get("levels_used") or ())
    else:  # e.g. bmd_dl_mg_cm3: mean of that field over the levels ctbmd used for the patient
        used = tuple(p.get("levels_used") or ())
        vals = [lv.get(field_name) for lv in result.get("levels", []) if lv["level"] in used]
        vals = [v for v in vals if v is not None]
        value = float(np.mean(vals)) if vals else None
    if value is None:
        return None
    return PatientValue("", bmd_mg_cm3=float(value), category=acr_category(float(value)), levels_used=used)


def read_predictions(path: str | Path, mapping: str | Path | None = None, field_name: str = "bmd_mg_cm3",
                     split_column: str | None = None) -> Predictions:
    """Read predictions: a folder of ``ctbmd run`` outputs, or a CSV.

    Parameters
    ----------
    path : str or Path
        A folder searched recursively for ``result.json``, or a CSV with
        ``patient_id`` and either ``level`` + ``bmd_mg_cm3`` (per level; the
        patient value is then the mean of L1-L4 present) or ``bmd_mg_cm3`` per
        patient.
    mapping : str or Path, optional
        CSV with ``scan`` and ``patient_id`` columns (see the module docstring).
    field_name : str
        The per-level value to read from ``result.json``: ``bmd_mg_cm3``
        (phantomless calibration) or e.g. ``bmd_dl_mg_cm3`` (a learned model).
    split_column : str, optional
        Split column of a prediction CSV (a reference's split column wins).

    Raises
    ------
    InvalidInputError
        Nothing found, unreadable ``result.json``, two scans mapped to one
        patient, or CSV problems (as in :func:`read_reference`).
    """
    path = Path(path)
    if path.is_dir():
        return _read_result_folder(path, mapping, field_name)
    header, rows = _read_csv(path)
    _require(header, ("patient_id", "bmd_mg_cm3"), path)
    split_column = split_column.lower() if split_column and split_column.lower() in header else None
    splits = _splits(rows, split_column, path)
    if "level" in header:
        ref = read_reference(path)  # same checks and parsing as a QCT reference
        levels = ref.levels
        patients = []
        for pid in sorted({lv.patient_id for lv in levels}):
            own = {lv.level: lv.bmd_mg_cm3 for lv in levels if lv.patient_id == pid}
            used = tuple(lv for lv in ACR_LEVELS if lv in own)
            if used:
                value = float(np.mean([own[lv] for lv in used]))
                patients.append(PatientValue(pid, value, category=acr_category(value), levels_used=used))
        return Predictions(str(path), tuple(levels), tuple(patients), splits)
    patients, seen = [], {}
    for i, r in enumerate(rows, start=2):
        if r["patient_id"] in seen:
            raise InvalidInputError(f"duplicate patient {r['patient_id']!r} (rows {seen[r['patient_id']]} and {i})",
                                    path)
        seen[r["patient_id"]] = i
        value = _number(r["bmd_mg_cm3"], "bmd_mg_cm3", i, path)
        if value is not None:
            patients.append(PatientValue(r["patient_id"], value, category=acr_category(value)))
    _check_mg_cm3([p.bmd_mg_cm3 for p in patients], "bmd_mg_cm3", path)
    return Predictions(str(path), (), tuple(patients), splits)


def _read_result_folder(root: Path, mapping: str | Path | None, field_name: str) -> Predictions:
    # hidden folders hold unfinished output (a run's or a batch's staging): never a patient
    files = sorted(f for f in root.rglob("result.json")
                   if not any(part.startswith(".") for part in f.relative_to(root).parts[:-1]))
    failed: list[tuple[str, str]] = []
    if not files:
        raise InvalidInputError("no result.json found (expected one folder of `ctbmd run` output per scan)", root)
    mapped = _read_mapping(Path(mapping)) if mapping else {}
    levels, patients, owner = [], [], {}
    for f in files:
        try:
            result = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"unreadable result.json ({type(exc).__name__})", f) from None
        rel = str(f.parent.relative_to(root))
        source = (result.get("input") or {}).get("path", "")
        pid = None
        for key in (rel, f.parent.name, source, Path(source).name if source else ""):
            if key and key in mapped:
                pid = mapped[key]
                break
        if pid is None and mapping:
            raise InvalidInputError(f"scan {rel!r} is not in the mapping CSV (its 'scan' column)", Path(mapping))
        pid = pid or (result.get("input") or {}).get("patient_id") or f.parent.name
        if pid in owner:
            raise InvalidInputError(f"two scans for patient {pid!r}: {owner[pid]} and {rel}; "
                                    "keep one scan per patient", root)
        owner[pid] = rel
        for lv in result.get("levels", []):
            value = lv.get(field_name)
            if value is not None:
                levels.append(LevelValue(pid, lv["level"], float(value)))
        patient = _patient_from_result(result, field_name)
        if patient is not None:
            patients.append(PatientValue(pid, patient.bmd_mg_cm3, category=patient.category,
                                         levels_used=patient.levels_used))
        else:
            failed.append((rel, "no patient BMD in result.json"))
    return Predictions(str(root), tuple(levels), tuple(patients), {}, tuple(failed))


# --------------------------------------------------------------------------- pairing

@dataclass(frozen=True)
class Paired:
    """Matched prediction/reference values, ready for the metrics.

    ``level_*`` arrays have one entry per (patient, level) pair; ``patient_*``
    arrays one per patient. BMD in mg/cm³; categories are names from
    :data:`CATEGORIES`. ``kind`` is the reference kind.
    """

    kind: str
    level_patient: np.ndarray
    level_name: np.ndarray
    level_pred: np.ndarray
    level_ref: np.ndarray
    patient_id: np.ndarray
    patient_pred: np.ndarray
    patient_ref: np.ndarray  # mg/cm³ (qct) or NaN (dxa)
    patient_pred_category: np.ndarray
    patient_ref_category: np.ndarray
    patient_split: np.ndarray
    unmatched_reference: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def pair(pred: Predictions, ref: Reference) -> Paired:
    """Match predictions to the reference by ``patient_id`` (and level).

    The patient reference of a QCT table is the mean of the reference levels
    that the prediction used for the patient (its ``levels_used``), so both
    sides average the same vertebrae.

    Raises
    ------
    InvalidInputError
        A predicted patient that is not in the reference (named), or no patient
        in common.
    """
    ref_ids = {lv.patient_id for lv in ref.levels} | {p.patient_id for p in ref.patients}
    pred_ids = {p.patient_id for p in pred.patients} | {lv.patient_id for lv in pred.levels}
    unknown = sorted(pred_ids - ref_ids)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidInputError(f"predicted patient {', '.join(repr(u) for u in unknown[:5])}{more} not in the "
                                f"reference {ref.path} (unmatched ID; see --map)", pred.path)
    splits = {**pred.splits, **ref.splits}
    notes = []
    lp, ln, lx, ly = [], [], [], []
    ref_level = {(lv.patient_id, lv.level): lv.bmd_mg_cm3 for lv in ref.levels}
    for lv in pred.levels:
        if (lv.patient_id, lv.level) in ref_level:
            lp.append(lv.patient_id)
            ln.append(lv.level)
            lx.append(lv.bmd_mg_cm3)
            ly.append(ref_level[(lv.patient_id, lv.level)])
    pid, px, py, pc, rc, sp = [], [], [], [], [], []
    ref_patient = {p.patient_id: p for p in ref.patients}
    for p in pred.patients:
        if ref.kind == "qct":
            own = {lv: ref_level[(p.patient_id, lv)] for lv in (p.levels_used or ACR_LEVELS)
                   if (p.patient_id, lv) in ref_level}
            if not own:
                notes.append(f"patient {p.patient_id}: no reference at the levels used ({'+'.join(p.levels_used)})")
                continue
            y = float(np.mean(list(own.values())))
            cat = acr_category(y)
        else:
            y, cat = math.nan, ref_patient[p.patient_id].category
        pid.append(p.patient_id)
        px.append(p.bmd_mg_cm3)
        py.append(y)
        pc.append(p.category)
        rc.append(cat)
        sp.append(splits.get(p.patient_id, ALL_SPLITS))
    if not pid:
        raise InvalidInputError("no patient in common between predictions and reference", pred.path)
    missing = tuple(sorted(ref_ids - set(pid)))
    return Paired(ref.kind, np.array(lp, object), np.array(ln, object), np.array(lx, float), np.array(ly, float),
                  np.array(pid, object), np.array(px, float), np.array(py, float), np.array(pc, object),
                  np.array(rc, object), np.array(sp, object), missing, tuple(notes))


# --------------------------------------------------------------------------- metrics

def agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Agreement of two (n,) arrays of BMD (mg/cm³): n, r, p, r2, r2_identity, mae, rmse, bias, sd, loa_low, loa_high.

    Pearson r and p from :func:`scipy.stats.pearsonr`; ``r2`` = r²;
    ``r2_identity`` = :func:`sklearn.metrics.r2_score` (prediction against the
    identity line); MAE and RMSE from scikit-learn; bias = mean(pred - ref);
    sd = SD(pred - ref, ddof=1); limits of agreement bias +- 1.96 sd (Bland &
    Altman 1986). NaN where n is too small (:data:`MIN_PAIRS`: r needs 3, SD 2)
    or the values do not vary (r).
    """
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    n = len(pred)
    out = dict(n=float(n), r=math.nan, p=math.nan, r2=math.nan, r2_identity=math.nan, mae=math.nan, rmse=math.nan,
               bias=math.nan, sd=math.nan, loa_low=math.nan, loa_high=math.nan)
    if n == 0:
        return out
    diff = pred - ref
    out.update(mae=float(skm.mean_absolute_error(ref, pred)), rmse=float(skm.root_mean_squared_error(ref, pred)),
               bias=float(np.mean(diff)))
    if n >= MIN_PAIRS["sd"]:
        out["sd"] = float(np.std(diff, ddof=1))
        out["loa_low"], out["loa_high"] = out["bias"] - 1.96 * out["sd"], out["bias"] + 1.96 * out["sd"]
        out["r2_identity"] = float(skm.r2_score(ref, pred))
    if n >= MIN_PAIRS["r"] and np.ptp(pred) > 0 and np.ptp(ref) > 0:
        res = stats.pearsonr(pred, ref)
        out.update(r=float(res.statistic), p=float(res.pvalue), r2=float(res.statistic) ** 2)
    return out


def diagnosis(ref_category: np.ndarray, pred_category: np.ndarray, pred_bmd: np.ndarray,
              ref_for_auc: np.ndarray | None = None) -> dict:
    """Diagnostic performance of predicted categories and BMD against reference categories.

    Parameters
    ----------
    ref_category, pred_category : (n,) arrays of str
        Names from :data:`CATEGORIES`.
    pred_bmd : (n,) array of float
        Predicted BMD (mg/cm³); its negative is the score of the ROC curves.

    Returns
    -------
    dict
        ``confusion`` (3x3, rows = reference, columns = prediction, in the order
        of :data:`CATEGORIES`), ``accuracy``, per-class and macro
        ``precision``/``recall``/``f1``/``specificity``; ``binary`` (osteoporosis
        vs not: ``confusion`` 2x2 [[TN, FP], [FN, TP]], ``accuracy``,
        ``precision``, ``recall`` (sensitivity), ``specificity``, ``f1``);
        ``auc_osteoporosis`` and ``auc_low_bmd`` (NaN when the reference has
        one class only). All from :mod:`sklearn.metrics`. A ratio with a zero
        denominator (a class never predicted or absent) is NaN, and the macro
        averages are over the defined per-class values.
    """
    y, yp = np.asarray(ref_category, object), np.asarray(pred_category, object)
    score = -np.asarray(pred_bmd, float)
    labels = list(CATEGORIES)
    out: dict = {"n": float(len(y)),
                 "confusion": skm.confusion_matrix(y, yp, labels=labels).tolist(),
                 "accuracy": float(skm.accuracy_score(y, yp))}
    # undefined ratios (no such class predicted, or none in the reference) are NaN, not 0, so a bootstrap
    # resample that lacks a class does not drag the CI to 0
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, yp, labels=labels, zero_division=np.nan)
    # specificity of class c = recall of "not c" (one-vs-rest), from sklearn's per-class confusion matrices
    mcm = skm.multilabel_confusion_matrix(y, yp, labels=labels)  # [[TN, FP], [FN, TP]] per class
    spec = [float(m[0, 0] / (m[0, 0] + m[0, 1])) if m[0].sum() else math.nan for m in mcm]
    for name, values in (("precision", prec), ("recall", rec), ("f1", f1), ("specificity", spec)):
        for c, v in zip(labels, values):
            out[f"{name}_{c}"] = float(v)
    for name, values in (("precision", prec), ("recall", rec), ("f1", f1), ("specificity", spec)):
        defined = [float(v) for v in values if math.isfinite(v)]
        out[f"{name}_macro"] = float(np.mean(defined)) if defined else math.nan
    yb, ypb = y == "osteoporosis", yp == "osteoporosis"
    # per class of the binary split: index 1 = osteoporosis (precision, recall = sensitivity, F1),
    # index 0 = not osteoporosis, whose recall is the specificity
    bp, br, bf, _ = skm.precision_recall_fscore_support(yb, ypb, labels=[False, True], zero_division=np.nan)
    out["binary"] = {
        "confusion": skm.confusion_matrix(yb, ypb, labels=[False, True]).tolist(),
        "accuracy": float(skm.accuracy_score(yb, ypb)),
        "precision": float(bp[1]), "recall": float(br[1]), "specificity": float(br[0]), "f1": float(bf[1]),
    }
    for name, positive in (("auc_osteoporosis", yb), ("auc_low_bmd", y != "normal")):
        out[name] = float(skm.roc_auc_score(positive, score)) if 0 < positive.sum() < len(y) else math.nan
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
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
        out["level"] = agreement(p.level_pred[levels], p.level_ref[levels])
        out["patient"] = agreement(p.patient_pred[patients], p.patient_ref[patients])
    out["diagnosis"] = diagnosis(p.patient_ref_category[patients], p.patient_pred_category[patients],
                                 p.patient_pred[patients])
    return out


def _bootstrap(p: Paired, patients: np.ndarray, rows: list[np.ndarray], n_boot: int,
               rng: np.random.Generator) -> dict[str, list | None]:
    """Percentile 95% CI per flat metric key, resampling patients (with their levels) with replacement.

    A key whose resamples give fewer than 10 finite values (r of resamples with two distinct patients, an
    AUC of resamples with one class) has no CI: None.
    """
    import warnings

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
        ci[k] = [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))] if len(arr) >= 10 else None
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
        ``{"kind", "n_boot", "seed", "splits": {name: {"level", "patient",
        "diagnosis", "ci": {flat_key: [low, high] or None}, "not_computed":
        {flat_key: reason}}}}``; the split ``all`` holds every patient. A
        figure that needs more pairs than the split has (:data:`MIN_PAIRS`) is
        NaN, with the reason in ``not_computed`` (``"needs at least 3
        patients, got 1"``); so are the CIs (``ci`` empty and
        ``not_computed["ci"]``) of a split with fewer than
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


# --------------------------------------------------------------------------- report

_AGREEMENT_ROWS = (("n", "n", "{:.0f}"), ("r", "Pearson r", "{:.3f}"), ("p", "p", "{:.2g}"),
                   ("r2", "r²", "{:.3f}"), ("mae", "MAE (mg/cm³)", "{:.2f}"), ("rmse", "RMSE (mg/cm³)", "{:.2f}"),
                   ("bias", "bias (mg/cm³)", "{:.2f}"), ("loa_low", "LoA low (mg/cm³)", "{:.1f}"),
                   ("loa_high", "LoA high (mg/cm³)", "{:.1f}"))


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
        class): ``auc`` (ROC AUC), ``f1``, ``recall`` (sensitivity), ``precision``, ``specificity`` and
        ``accuracy`` (scikit-learn).
    """
    low = np.asarray(low, bool)
    p_low = np.asarray(p_low, float)
    groups = np.asarray(groups)

    def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
        pred = p >= cut
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[False, True]).ravel()
        return {"auc": float(skm.roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
                "f1": float(skm.f1_score(y, pred, zero_division=0)) if y.any() or pred.any() else None,
                "recall": float(tp / (tp + fn)) if tp + fn else None,
                "precision": float(tp / (tp + fp)) if tp + fp else None,
                "specificity": float(tn / (tn + fp)) if tn + fp else None,
                "accuracy": float((tp + tn) / len(y)) if len(y) else None}

    point = figures(low, p_low)
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    rows = {g: np.nonzero(groups == g)[0] for g in ids}
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot if len(ids) > 1 else 0):
        ix = np.concatenate([rows[g] for g in rng.choice(ids, len(ids))])
        for k, v in figures(low[ix], p_low[ix]).items():
            if v is not None:
                samples[k].append(v)
    out: dict = {"n": int(len(low)), "n_low": int(low.sum())}
    for k, v in point.items():
        ci = samples[k]
        out[k] = {"value": v, "ci95": [float(np.percentile(ci, 2.5)), float(np.percentile(ci, 97.5))]
                  if v is not None and len(ci) >= 20 else None}
    return out


def markdown_table(result: dict) -> str:
    """The paper-style table of :func:`evaluate`'s result (GitHub markdown), one column per split."""
    splits = list(result["splits"])
    head = "| | " + " | ".join(splits) + " |\n|---|" + "---|" * len(splits) + "\n"
    lines = [f"# ctbmd evaluate ({result['kind'].upper()} reference)\n",
             f"Values with bootstrap 95% CI ({result['n_boot']} resamples of patients, seed {result['seed']}). "
             "Research use only, not a medical device.\n"]
    for s in splits:
        reason = result["splits"][s].get("not_computed", {}).get("ci")
        if reason:
            lines.append(f"\n95% CIs of {s}: not computed: {reason}.\n")
    lines.append("\n– : undefined (a ratio with no patient in its denominator, or values that do not vary).\n")

    def rows(section: str, spec) -> str:
        text = ""
        for key, label, fmt in spec:
            cells = [figure_text(result["splits"][s], f"{section}.{key}", fmt, ci=key not in ("n", "p"))
                     for s in splits]
            text += f"| {label} | " + " | ".join(cells) + " |\n"
        return text

    if result["kind"] == "qct":
        lines.append("\n## Agreement per level\n\n" + head + rows("level", _AGREEMENT_ROWS))
        lines.append("\n## Agreement per patient (mean of the levels used)\n\n" + head + rows("patient",
                                                                                           _AGREEMENT_ROWS))
    diag = [("n", "n", "{:.0f}"), ("accuracy", "accuracy (3 classes)", "{:.3f}")]
    for name in ("precision", "recall", "f1", "specificity"):
        diag += [(f"{name}_{c}", f"{name} {c}", "{:.3f}") for c in CATEGORIES] + [(f"{name}_macro",
                                                                                  f"{name} macro", "{:.3f}")]
    diag += [("auc_osteoporosis", "ROC AUC osteoporosis", "{:.3f}"), ("auc_low_bmd", "ROC AUC low BMD", "{:.3f}")]
    lines.append("\n## Diagnosis per patient (ACR-QCT prediction vs reference category)\n\n" + head
                 + rows("diagnosis", diag))
    binary = [(k, f"osteoporosis vs not: {k}", "{:.3f}") for k in ("accuracy", "precision", "recall",
                                                                    "specificity", "f1")]
    lines.append("\n## Osteoporosis vs not\n\n" + head + rows("diagnosis.binary", binary))
    for s in splits:
        cm = result["splits"][s]["diagnosis"]["confusion"]
        lines.append(f"\n### Confusion matrix, {s} (rows reference, columns prediction)\n\n"
                     "| | " + " | ".join(CATEGORIES) + " |\n|---|---|---|---|\n"
                     + "".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |\n" for c, row in zip(CATEGORIES, cm)))
    if result["unmatched_reference"]:
        lines.append(f"\nReference patients without a prediction ({len(result['unmatched_reference'])}): "
                     + ", ".join(result["unmatched_reference"]) + "\n")
    for note in result["notes"]:
        lines.append(f"\nNote: {note}\n")
    return "".join(lines)


def _plots(p: Paired, result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctbmd.io import write_atomic

    written = []
    splits = [s for s in result["splits"] if s != ALL_SPLITS] or [ALL_SPLITS]
    colours = dict(zip(splits, plt.get_cmap("tab10").colors))

    def save(fig, name: str) -> None:
        write_atomic(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
        plt.close(fig)
        written.append(out / name)

    def members(s):
        return np.ones(len(p.patient_id), bool) if s == ALL_SPLITS else p.patient_split == s

    def legend(ax, **kw) -> None:  # none where nothing was drawn (matplotlib would warn)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kw)

    def figure(unit: str, key: str, fmt: str) -> str:  # "0.912" or "not computed\n(needs at least 3 ...)"
        text = figure_text(result["splits"][ALL_SPLITS], f"{unit}.{key}", fmt)
        return f"not computed\n({text.removeprefix('not computed: ')})" if text.startswith("not computed") else text

    if p.kind == "qct":
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        for ax, (x, y, unit) in zip(axes, ((p.level_ref, p.level_pred, "level"), (p.patient_ref, p.patient_pred,
                                                                                     "patient"))):
            pids = p.level_patient if unit == "level" else p.patient_id
            if not len(x):  # a prediction CSV with patient values only has no level pairs
                ax.text(0.5, 0.5, f"no {unit} pairs", ha="center", va="center", transform=ax.transAxes)
                continue
            lo, hi = float(np.nanmin([x.min(), y.min(), 0])), float(np.nanmax([x.max(), y.max()])) * 1.05
            for s in splits:
                ids = set(p.patient_id[members(s)])
                sel = np.array([i in ids for i in pids], bool)
                ax.scatter(x[sel], y[sel], s=18, alpha=0.75, color=colours[s], label=f"{s} (n={sel.sum()})")
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
            if len(x) >= MIN_PAIRS["r"] and np.ptp(x) > 0:
                fit = stats.linregress(x, y)
                ax.plot([lo, hi], [fit.intercept + fit.slope * lo, fit.intercept + fit.slope * hi], "r-", lw=1.2,
                        label=f"fit y = {fit.slope:.2f}x {fit.intercept:+.1f}")
            ax.set_title(f"per {unit}: MAE {figure(unit, 'mae', '{:.1f}')} mg/cm³, r² {figure(unit, 'r2', '{:.3f}')}")
            for v in (80, 120):
                ax.axvline(v, color="0.8", lw=0.8)
                ax.axhline(v, color="0.8", lw=0.8)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("reference BMD (mg/cm³)")
            ax.set_ylabel("predicted BMD (mg/cm³)")
            legend(ax, fontsize=8, loc="upper left")
        save(fig, "scatter.png")

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, (x, y, unit) in zip(axes, ((p.level_ref, p.level_pred, "level"), (p.patient_ref, p.patient_pred,
                                                                                     "patient"))):
            m = result["splits"][ALL_SPLITS][unit]
            if not len(x):
                ax.text(0.5, 0.5, f"no {unit} pairs", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.scatter((x + y) / 2, y - x, s=18, alpha=0.75)
            for v, style, label in ((m["bias"], "-", f"bias {m['bias']:+.1f}"),
                                    (m["loa_low"], "--", f"LoA {m['loa_low']:+.1f}"),
                                    (m["loa_high"], "--", f"LoA {m['loa_high']:+.1f}")):
                if math.isfinite(v):
                    ax.axhline(v, color="r", ls=style, lw=1, label=label)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xlabel("mean of prediction and reference (mg/cm³)")
            ax.set_ylabel("prediction - reference (mg/cm³)")
            missing = "" if math.isfinite(m["loa_low"]) else f"\nlimits of agreement {figure(unit, 'loa_low', '')}"
            ax.set_title(f"Bland-Altman, per {unit} (n={len(x)}){missing}")
            legend(ax, fontsize=8)
        save(fig, "bland_altman.png")

    names = list(result["splits"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for ax, s in zip(axes[0], names):
        cm = np.array(result["splits"][s]["diagnosis"]["confusion"])
        ax.imshow(cm, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(3), CATEGORIES, rotation=20)
        ax.set_yticks(range(3), CATEGORIES)
        ax.set_xlabel("predicted (ACR-QCT)")
        if ax is axes[0][0]:
            ax.set_ylabel("reference")
        else:
            ax.set_yticklabels([])
        ax.set_title(f"{s}: accuracy {result['splits'][s]['diagnosis']['accuracy']:.2f}")
    fig.tight_layout()
    save(fig, "confusion.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (name, positive_of) in zip(axes, (("osteoporosis", lambda c: c == "osteoporosis"),
                                               ("low BMD", lambda c: c != "normal"))):
        for s in names:
            sel = members(s)
            y = positive_of(p.patient_ref_category[sel])
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = skm.roc_curve(y, -p.patient_pred[sel])
                key = "auc_osteoporosis" if name == "osteoporosis" else "auc_low_bmd"
                ax.plot(fpr, tpr, label=f"{s}: AUC {result['splits'][s]['diagnosis'][key]:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC, {name} (score: predicted BMD)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        else:
            key = "auc_osteoporosis" if name == "osteoporosis" else "auc_low_bmd"
            ax.text(0.5, 0.5, figure("diagnosis", key, ""), ha="center", va="center", transform=ax.transAxes,
                    fontsize=9)
    save(fig, "roc.png")
    return written


def write_evaluation(p: Paired, result: dict, out: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``metrics.md``, ``pairs.csv`` and the PNG plots into ``out`` (atomically, per file).

    Plots: ``scatter.png`` (with identity and regression lines) and
    ``bland_altman.png`` for a QCT reference; ``confusion.png`` and ``roc.png``
    always.
    """
    from ctbmd.io import write_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    written = [write_atomic(out / "metrics.json", lambda t: t.write_text(json.dumps(clean(result), indent=2))),
               write_atomic(out / "metrics.md", lambda t: t.write_text(markdown_table(result)))]

    def pairs_csv(t: Path) -> None:
        with t.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient_id", "split", "pred_bmd_mg_cm3", "ref_bmd_mg_cm3", "pred_category", "ref_category"])
            for row in zip(p.patient_id, p.patient_split, p.patient_pred, p.patient_ref, p.patient_pred_category,
                           p.patient_ref_category):
                w.writerow([row[0], row[1], f"{row[2]:.2f}", "" if not math.isfinite(row[3]) else f"{row[3]:.2f}",
                            row[4], row[5]])

    written.append(write_atomic(out / "pairs.csv", pairs_csv))
    return written + _plots(p, result, out)
