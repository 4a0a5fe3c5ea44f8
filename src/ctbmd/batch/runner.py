"""Run a batch: skip the scans already done, analyse the rest on a ``dask.distributed`` cluster,
record every outcome, and write the tables.

Local runs start a ``LocalCluster`` of ``workers`` processes with one task
and one thread each (``CTBMD_THREADS=1``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``;
Dask sets the BLAS and OpenMP threads to 1): ``--workers`` is the number of
cores the batch uses, as ``make -j`` is, and a batch scales by scans, not by
threads inside one scan. ``ctbmd run`` alone uses two threads, which makes one
scan about 20% faster but uses 1.2 cores for it; a user who wants that in a
batch sets ``CTBMD_THREADS=2``, which the workers then get. ``scheduler``
connects to an existing cluster instead (``dask scheduler`` / ``dask worker``
on each machine, ctbmd installed there, the inputs and the output folder on a
path every worker sees); set ``CTBMD_THREADS`` in the workers' environment there.

Nothing is lost and nothing duplicated when the batch is killed (``kill -9``)
at any moment:

* each scan's folder appears by one rename once complete (:func:`~ctbmd.batch.jobs.run_job`);
* the tables are rebuilt from the finished folders, in scan ID order, and
  replaced atomically, at checkpoints and at the end;
* a lock (``.lock``, ``flock``) keeps a second batch out of the folder while
  one runs, and dies with its process;
* unfinished staging folders are removed at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ctbmd import __version__
from ctbmd.batch.discover import Discovery, scrub
from ctbmd.batch.jobs import (SCANS_DIR, STAGING_DIR, AnalysisOptions, ScanJob, ScanOutcome, done_with, run_job,
                              scan_folder)
from ctbmd.batch.tables import scan_rows, write_tables
from ctbmd.errors import EXIT_INTERNAL, UsageError
from ctbmd.io import write_atomic

#: The record of the batch's options in its output folder.
BATCH_RECORD = "batch.json"
LOG_FILE = "batch.log"
#: Seconds between rewrites of the tables while a batch runs.
CHECKPOINT_S = 30.0
#: Memory a worker should have (bytes): a full-resolution abdominal CT peaks near 0.9 GB (issue 13).
WORKER_MEMORY_BYTES = 2_000_000_000


@dataclass(frozen=True)
class BatchEvent:
    """What a progress callback receives after each scan.

    Attributes
    ----------
    outcome : ScanOutcome
        The scan that just ended (its reason free of PHI).
    done, failed, total : int
        Scans finished (written), failed, and in the batch, counting those done in earlier runs.
    """

    outcome: ScanOutcome
    done: int
    failed: int
    total: int


@dataclass(frozen=True)
class BatchSummary:
    """How a batch ended.

    Attributes
    ----------
    total : int
        Scans in the batch (jobs and inputs that are no scan).
    done : int
        Scans with outputs, ``skipped`` of them from earlier runs.
    skipped : int
    failed : tuple of ScanOutcome
        Every failure, as in ``failed.csv``.
    seconds : float
    files : tuple of Path
        ``cohort.csv``, ``cohort.parquet``, ``failed.csv``.
    """

    total: int
    done: int
    skipped: int
    failed: tuple[ScanOutcome, ...]
    seconds: float
    files: tuple[Path, ...]


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per core (:func:`cpu_count`), as many as have :data:`WORKER_MEMORY_BYTES` of memory each."""
    from distributed.system import MEMORY_LIMIT

    return max(1, min(cpu_count(), int(MEMORY_LIMIT // WORKER_MEMORY_BYTES)))


@contextmanager
def _lock(out: Path):
    """Hold ``out/.lock`` (flock) for the batch; the kernel drops it when the process dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    handle = open(out / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError("another `ctbmd batch` is writing to this folder", out) from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_out_dir(out_dir: str | Path, options: AnalysisOptions) -> None:
    """Refuse a batch folder that holds a batch made with other options or another ctbmd version.

    Called by :func:`run_batch`, and by the CLI before it searches the inputs.

    Raises
    ------
    UsageError
        ``out_dir`` exists and is not a folder, or its ``batch.json`` differs.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError("`out_dir` is a file, not a folder", out)
    _check_record(out, options, write=False)


def _check_record(out: Path, options: AnalysisOptions, write: bool = True) -> None:
    """Refuse to resume a batch made with other options or another ctbmd version; record them otherwise."""
    record = out / BATCH_RECORD
    wanted = {"ctbmd_version": __version__, "options": options.to_dict()}
    if record.is_file():
        try:
            have = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            have = None
        if have is not None and {k: have.get(k) for k in wanted} != wanted:
            diff = [k for k, v in wanted["options"].items() if (have.get("options") or {}).get(k) != v]
            what = ("options " + ", ".join(diff)) if diff else "ctbmd version " + str(have.get("ctbmd_version"))
            raise UsageError(f"this folder holds a batch made with other {what}: use another `out_dir`, "
                             "so one cohort table never mixes two methods", out)
    if write:
        write_atomic(record, lambda p: p.write_text(json.dumps(wanted, indent=2)))


def _clean(out: Path) -> None:
    """Remove what a killed batch left unfinished: staging folders and temporary table files."""
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    for f in out.glob(".*-*"):
        if f.is_file() and f.name.split("-")[0] in (".cohort", ".failed", ".batch"):
            f.unlink(missing_ok=True)


def _read_rows(out: Path, scan_id: str) -> list[dict] | None:
    """The cohort rows of a finished scan, or None when its ``result.json`` is missing or malformed.

    Raises
    ------
    OSError
        The file exists but cannot be read now (an I/O or network error): the
        scan is neither redone nor removed on a passing fault.
    """
    path = scan_folder(out, scan_id) / "result.json"
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return scan_rows(scan_id, json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@contextmanager
def _client(workers: int, scheduler: str | None):
    """A ``distributed.Client``: on the cluster at ``scheduler``, or on a new LocalCluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})", scheduler) from None
        try:
            yield client
        finally:
            client.close()
        return
    threads = os.environ.get("CTBMD_THREADS", "").strip() or "1"  # one core per worker unless the user says
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR,
                           env={"CTBMD_THREADS": threads, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": threads})
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_batch(discovery: Discovery, out_dir: str | Path, options: AnalysisOptions = AnalysisOptions(), *,
              workers: int | None = None, scheduler: str | None = None, client=None,
              progress: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Analyse every scan of ``discovery`` not done yet; write the tables; return the summary.

    Parameters
    ----------
    discovery : Discovery
        From :func:`~ctbmd.batch.discover.find_scans` or :func:`~ctbmd.batch.discover.read_manifest`.
    out_dir : str or Path
        The batch folder: ``scans/<scan_id>/`` per scan, ``cohort.csv``,
        ``cohort.parquet``, ``failed.csv``, ``batch.log``, ``batch.json``.
    options : AnalysisOptions
        How every scan is analysed.
    workers : int, optional
        Local worker processes (default :func:`default_workers`).
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:8786``) to run on instead.
    client : distributed.Client, optional
        An existing client to run on (the caller keeps and closes it).
    progress : callable, optional
        Called with a :class:`BatchEvent` after each scan.

    Raises
    ------
    UsageError
        The folder is in use by another batch, holds a batch made with other
        options, or the scheduler cannot be reached; ``workers`` < 1.
    """
    if workers is not None and workers < 1:
        raise UsageError(f"`workers` must be at least 1, got {workers}")
    start = time.perf_counter()
    out = Path(out_dir)
    check_out_dir(out, options)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        _check_record(out, options)
        _clean(out)
        (out / SCANS_DIR).mkdir(exist_ok=True)
        log = _Log(out / LOG_FILE)
        log.write(f"start: ctbmd {__version__}, {len(discovery.jobs)} scans, {len(discovery.failures)} inputs "
                  f"that are no scan, options {json.dumps(options.to_dict())}")
        for note in discovery.notes:
            log.write(scrub(note, discovery.phi.get(note.split(":")[0], ())))
        rows: dict[str, list[dict]] = {}
        todo: list[ScanJob] = []
        for job in discovery.jobs:
            got = _read_rows(out, job.scan_id) if done_with(out, job) else None
            if got is None:
                # absent, malformed, or made from other inputs: redone, so the old folder goes
                shutil.rmtree(scan_folder(out, job.scan_id), ignore_errors=True)
                todo.append(job)
            else:
                rows[job.scan_id] = got
        skipped = len(rows)
        failures: list[ScanOutcome] = []
        total = len(discovery.jobs) + len(discovery.failures)
        for f in discovery.failures:
            failures.append(f)
            log.outcome(f)
            if progress:
                progress(BatchEvent(f, len(rows), len(failures), total))
        if skipped:
            log.write(f"{skipped} scans done in an earlier run: skipped")
        files: list[Path] = []
        stream = _execute(todo, options, out, workers or default_workers(), scheduler, client) if todo else iter(())
        try:
            last = time.monotonic()
            for outcome in stream:
                outcome = _scrubbed(outcome, discovery.phi.get(outcome.scan_id, ()))
                got = _read_rows(out, outcome.scan_id) if outcome.ok else None
                if outcome.ok and got is None:
                    outcome = replace(outcome, exit_code=EXIT_INTERNAL,
                                      reason="internal error: the finished folder has no readable result.json")
                if got is not None:
                    rows[outcome.scan_id] = got
                else:
                    failures.append(outcome)
                log.outcome(outcome)
                if progress:
                    progress(BatchEvent(outcome, len(rows), len(failures), total))
                if time.monotonic() - last > CHECKPOINT_S:
                    write_tables(out, rows, failures)
                    last = time.monotonic()
        finally:
            if hasattr(stream, "close"):
                stream.close()  # a Ctrl-C or an error: the cluster is shut down before the tables are written
            files = write_tables(out, rows, failures)
            log.write(f"end: {len(rows)} done ({skipped} earlier), {len(failures)} failed, "
                      f"{time.perf_counter() - start:.1f} s")
            log.close()
    return BatchSummary(total, len(rows), skipped, tuple(sorted(failures, key=lambda f: f.scan_id)),
                        round(time.perf_counter() - start, 1), tuple(files))


def _execute(todo: list[ScanJob], options: AnalysisOptions, out: Path, workers: int, scheduler: str | None,
             client):
    """Yield the outcome of every job, in the order they finish; a worker that dies is an outcome too."""
    from distributed import as_completed

    def submit(c):
        token = uuid.uuid4().hex[:8]
        futures = c.map(run_job, todo, options=options, out_dir=str(out), pure=False,
                        key=[f"ctbmd-{j.scan_id}-{token}" for j in todo])
        jobs = dict(zip((f.key for f in futures), todo))
        for future in as_completed(futures):
            job = jobs[future.key]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost connection: recorded, the batch goes on
                detail = " ".join(str(exc).split())[:200]
                yield ScanOutcome(job.scan_id, job.source, job.series_uid, EXIT_INTERNAL,
                                  f"internal error: the worker failed ({type(exc).__name__}: {detail})")

    if client is not None:
        yield from submit(client)
        return
    with _client(workers, scheduler) as c:
        yield from submit(c)


def _scrubbed(outcome: ScanOutcome, terms: tuple[str, ...]) -> ScanOutcome:
    if not terms or outcome.reason is None:
        return outcome
    return replace(outcome, reason=scrub(outcome.reason, terms))


class _Log:
    """``batch.log``: one line per event, appended and flushed (scans named by ID, path and series UID only)."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self._f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(text.split())}\n")
        self._f.flush()

    def outcome(self, o: ScanOutcome) -> None:
        state = "done" if o.ok else f"failed (exit {o.exit_code})"
        line = f"{o.scan_id}: {state}, {o.seconds:.1f} s; source {o.source}"
        if o.series_uid:
            line += f"; series {o.series_uid}"
        if o.reason:
            line += f"; {o.reason}"
        self.write(line)

    def close(self) -> None:
        self._f.close()
