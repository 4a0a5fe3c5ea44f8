"""One scan of a batch: what to analyse (:class:`ScanJob`), how it ended (:class:`ScanOutcome`), and
:func:`run_job`, the function a worker process runs.

:func:`run_job` is a module-level function of plain dataclasses, so a
``dask.distributed`` worker on any machine can run it (the STYLE.md sketch 3.3):
paths go in, a small record comes out, and the scan's files are written by the
worker into the shared output folder. Expected failures
(:class:`~ctbmd.errors.CtbmdError`) and bugs alike come back as a
:class:`ScanOutcome` with their exit code, so one bad scan never stops a batch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ctbmd.errors import EXIT_INTERNAL, EXIT_OK, CtbmdError
from ctbmd.segment.builtin import REPORTED_LEVELS

#: Sub-folders of a batch's output folder: finished scans, and unfinished ones (removed at each start).
SCANS_DIR = "scans"
STAGING_DIR = ".staging"
#: Written into each finished scan's folder beside the files of ``ctbmd run``.
SCAN_RECORD = "scan.json"


@dataclass(frozen=True)
class ScanJob:
    """One scan to analyse.

    Attributes
    ----------
    scan_id : str
        Its output folder's name under ``scans/``: unique in the batch
        (:func:`ctbmd.batch.discover.scan_id_for`).
    source : str
        Absolute path of a volume file or of the folder holding a DICOM series.
    series_uid : str or None
        The DICOM series to read (its SeriesInstanceUID, or the reader's key when the UID is empty).
    files : tuple of str or None
        The series' files, when discovery has listed them (then the folder is not searched again).
    kvp : float or None
        Tube voltage (kV) for this scan, from a manifest; overrides the batch's ``--kvp``.
    labels : str or None
        A vertebra label map for this scan, from a manifest (``--segmenter labels`` for this scan).
    """

    scan_id: str
    source: str
    series_uid: str | None = None
    files: tuple[str, ...] | None = None
    kvp: float | None = None
    labels: str | None = None

    def fingerprint(self) -> dict:
        """What makes this scan this scan: source, series, per-scan kVp and label map, and the number of
        files of a listed series. A finished scan whose ``scan.json`` records another fingerprint is redone."""
        return {"source": self.source, "series_uid": self.series_uid, "kvp": self.kvp, "labels": self.labels,
                "n_files": None if self.files is None else len(self.files)}


@dataclass(frozen=True)
class AnalysisOptions:
    """The options every scan of a batch is analysed with (those of ``ctbmd run``).

    A batch's output folder records them (``batch.json``); a re-run with other
    options is refused, so one cohort table never mixes two methods.
    """

    segmenter: str = "builtin"
    label_map: str = "auto"
    levels: tuple[str, ...] = REPORTED_LEVELS
    kvp: float | None = None
    rods: str | None = None
    scanner_profile: str | None = None
    model: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON types (lists for tuples), as ``batch.json`` stores them."""
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d


@dataclass(frozen=True)
class ScanOutcome:
    """How one scan ended.

    Attributes
    ----------
    scan_id, source, series_uid :
        As in :class:`ScanJob`.
    exit_code : int
        The code ``ctbmd run`` would exit with: 0 written, 3 invalid input, 4 no
        nameable spine, 5 internal error, 2 a usage problem (:mod:`ctbmd.errors`).
    reason : str or None
        One line on why it failed (None when written).
    seconds : float
        Wall time of the attempt.
    """

    scan_id: str
    source: str
    series_uid: str | None
    exit_code: int
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the scan's outputs are written."""
        return self.exit_code == EXIT_OK


def scan_folder(out_dir: str | Path, scan_id: str) -> Path:
    """The folder of a finished scan: ``out_dir/scans/scan_id``."""
    return Path(out_dir) / SCANS_DIR / scan_id


def is_done(out_dir: str | Path, scan_id: str) -> bool:
    """True when the scan's folder is in place (it appears whole, by one rename, so it is complete)."""
    return (scan_folder(out_dir, scan_id) / "result.json").is_file()


def done_with(out_dir: str | Path, job: ScanJob) -> bool:
    """True when ``job``'s folder is in place and was made from the same inputs (:meth:`ScanJob.fingerprint`).

    A folder whose ``scan.json`` is missing, unreadable or records other inputs
    (a manifest row given another kVp, label map or path; a series that has
    gained slices) is not done: the batch redoes it.
    """
    if not is_done(out_dir, job.scan_id):
        return False
    try:
        record = json.loads((scan_folder(out_dir, job.scan_id) / SCAN_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("fingerprint") == job.fingerprint()


@lru_cache(maxsize=2)
def _model(path: str):
    """A model folder loaded once per worker process."""
    from ctbmd.api import load_model

    return load_model(path)


def run_job(job: ScanJob, options: AnalysisOptions, out_dir: str) -> ScanOutcome:
    """Analyse one scan and move its files into ``out_dir/scans/<scan_id>`` in one rename.

    The files are written into ``out_dir/.staging/`` first; the finished
    folder is renamed into place only when all are written. So at any moment
    (a ``kill -9`` included) the scan's folder is either absent or complete,
    and a scan whose folder exists is done. A retry of a scan that is done
    (Dask re-runs the tasks of a worker that died) returns at once.

    Parameters
    ----------
    job : ScanJob
    options : AnalysisOptions
    out_dir : str
        The batch's output folder (on a cluster: a path every worker can write).

    Returns
    -------
    ScanOutcome
        Exit code 0 when written; the :class:`~ctbmd.errors.CtbmdError`'s exit
        code and one-line reason when the scan is refused; 5 and the exception
        for a bug. Never raises for a scan's failure.
    """
    from ctbmd import __version__
    from ctbmd.api import analyse
    from ctbmd.io import read_ct, write_atomic
    from ctbmd.report import write_files

    start = time.perf_counter()

    def outcome(code: int, reason: str | None = None) -> ScanOutcome:
        return ScanOutcome(job.scan_id, job.source, job.series_uid, code, reason,
                           round(time.perf_counter() - start, 2))

    final = scan_folder(out_dir, job.scan_id)
    if done_with(out_dir, job):
        return outcome(EXIT_OK)
    try:
        ct = read_ct(job.source, job.series_uid, job.files)
        model = _model(options.model) if options.model else None
        res = analyse(ct, segmenter=options.segmenter, labels=job.labels, label_map=options.label_map,
                      levels=options.levels, kvp=job.kvp if job.kvp is not None else options.kvp,
                      rods=options.rods, scanner_profile=options.scanner_profile, model=model)
        staging_root = Path(out_dir) / STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{job.scan_id}.", dir=staging_root))
        try:
            write_files(res, staging)
            record = {"scan_id": job.scan_id, "source": job.source, "series_uid": job.series_uid,
                      "fingerprint": job.fingerprint(),
                      "seconds": round(time.perf_counter() - start, 2), "ctbmd_version": __version__,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_atomic(staging / SCAN_RECORD, lambda p: p.write_text(json.dumps(record, indent=2)))
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not done_with(out_dir, job):  # else: another attempt finished it first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except CtbmdError as exc:
        return outcome(exc.exit_code, exc.one_line('cli'))
    except Exception as exc:  # noqa: BLE001 - a bug in one scan is recorded; the batch goes on
        detail = " ".join(str(exc).split())[:300]
        return outcome(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {detail}")
    return outcome(EXIT_OK)
