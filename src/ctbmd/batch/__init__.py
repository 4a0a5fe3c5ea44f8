"""Cohorts: ``ctbmd batch`` finds every scan in folders or a manifest, analyses each on a
``dask.distributed`` cluster (local processes by default), resumes where it stopped, and
writes one table.

Output folder (``--out DIR``)
-----------------------------
``scans/<scan_id>/``
    The files of ``ctbmd run`` for one scan (``result.json``, ``levels.csv``,
    ``vertebrae.nii.gz``, ``roi.nii.gz``, ``report.png``) and ``scan.json``
    (source, series UID, seconds). A folder appears whole or not at all.
``cohort.csv``, ``cohort.parquet``
    One row per scan and measured level, plus one ``patient`` row per scan
    (:data:`ctbmd.batch.tables.COHORT_COLUMNS`).
``failed.csv``
    One row per scan or input that failed: scan ID, source, series UID, the
    exit code ``ctbmd run`` would give (3 invalid input, 4 no nameable spine,
    5 internal error) and the reason.
``batch.log``
    One line per scan: ID, outcome, seconds, path and series UID; never the
    patient's name or birth date.
``batch.json``
    The options and ctbmd version; a re-run with others is refused.

Re-running the same command skips the scans that are done and redoes those
that failed or were interrupted.

Modules: :mod:`~ctbmd.batch.discover` (inputs -> jobs), :mod:`~ctbmd.batch.jobs`
(one scan, run by a worker), :mod:`~ctbmd.batch.tables` (the tables) and
:mod:`~ctbmd.batch.runner` (the cluster, resuming, the log). ``dask.distributed``
and ``pyarrow`` come with ``pip install 'ctbmd[batch]'``.
"""

from ctbmd.batch.discover import Discovery, find_scans, read_manifest, scan_id_for
from ctbmd.batch.jobs import AnalysisOptions, ScanJob, ScanOutcome, run_job
from ctbmd.batch.runner import BatchEvent, BatchSummary, run_batch

__all__ = ["AnalysisOptions", "BatchEvent", "BatchSummary", "Discovery", "ScanJob", "ScanOutcome", "find_scans",
           "read_manifest", "run_batch", "run_job", "scan_id_for"]
