"""The training cohort: manifest CSV, crop extraction with an on-disk cache, and the sample table.

Manifest
--------
A CSV with one CT per patient:

* ``patient_id`` and ``ct`` (a NIfTI/NRRD/MHA file or DICOM folder; relative
  paths are relative to the manifest's folder), on every row;
* ``labels`` (optional): an existing vertebra label map for that CT (as
  ``ctbmd run --labels``); without it the builtin segmenter labels the levels;
  ``label_map`` (optional) names its numbering as ``--label-map`` does
  (``auto`` when empty; phantoms of ``ctbmd simulate`` are ``verse``);
* ``kvp`` (optional): the tube voltage (kV, 70-150) of a CT whose header has
  none (NIfTI), as ``ctbmd run --kvp`` takes it; without it the phantomless
  calibration assumes 120 kV with a wide energy prior. Like ``--kvp`` it takes
  the place of a DICOM header's value, so leave it empty for DICOM series;
* ``split`` (optional): empty, ``cv`` or ``train`` for cross-validation; ``test``
  marks patients held out of cross-validation (predicted by the ensemble);
  ``external``, ``external_2``, ``external_3``, ... mark external sites (other
  scanners or hospitals, as in Peng 2024 and Huang 2025): never in a training,
  early-stopping or validation fold, each predicted by the ensemble and
  evaluated on its own (:data:`EXTERNAL_SPLIT`);
* the reference, in the forms ``ctbmd evaluate`` reads
  (:func:`ctbmd.evaluate.read_reference`): per level, one row per level with
  ``level`` and ``bmd_mg_cm3`` (QCT, mg/cm³), or per patient ``t_score`` (DXA),
  which is then the target of each of the patient's ``PATIENT_TARGET_LEVELS``;
  or, with ``target=COLUMN`` (``ctbmd train --target``), any other numeric
  per-patient column, such as ``tbs`` (trabecular bone score, seed 002), which
  is likewise the target of each of L1-L4.

Every CT goes through :func:`ctbmd.pipeline.analyse` (read, segment, ROI,
calibrate) and :func:`ctbmd.model.crops.extract_crops`. The crops are cached as
``<cache>/<hash>.npz``, keyed by the SHA-256 of the CT and label files and the
crop spec (:func:`ctbmd.model.crops.input_hash`), so a second run over the same
cohort skips the pipeline. A scan that fails is recorded with its reason and the
rest go on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctbmd import evaluate as ev
from ctbmd.errors import CtbmdError, InvalidInputError
from ctbmd.model.crops import (FEATURES, MUSCLE_SIZE, CropSpec, ScanCrops, VertebraCrop, extract_crops, input_hash,
                               load_crops, save_crops)
from ctbmd.segment.labelmaps import LABEL_MAPS

#: The targets with a reference of their own in ``ctbmd evaluate`` (QCT per level, DXA T-score per patient).
BUILTIN_TARGETS = ("bmd_mg_cm3", "t_score")

#: Names of external sites in the manifest's ``split`` column: ``external``, ``external_2``, ``external_3``, ...
EXTERNAL_SPLIT = re.compile(r"external(_([2-9]|[1-9][0-9]+))?")


def is_external(split: str) -> bool:
    """True for an external site's split name (:data:`EXTERNAL_SPLIT`)."""
    return EXTERNAL_SPLIT.fullmatch(str(split)) is not None


def external_number(split: str) -> int:
    """1 for ``external``, n for ``external_n``."""
    return 1 if split == "external" else int(split.rsplit("_", 1)[1])


#: Levels that carry a per-patient (DXA) target; DXA of the lumbar spine covers L1-L4.
PATIENT_TARGET_LEVELS: tuple[str, ...] = ("L1", "L2", "L3", "L4")


def default_cache_dir() -> Path:
    """``$CTBMD_CACHE`` or ``$XDG_CACHE_HOME/ctbmd/crops`` (``~/.cache/ctbmd/crops``)."""
    if os.environ.get("CTBMD_CACHE"):
        return Path(os.environ["CTBMD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctbmd" / "crops"


@dataclass(frozen=True)
class CohortScan:
    """One patient's CT in the manifest.

    Attributes
    ----------
    patient_id : str
    ct : Path
        CT file or DICOM folder.
    labels : Path or None
        Label map to use instead of the builtin segmenter.
    label_map : str
        Its numbering (:data:`ctbmd.segment.labelmaps.LABEL_MAPS`).
    split : str
        ``"cv"``, ``"test"`` for held-out patients, or an external site's name.
    kvp : float or None
        Tube voltage (kV) for a CT whose header has none.
    """

    patient_id: str
    ct: Path
    labels: Path | None
    label_map: str
    split: str
    kvp: float | None = None


@dataclass(frozen=True)
class Cohort:
    """A parsed manifest.

    Attributes
    ----------
    path : Path
        The manifest.
    target : str
        ``"bmd_mg_cm3"`` (per-level QCT), ``"t_score"`` (per-patient DXA) or the
        name of another numeric per-patient column (e.g. ``"tbs"``).
    scans : tuple of CohortScan
        One per patient, in manifest order.
    reference : ctbmd.evaluate.Reference or None
        The targets, as ``ctbmd evaluate`` reads them (None for another column).
    values : dict of str to float
        Patient -> value of another per-patient column (empty for the two above).
    """

    path: Path
    target: str
    scans: tuple[CohortScan, ...]
    reference: ev.Reference | None
    values: dict = field(default_factory=dict)

    def targets(self) -> dict[tuple[str, str], float]:
        """(patient_id, level) -> target value (mg/cm³, T-score, or the per-patient column's value)."""
        if self.target not in BUILTIN_TARGETS:
            return {(pid, lv): v for pid, v in self.values.items() for lv in PATIENT_TARGET_LEVELS}
        if self.target == "bmd_mg_cm3":
            return {(lv.patient_id, lv.level): lv.bmd_mg_cm3 for lv in self.reference.levels}
        return {(p.patient_id, lv): p.t_score for p in self.reference.patients if p.t_score is not None
                for lv in PATIENT_TARGET_LEVELS}


def read_manifest(path: str | Path, target: str | None = None) -> Cohort:
    """Read and check a cohort manifest (see the module docstring).

    ``target`` names the column to train on: None (``bmd_mg_cm3`` for a
    per-level manifest, ``t_score`` for a per-patient one), one of those two, or
    any other numeric per-patient column (``tbs``).

    Raises
    ------
    InvalidInputError
        Unreadable or empty CSV, a missing ``patient_id``/``ct`` column, a CT
        or label path that does not exist, two CTs for one patient, a ``split``
        other than ``cv``/``train``/empty, ``test`` or an external site name, external
        sites numbered with a gap (``external_3`` without ``external_2``), an unknown ``label_map``, a ``kvp``
        outside 70-150, no usable target (a DXA
        manifest needs ``t_score`` for training), or any reference problem
        :func:`ctbmd.evaluate.read_reference` reports. One line, naming the
        file and row.
    """
    path = Path(path)
    header, rows = ev.read_csv_table(path)
    ev.require_columns(header, ("patient_id", "ct"), path)
    values: dict[str, float] = {}
    if target is not None and target not in BUILTIN_TARGETS:
        reference = None
        values = _column_values(path, header, rows, target)
    else:
        reference = ev.read_reference(path)
        kind = "bmd_mg_cm3" if reference.kind == "qct" else "t_score"
        if target is not None and target != kind:
            raise InvalidInputError(f"`target` {target} does not match the manifest, whose reference is "
                                    f"{'per level (bmd_mg_cm3)' if kind == 'bmd_mg_cm3' else 'per patient (t_score)'}",
                                    path)
    if reference is not None and reference.kind == "dxa" and not any(p.t_score is not None for p in reference.patients):
        raise InvalidInputError("a per-patient manifest needs a 't_score' column to train on "
                                "(categories alone are not a regression target)", path)
    base = path.resolve().parent
    scans: dict[str, CohortScan] = {}
    for i, r in enumerate(rows, start=2):
        if not r["ct"]:
            raise InvalidInputError(f"row {i}: empty 'ct' for patient {r['patient_id']!r}", path)
        ct = (base / r["ct"]).resolve()
        labels = (base / r["labels"]).resolve() if r.get("labels") else None
        for p in (ct, labels):
            if p is not None and not p.exists():
                raise InvalidInputError(f"row {i}: {p} does not exist", path)
        split = (r.get("split") or "cv").strip().lower()
        if split not in ("test", "train", "cv") and not is_external(split):
            raise InvalidInputError(f"row {i}: split {r['split']!r} is not 'cv' (or 'train' or empty), 'test', "
                                    "'external' or 'external_<n>' (n >= 2)", path)
        split = split if split == "test" or is_external(split) else "cv"
        label_map = (r.get("label_map") or "auto").lower()
        if label_map not in LABEL_MAPS:
            raise InvalidInputError(f"row {i}: label_map {r['label_map']!r} is not one of {', '.join(LABEL_MAPS)}",
                                    path)
        kvp = None
        if (r.get("kvp") or "").strip():
            try:
                kvp = float(r["kvp"])
            except ValueError:
                kvp = float("nan")
            if not 70.0 <= kvp <= 150.0:
                raise InvalidInputError(f"row {i}: kvp {r['kvp']!r} is not a tube voltage of 70-150 kV", path)
        scan = CohortScan(r["patient_id"], ct, labels, label_map, split, kvp)
        old = scans.setdefault(r["patient_id"], scan)
        if old != scan:
            raise InvalidInputError(f"row {i}: patient {r['patient_id']!r} has a different ct/labels/split/kvp than on "
                                    "an earlier row (one CT per patient)", path)
    sites = sorted({external_number(s.split) for s in scans.values() if is_external(s.split)})
    if sites and sites != list(range(1, len(sites) + 1)):
        gap = min(set(range(1, max(sites) + 1)) - set(sites))
        name = "external" if gap == 1 else f"external_{gap}"
        raise InvalidInputError(f"external site {name!r} has no patients, but 'external_{max(sites)}' has: "
                                "number the external sites external, external_2, ... without gaps", path)
    if reference is None:
        return Cohort(path=path, target=target, scans=tuple(scans.values()), reference=None, values=values)
    target = "bmd_mg_cm3" if reference.kind == "qct" else "t_score"
    return Cohort(path=path, target=target, scans=tuple(scans.values()), reference=reference)


def _column_values(path: Path, header: list[str], rows: list[dict], column: str) -> dict[str, float]:
    """Patient -> the numeric value of a per-patient column (one value per patient; empty cells skipped).

    Raises
    ------
    InvalidInputError
        No such column, a value that is not a finite number, two values for one
        patient, or no value at all.
    """
    import math

    if column not in header:
        raise InvalidInputError(f"no column {column!r} for `target` (columns found: {', '.join(header)})", path)
    values: dict[str, float] = {}
    for i, r in enumerate(rows, start=2):
        text = (r.get(column) or "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidInputError(f"row {i}: {column} {text!r} is not a number", path)
        if values.setdefault(r["patient_id"], value) != value:
            raise InvalidInputError(f"row {i}: patient {r['patient_id']!r} has two {column} values "
                                    f"({values[r['patient_id']]} and {value})", path)
    if not values:
        raise InvalidInputError(f"column {column!r} holds no value to train on", path)
    return values


def scan_crops(scan: CohortScan, spec: CropSpec, cache_dir: Path | None) -> ScanCrops:
    """Crops of one manifest CT, from the cache when present.

    Raises
    ------
    CtbmdError
        Whatever :func:`ctbmd.pipeline.analyse` raises for this CT.
    """
    from ctbmd.pipeline import analyse

    segmenter = "labels" if scan.labels else "builtin"
    key = input_hash([scan.ct] + ([scan.labels] if scan.labels else []), spec,
                     extra=f"{segmenter}:{scan.label_map}" + ("" if scan.kvp is None else f":kvp{scan.kvp:g}"))
    cached = cache_dir / f"{key}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        return load_crops(cached)
    res = analyse(scan.ct, segmenter=segmenter, labels=scan.labels, label_map=scan.label_map, kvp=scan.kvp)
    cut = extract_crops(res.ct, res.roi_labels, res.levels, res.calibration, res.phase, spec,
                        vertebra_labels=res.seg.labels)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_crops(cached, cut.crops, cut.skipped, spec)
    return cut


@dataclass
class Samples:
    """The vertebrae of a cohort as arrays (one row per vertebra with a target).

    Attributes
    ----------
    images : numpy.ndarray
        float32 ``(n, 3, s, s, s)``, axes (vertebra, channel, L, P, S).
    features : numpy.ndarray
        float32 ``(n, len(FEATURES))``, raw units.
    baseline : numpy.ndarray
        float32 ``(n,)``, calibration-only BMD (K2HPO4 mg/cm³).
    target : numpy.ndarray
        float32 ``(n,)``, mg/cm³ or T-score.
    patient, level, split : numpy.ndarray
        str ``(n,)``.
    muscle : numpy.ndarray or None
        float32 ``(n, 2, 64, 64)`` muscle crops, axes (vertebra, channel, L, P)
        (:mod:`ctbmd.model.crops`); None when a crop lacks one.
    failed : list of (patient_id, reason)
        Scans that gave no crops.
    skipped : list of (patient_id, level, reason)
        Target levels without a usable crop.
    """

    images: np.ndarray
    features: np.ndarray
    baseline: np.ndarray
    target: np.ndarray
    patient: np.ndarray
    level: np.ndarray
    split: np.ndarray
    muscle: np.ndarray | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.target)


def build_samples(cohort: Cohort, spec: CropSpec = CropSpec(), cache_dir: Path | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> Samples:
    """Extract (or load) the crops of every manifest CT and pair them with their targets.

    Only usable crops (no ``partial``/``too_small``/``metal``/``suspected_fracture``
    flag) with a target enter. ``progress(done, total, patient_id)`` is called
    after each scan.
    """
    targets: dict[str, dict[str, float]] = {}
    for (pid, level), value in cohort.targets().items():
        targets.setdefault(pid, {})[level] = value
    rows: list[tuple[VertebraCrop, float, str, str]] = []
    failed, skipped = [], []
    for n, scan in enumerate(cohort.scans, start=1):
        try:
            cut = scan_crops(scan, spec, cache_dir)
        except CtbmdError as exc:
            failed.append((scan.patient_id, exc.one_line()))
            cut = ScanCrops(crops=[], skipped={})
        by_level = {c.level: c for c in cut.crops}
        pid = scan.patient_id
        for level, value in targets.get(pid, {}).items():
            c = by_level.get(level)
            if c is None or not c.usable:
                if cut.crops:
                    skipped.append((pid, level, cut.skipped.get(level, "level not found" if c is None
                                                                else "flagged by QC")))
                continue
            rows.append((c, value, pid, scan.split))
        if progress:
            progress(n, len(cohort.scans), scan.patient_id)
    size = spec.size
    with_muscle = all(r[0].muscle is not None for r in rows)
    return Samples(
        images=np.stack([r[0].image for r in rows]) if rows else np.zeros((0, 3, size, size, size), np.float32),
        features=np.stack([r[0].features for r in rows]) if rows else np.zeros((0, len(FEATURES)), np.float32),
        baseline=np.array([r[0].bmd_calibrated_mg_cm3 for r in rows], np.float32),
        target=np.array([r[1] for r in rows], np.float32),
        patient=np.array([r[2] for r in rows], dtype=object), level=np.array([r[0].level for r in rows], dtype=object),
        split=np.array([r[3] for r in rows], dtype=object),
        muscle=(np.stack([r[0].muscle for r in rows]) if rows else np.zeros((0, 2, MUSCLE_SIZE, MUSCLE_SIZE), np.float32))
        if with_muscle else None,
        failed=failed, skipped=skipped)
