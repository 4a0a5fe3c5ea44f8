"""Reading references and predictions: CSV tables, ``ctbmd run`` result folders and scan-to-patient mappings.

Every reader raises :class:`ctbmd.errors.InvalidInputError` with the file, the
row and the problem on one line; the readers never name command-line options.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from ctbmd.classify import ACR_LEVELS, CATEGORIES, acr_category, who_category  # noqa: F401 - CATEGORIES re-exported
from ctbmd.errors import InvalidInputError
from ctbmd.types import VERSE_LABELS

#: Category names, in the order of the confusion matrices (ACR-QCT and WHO use the same three).
#: Areal DXA BMD is 0.3-1.6 g/cm²; volumetric QCT BMD is 10-350 mg/cm³. A reference
#: column whose median is below this is taken for g/cm² and refused.
MIN_PLAUSIBLE_MEDIAN_MG_CM3 = 5.0
#: Largest plausible trabecular BMD (mg/cm³); larger values are not mg/cm³ (HU? mg/mL x 10?).
MAX_PLAUSIBLE_MG_CM3 = 1000.0
#: Smallest plausible trabecular BMD (mg/cm³); noise can take a fatty vertebra a little below 0.
MIN_PLAUSIBLE_MG_CM3 = -100.0
#: The range of a DXA T-score that is taken for a T-score (SD units).
T_SCORE_RANGE = (-10.0, 10.0)

#: ``qct``: per-level volumetric BMD; ``dxa``: per-patient T-score and/or category.
ReferenceKind = Literal["qct", "dxa"]


@dataclass(frozen=True)
class LevelValue:
    """One vertebra's BMD (mg/cm³) for one patient; ``level`` is a VerSe name such as ``"L1"``."""

    patient_id: str
    level: str
    bmd_mg_cm3: float


@dataclass(frozen=True)
class PatientValue:
    """One patient's value: mean BMD of the levels used (mg/cm³), T-score and category (a :data:`CATEGORIES` name)."""

    patient_id: str
    bmd_mg_cm3: float | None = None
    t_score: float | None = None
    category: str | None = None
    levels_used: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reference:
    """A reference table: ``kind`` is ``"qct"`` (per-level) or ``"dxa"`` (per-patient).

    ``splits`` maps a patient ID to its data set (empty without a split column).
    """

    kind: ReferenceKind
    path: str
    levels: tuple[LevelValue, ...] = ()
    patients: tuple[PatientValue, ...] = ()
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Predictions:
    """Predicted per-level and per-patient BMD, with the scans that had no result (``(scan, reason)`` pairs)."""

    path: str
    levels: tuple[LevelValue, ...]
    patients: tuple[PatientValue, ...]
    splits: dict[str, str] = field(default_factory=dict)
    failed: tuple[tuple[str, str], ...] = ()


class CsvTable(NamedTuple):
    """A CSV read by :func:`read_csv_table`: lower-case column names and one dict per non-blank row."""

    header: list[str]
    rows: list[dict[str, str]]


# --------------------------------------------------------------------------- CSV tables

def read_csv_table(path: Path) -> CsvTable:
    """Read a small CSV table, with its column names lower-cased and every value stripped.

    Parameters
    ----------
    path : Path
        A UTF-8 text file (a BOM is allowed); the delimiter (``,``, ``;`` or a
        tab) is sniffed from the header line. Blank rows are skipped.

    Returns
    -------
    CsvTable
        ``header`` (column names, stripped and lower-cased, in file order) and
        ``rows`` (one dict per row keyed by those names).

    Raises
    ------
    InvalidInputError
        A missing or unreadable file, an empty file (no header, or a header
        but no rows), or a row with another number of fields than the header.
        The message names the file (and the row).
    """
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
    return CsvTable(header, rows)


def require_columns(header: list[str], names: tuple[str, ...], path: Path) -> None:
    """Check that a table read by :func:`read_csv_table` has the columns ``names`` (lower-case).

    Raises
    ------
    InvalidInputError
        Naming the missing columns, the columns found, and the file ``path``.
    """
    missing = [n for n in names if n not in header]
    if missing:
        raise InvalidInputError(f"missing column {', '.join(repr(m) for m in missing)} "
                                f"(columns found: {', '.join(header)})", path)


def normalise_level(text: str) -> str | None:
    """``"l1"``, ``"L 1"``, ``"L1 "`` -> ``"L1"``; None when not a vertebral level T1-T12, L1-L6 (VerSe names)."""
    name = re.sub(r"\s+", "", text).upper()
    return name if name in VERSE_LABELS and name[0] in "TL" else None


def _number(value: str, column: str, row: int, path: Path) -> float | None:
    """A cell as a float; None for an empty, NA or non-finite cell; an error naming the row otherwise."""
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
    """A category cell as a :data:`CATEGORIES` name (case-insensitive); None when empty."""
    if value == "":
        return None
    name = value.strip().lower()
    if name not in CATEGORIES:
        raise InvalidInputError(f"row {row}: category {value!r} is not one of {', '.join(CATEGORIES)}", path)
    return name


def _check_mg_cm3(values: list[float], column: str, path: Path) -> None:
    """Refuse a BMD column that is empty, looks like g/cm², or leaves the plausible mg/cm³ range."""
    if not values:
        raise InvalidInputError(f"column {column!r} holds no numbers", path)
    median = float(np.median(values))
    if median < MIN_PLAUSIBLE_MEDIAN_MG_CM3:
        raise InvalidInputError(
            f"column {column!r} looks like areal DXA BMD in g/cm² (median {median:.3g}), not volumetric "
            "BMD in mg/cm³; give QCT values in mg/cm³, or DXA as t_score/category", path)
    if max(values) > MAX_PLAUSIBLE_MG_CM3 or min(values) < MIN_PLAUSIBLE_MG_CM3:
        raise InvalidInputError(f"column {column!r} has values outside -100..{MAX_PLAUSIBLE_MG_CM3:.0f} mg/cm³ "
                                f"(range {min(values):.4g}..{max(values):.4g}); is it in mg/cm³?", path)


def _splits(rows: list[dict[str, str]], split_column: str | None, path: Path) -> dict[str, str]:
    """Patient ID -> split name from ``split_column`` (empty dict without one); one split per patient."""
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


# --------------------------------------------------------------------------- references

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
    header, rows = read_csv_table(path)
    require_columns(header, ("patient_id",), path)
    split_column = split_column.lower() if split_column else None
    if split_column:
        require_columns(header, (split_column,), path)
    for i, r in enumerate(rows, start=2):
        if not r["patient_id"]:
            raise InvalidInputError(f"row {i}: empty patient_id", path)
    splits = _splits(rows, split_column, path)
    if "level" in header or "bmd_mg_cm3" in header:
        require_columns(header, ("level", "bmd_mg_cm3"), path)
        levels = _qct_levels(rows, path)
        _check_mg_cm3([lv.bmd_mg_cm3 for lv in levels], "bmd_mg_cm3", path)
        return Reference("qct", str(path), levels=levels, splits=splits)
    if "t_score" not in header and "category" not in header:
        raise InvalidInputError("missing column: a QCT reference needs 'level' and 'bmd_mg_cm3', a DXA reference "
                                f"'t_score' or 'category' (columns found: {', '.join(header)})", path)
    return Reference("dxa", str(path), patients=_dxa_patients(rows, path), splits=splits)


def _qct_levels(rows: list[dict[str, str]], path: Path) -> tuple[LevelValue, ...]:
    """The per-level BMD of a QCT table (rows with an empty BMD are left out); one row per patient and level."""
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
    return tuple(levels)


def _dxa_patients(rows: list[dict[str, str]], path: Path) -> tuple[PatientValue, ...]:
    """The patients of a DXA table; the category is the given one, or WHO's of the T-score."""
    patients, seen = [], {}
    for i, r in enumerate(rows, start=2):
        pid = r["patient_id"]
        if pid in seen:
            raise InvalidInputError(f"duplicate patient {pid!r} (rows {seen[pid]} and {i})", path)
        seen[pid] = i
        t = _number(r.get("t_score", ""), "t_score", i, path)
        if t is not None and not T_SCORE_RANGE[0] <= t <= T_SCORE_RANGE[1]:
            raise InvalidInputError(f"row {i}: t_score {t:g} is outside -10..10", path)
        cat = _category(r.get("category", ""), i, path)
        if cat is None and t is not None:
            cat = who_category(t)
        if cat is None:
            raise InvalidInputError(f"row {i}: patient {pid!r} has neither a t_score nor a category", path)
        patients.append(PatientValue(pid, t_score=t, category=cat))
    return tuple(patients)


# --------------------------------------------------------------------------- predictions

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
        CSV with ``scan`` and ``patient_id`` columns (see :mod:`ctbmd.evaluate`).
    field_name : str
        The per-level value to read from ``result.json``: ``bmd_mg_cm3``
        (phantomless calibration) or e.g. ``bmd_dl_mg_cm3`` (a learned model).
    split_column : str, optional
        Split column of a prediction CSV (a reference's split column wins).

    Returns
    -------
    Predictions

    Raises
    ------
    InvalidInputError
        Nothing found, unreadable ``result.json``, two scans mapped to one
        patient, or CSV problems (as in :func:`read_reference`).
    """
    path = Path(path)
    if path.is_dir():
        return read_result_folder(path, mapping, field_name)
    header, rows = read_csv_table(path)
    require_columns(header, ("patient_id", "bmd_mg_cm3"), path)
    split_column = split_column.lower() if split_column and split_column.lower() in header else None
    splits = _splits(rows, split_column, path)
    if "level" in header:
        levels = read_reference(path).levels  # same checks and parsing as a QCT reference
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


def read_mapping(path: Path) -> dict[str, str]:
    """Read a scan-to-patient mapping CSV (columns ``scan`` and ``patient_id``): ``{scan: patient_id}``.

    Raises
    ------
    InvalidInputError
        CSV problems (as in :func:`read_csv_table`), a missing column, or a scan listed twice.
    """
    header, rows = read_csv_table(path)
    require_columns(header, ("scan", "patient_id"), path)
    out = {}
    for i, r in enumerate(rows, start=2):
        if r["scan"] in out:
            raise InvalidInputError(f"duplicate scan {r['scan']!r} (row {i})", path)
        out[r["scan"]] = r["patient_id"]
    return out


def _patient_from_result(result: dict, field_name: str) -> PatientValue | None:
    """The patient value of one ``result.json`` (without its ID), or None when it has none."""
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


def _patient_of_scan(f: Path, root: Path, result: dict, mapped: dict[str, str], mapping: str | Path | None) -> str:
    """The patient of the scan whose ``result.json`` is ``f``: mapping CSV, DICOM PatientID, or folder name."""
    rel = str(f.parent.relative_to(root))
    source = (result.get("input") or {}).get("path", "")
    pid = None
    for key in (rel, f.parent.name, source, Path(source).name if source else ""):
        if key and key in mapped:
            pid = mapped[key]
            break
    if pid is None and mapping:
        raise InvalidInputError(f"scan {rel!r} is not in the mapping CSV (its 'scan' column)", Path(mapping))
    return pid or (result.get("input") or {}).get("patient_id") or f.parent.name


def read_result_folder(root: Path, mapping: str | Path | None = None, field_name: str = "bmd_mg_cm3") -> Predictions:
    """Read every ``result.json`` under ``root`` (``ctbmd run`` outputs, one scan per patient).

    Parameters
    ----------
    root : Path
        Searched recursively; hidden folders (unfinished output) are skipped.
    mapping : str or Path, optional
        A scan-to-patient CSV (:func:`read_mapping`); the ``scan`` column holds
        the folder's path relative to ``root``, its name, or the input path
        recorded in ``result.json``.
    field_name : str
        The per-level value to read (see :func:`read_predictions`).

    Returns
    -------
    Predictions
        ``failed`` lists the scans without a patient BMD.

    Raises
    ------
    InvalidInputError
        No ``result.json``, an unreadable one, a scan missing from the mapping,
        or two scans of one patient.
    """
    # hidden folders hold unfinished output (a run's or a batch's staging): never a patient
    files = sorted(f for f in root.rglob("result.json")
                   if not any(part.startswith(".") for part in f.relative_to(root).parts[:-1]))
    failed: list[tuple[str, str]] = []
    if not files:
        raise InvalidInputError("no result.json found (expected one folder of `ctbmd run` output per scan)", root)
    mapped = read_mapping(Path(mapping)) if mapping else {}
    levels, patients, owner = [], [], {}
    for f in files:
        try:
            result = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"unreadable result.json ({type(exc).__name__})", f) from None
        rel = str(f.parent.relative_to(root))
        pid = _patient_of_scan(f, root, result, mapped, mapping)
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
