"""Find the scans of a batch: folders searched recursively, single files, or a manifest CSV.

* Every ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file is a scan.
* DICOM files are grouped into series (:func:`ctbmd.io.scan_dicom_folder`),
  the series into studies (StudyInstanceUID), and in each study the series
  ``ctbmd run`` would read is chosen (:func:`ctbmd.io.choose_series`: CT,
  axial, ORIGINAL/PRIMARY, most slices). A study without a CT series is a
  failure with its reason, as ``ctbmd run`` would give it.
* An input that does not exist, or a folder with neither, is a failure too: it
  goes to ``failed.csv`` and the batch goes on.

Manifest CSV columns: ``path`` (required; relative paths are taken from the
manifest's folder), and optionally ``series_uid``, ``scan_id``, ``kvp`` and
``labels`` (a vertebra label map for that scan). Each row is one scan, read as
``ctbmd run PATH [--series-uid UID]`` would read it.

Scan IDs (:func:`scan_id_for`) are the last path components made safe for a
folder name plus a hash of the absolute path and series UID: two scans never
share one, and the same scan gets the same one in every run, which is what
lets a batch resume.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from ctbmd.batch.jobs import ScanJob, ScanOutcome
from ctbmd.errors import EXIT_INVALID_INPUT, InvalidInputError, UsageError, parameter_text
from ctbmd.io import choose_series, scan_dicom_folder, volume_format

#: A scan ID a manifest may give: a safe folder name.
SCAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
MANIFEST_COLUMNS = ("path", "series_uid", "scan_id", "kvp", "labels")


@dataclass(frozen=True)
class Discovery:
    """The scans found in a batch's inputs.

    Attributes
    ----------
    jobs : tuple of ScanJob
        The scans to analyse, sorted by scan ID, each once.
    failures : tuple of ScanOutcome
        Inputs that are no scan (missing, empty, no CT series in a study), with exit code 3 and the reason.
    notes : tuple of str
        The series chosen in studies with several, and duplicates dropped.
    phi : dict
        scan ID -> the patient name and birth date in its DICOM header, so that
        logs can be kept free of them (:func:`scrub`). Never written anywhere.
    """

    jobs: tuple[ScanJob, ...]
    failures: tuple[ScanOutcome, ...] = ()
    notes: tuple[str, ...] = ()
    phi: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)


def scan_id_for(source: str | Path, series_uid: str | None = None) -> str:
    """A folder name for one scan: readable, unique, and the same in every run.

    The last three components of ``source`` (a volume file's suffix dropped),
    reduced to ``[A-Za-z0-9._-]``, then ``-`` and the first 10 hex digits of
    the SHA-1 of the absolute path and the series UID.

    Examples
    --------
    ``/data/p01/ct.nii.gz`` -> ``data_p01_ct-3f9a…``; two series in one DICOM
    folder differ in the hash.
    """
    path = Path(os.path.abspath(source))
    digest = hashlib.sha1(f"{path}\n{series_uid or ''}".encode()).hexdigest()[:10]
    parts = list(path.parts[-3:])
    fmt = volume_format(path)
    if fmt is not None:
        name = parts[-1]
        parts[-1] = name[:-7] if name.lower().endswith(".nii.gz") else name.rsplit(".", 1)[0]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(p for p in parts if p not in ("/", ""))).strip("._-")
    return f"{slug[-60:].lstrip('._-') or 'scan'}-{digest}"


def _failure(source: str | Path, reason: str, series_uid: str | None = None) -> ScanOutcome:
    source = os.path.abspath(source)
    return ScanOutcome(scan_id_for(source, series_uid), source, series_uid, EXIT_INVALID_INPUT, f"{source}: {reason}")


def _phi_terms(first_file: str) -> tuple[str, ...]:
    """PatientName (whole and each part of 3+ characters) and PatientBirthDate (as stored and as YYYY-MM-DD)."""
    try:
        ds = pydicom.dcmread(first_file, stop_before_pixels=True, specific_tags=["PatientName", "PatientBirthDate"])
    except Exception:  # noqa: BLE001 - the reader reports unreadable files; here only names are sought
        return ()
    terms = []
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        terms.append(name)
        terms += [part for part in re.split(r"[\^=\s]+", name) if len(part) >= 3]
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    if birth:
        terms.append(birth)
        if len(birth) == 8 and birth.isdigit():
            terms.append(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
    return tuple(dict.fromkeys(terms))


def scrub(text: str | None, terms: Iterable[str]) -> str | None:
    """``text`` with every occurrence of ``terms`` (patient name, birth date) replaced by ``[PHI]``, case-insensitive."""
    if text is None:
        return None
    for term in sorted(terms, key=len, reverse=True):
        if term:
            text = re.sub(re.escape(term), "[PHI]", text, flags=re.IGNORECASE)
    return text


def _walk_volumes(folder: Path) -> list[Path]:
    """Volume files under ``folder``, skipping hidden folders and batch output folders (those
    holding ``batch.json``: their label maps and ROIs are no CT, e.g. an ``--out`` inside the input)."""
    out = []
    for root, dirs, files in os.walk(folder):
        if "batch.json" in files:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if volume_format(f) is not None]
    return out


def _series_jobs(folder: Path, jobs: list, failures: list, notes: list, phi: dict) -> bool:
    """Add one job per study in ``folder`` (the series ``ctbmd run`` would choose); return whether any DICOM was found."""
    try:
        series = scan_dicom_folder(folder, keep_headers=False)
    except InvalidInputError:
        return False
    studies: dict[str, list] = {}
    for s in series:
        key = s.study_uid or "folder:" + os.path.dirname(s.files[0])
        studies.setdefault(key, []).append(s)
    for members in studies.values():
        root = os.path.commonpath([os.path.dirname(f) for s in members for f in s.files])
        tie: list[str] = []
        try:
            chosen = choose_series(members, root, notes=tie)
        except InvalidInputError as exc:
            uids = ";".join(sorted(s.key for s in members))
            failures.append(_failure(root, parameter_text(exc.reason, "cli"), uids))
            continue
        source = os.path.commonpath([os.path.dirname(f) for f in chosen.files])
        job = ScanJob(scan_id_for(source, chosen.key), os.path.abspath(source), chosen.key,
                      files=tuple(sorted(os.path.abspath(f) for f in chosen.files)))
        jobs.append(job)
        phi[job.scan_id] = _phi_terms(chosen.files[0])
        if len(members) > 1:
            others = ", ".join(f"{s.key} ({s.modality or '?'}, {len(s.files)} files)" for s in members if s is not chosen)
            notes.append(f"{job.scan_id}: chose series {chosen.key} ({len(chosen.files)} slices) over {others}")
        notes += [f"{job.scan_id}: {line}" for line in tie]
    return True


def find_scans(inputs: Sequence[str | Path]) -> Discovery:
    """Find every scan in ``inputs`` (folders, searched recursively, or files).

    Parameters
    ----------
    inputs : sequence of str or Path
        Volume files, DICOM files (their series is taken) or folders.

    Returns
    -------
    Discovery
        Jobs sorted by scan ID, and one failure per input that holds no scan.
    """
    jobs: list[ScanJob] = []
    failures: list[ScanOutcome] = []
    notes: list[str] = []
    phi: dict[str, tuple[str, ...]] = {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            failures.append(_failure(path, "no such file or folder"))
        elif path.is_dir():
            volumes = _walk_volumes(path)
            jobs += [ScanJob(scan_id_for(v), os.path.abspath(v)) for v in volumes]
            found_dicom = _series_jobs(path, jobs, failures, notes, phi)
            if not volumes and not found_dicom:
                failures.append(_failure(path, "no DICOM series and no .nii, .nii.gz, .nrrd or .mha file in folder"))
        elif volume_format(path) is not None:
            jobs.append(ScanJob(scan_id_for(path), os.path.abspath(path)))
        else:
            try:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", "") or "") or None
            except Exception:  # noqa: BLE001 - any reader error means: not a scan
                failures.append(_failure(path, "not a volume file (.nii, .nii.gz, .nrrd, .mha) or a DICOM file"))
                continue
            source = os.path.abspath(path.parent)
            jobs.append(ScanJob(scan_id_for(source, uid), source, uid))
            phi[jobs[-1].scan_id] = _phi_terms(str(path))
    return _unique(jobs, failures, notes, phi)


def read_manifest(path: str | Path) -> Discovery:
    """Read a manifest CSV (see the module docstring): one scan per row.

    Raises
    ------
    UsageError
        The file cannot be read, has no ``path`` column, a ``kvp`` that is not
        a number, a ``scan_id`` that is not a safe folder name, or one scan ID twice.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read the manifest ({type(exc).__name__})", path) from None
    rows = []
    for i, r in enumerate(raw, start=2):
        if None in r:
            raise UsageError(f"row {i}: more fields than columns (quote a path that holds a comma)", path)
        rows.append({(k or "").strip().lower(): (v or "").strip() for k, v in r.items()})
    if "path" not in header:
        raise UsageError(f"the manifest needs a 'path' column (columns: {', '.join(MANIFEST_COLUMNS)})", path)
    jobs: list[ScanJob] = []
    failures: list[ScanOutcome] = []
    phi: dict[str, tuple[str, ...]] = {}
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise UsageError(f"row {i}: empty path", path)
        source = Path(row["path"]) if os.path.isabs(row["path"]) else path.parent / row["path"]
        uid = row.get("series_uid") or None
        scan_id = row.get("scan_id") or scan_id_for(source, uid)
        if not SCAN_ID_PATTERN.match(scan_id):
            raise UsageError(f"row {i}: scan_id {scan_id!r} is not a folder name ([A-Za-z0-9._-], 120 at most)", path)
        if scan_id.casefold() in seen:  # case-insensitive file systems would share one folder
            raise UsageError(f"rows {seen[scan_id.casefold()]} and {i}: scan_id {scan_id!r} twice", path)
        seen[scan_id.casefold()] = i
        try:
            kvp = float(row["kvp"]) if row.get("kvp") else None
        except ValueError:
            raise UsageError(f"row {i}: kvp {row['kvp']!r} is not a number", path) from None
        labels = row.get("labels") or None
        if labels is not None and not os.path.isabs(labels):
            labels = str(path.parent / labels)
        if not source.exists():
            failures.append(ScanOutcome(scan_id, os.path.abspath(source), uid, EXIT_INVALID_INPUT,
                                        f"{os.path.abspath(source)}: no such file or folder"))
            continue
        jobs.append(ScanJob(scan_id, os.path.abspath(source), uid, kvp=kvp, labels=labels))
        if source.is_dir() or volume_format(source) is None:
            first = _first_dicom(source)
            if first is not None:
                phi[scan_id] = _phi_terms(first)
    return _unique(jobs, failures, [], phi)


def _first_dicom(source: Path) -> str | None:
    """A file of the DICOM folder (or the DICOM file) ``source``, for its patient name."""
    if source.is_file():
        return str(source)
    for root, _dirs, files in os.walk(source):
        if files:
            return os.path.join(root, sorted(files)[0])
    return None


def _unique(jobs: list[ScanJob], failures: list[ScanOutcome], notes: list[str],
            phi: dict[str, tuple[str, ...]]) -> Discovery:
    """Drop repeated scans (the same file or series reached twice), sort by scan ID."""
    by_id: dict[str, ScanJob] = {}
    notes = list(notes)
    for job in jobs:
        if job.scan_id in by_id:
            notes.append(f"{job.scan_id}: found twice ({job.source}); analysed once")
            continue
        by_id[job.scan_id] = job
    failed = {}
    for f in failures:
        failed.setdefault(f.scan_id, f)
    return Discovery(tuple(by_id[k] for k in sorted(by_id)), tuple(failed[k] for k in sorted(failed)), tuple(notes),
                     {k: v for k, v in phi.items() if k in by_id})

