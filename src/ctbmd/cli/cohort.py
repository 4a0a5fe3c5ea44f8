"""``ctbmd batch`` and ``ctbmd calibrate-scanner``: many scans, and a scanner's rod-phantom profile."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from ctbmd.cli.app import (BatchSegmenter, Command, LabelMap, app, err, one_line_errors)
from ctbmd.cli.scan import cli_model


@app.command(cls=Command)
def batch(
    inputs: Optional[list[Path]] = typer.Argument(None, metavar="INPUTS", help="Folders (searched recursively "
                                                  "for DICOM series and "
                                                             ".nii/.nii.gz/.nrrd/.mha files) or files."),
    out: Path = typer.Option(..., "--out", "-o", help="Batch folder: scans/<scan_id>/, cohort.csv, cohort.parquet, "
                                                      "failed.csv, batch.log. Re-run the same command to resume."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV with a path column (and optionally "
                                                                     "series_uid, scan_id, kvp, labels): one scan a row."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Local worker processes (default: one per "
                                                                        "core with 2 GB of memory each)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run on a Dask cluster at this address "
                                                                      "(tcp://host:8786); inputs and --out on a "
                                                                      "shared path."),
    segmenter: BatchSegmenter = typer.Option("builtin", "--segmenter", help="Vertebra labeller (a manifest's "
                                             "labels column gives per-scan label maps instead)."),
    label_map: LabelMap = typer.Option("auto", "--label-map", help="Numbering of the manifest's label maps."),
    levels: str = typer.Option("T11-L5", "--levels", help="Levels to measure, as for `ctbmd run`."),
    kvp: Optional[float] = typer.Option(None, "--kvp", help="Tube voltage (kV) for scans whose header has none."),
    rods: Optional[str] = typer.Option(None, "--rods", help="Rod phantom spec, as for `ctbmd run`."),
    scanner_profile: Optional[Path] = typer.Option(None, "--scanner-profile", help="Scanner profile, as for "
                                                                                   "`ctbmd run`."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder from `ctbmd train`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Analyse a cohort: every scan in folders or a manifest, in parallel, resumable; one table."""
    from ctbmd.errors import EXIT_BATCH_FAILURES, UsageError, require_optional
    from ctbmd.segment import parse_levels

    with one_line_errors(debug):
        require_optional(("distributed", "pyarrow"), "ctbmd batch", "pip install 'ctbmd[batch]'")
        from ctbmd.batch import AnalysisOptions, find_scans, read_manifest, run_batch
        from ctbmd.batch.runner import check_out_dir
        from ctbmd.pipeline import check_kvp

        if not inputs and manifest is None:
            raise UsageError("give input folders or files, or --manifest CSV")
        if inputs and manifest is not None:
            raise UsageError("give input folders or files, or --manifest CSV, not both: a scan found in both "
                             "would be named twice")
        if scheduler is not None and workers is not None:
            raise UsageError("--workers starts a local cluster; with --scheduler the cluster's workers run the scans")
        check_kvp(kvp)
        cli_model(model)  # a model that cannot be loaded fails here, before the batch
        options = AnalysisOptions(segmenter=segmenter, label_map=label_map, levels=parse_levels(levels), kvp=kvp,
                                  rods=rods, scanner_profile=None if scanner_profile is None else
                                  str(scanner_profile.resolve()),
                                  model=None if model is None else str(model.resolve()))
        check_out_dir(out, options)  # a folder of another batch is refused before the inputs are searched
        found = read_manifest(manifest) if manifest is not None else find_scans(inputs)
        if not quiet:
            err.print(f"found {len(found.jobs)} scans" + (f" and {len(found.failures)} inputs that are no scan"
                                                          if found.failures else ""))
        with _batch_progress(quiet) as on_event:
            summary = run_batch(found, out, options, workers=workers, scheduler=scheduler, progress=on_event)
    rate = (summary.done - summary.skipped) / summary.seconds * 3600 if summary.seconds > 0 else 0.0
    typer.echo(f"batch: {summary.total} scans: {summary.done} done ({summary.skipped} from earlier runs), "
               f"{len(summary.failed)} failed; {summary.seconds:.0f} s, {rate:.0f} scans/hour")
    typer.echo(f"tables: {', '.join(str(f) for f in summary.files)}")
    if summary.failed:
        typer.echo(f"failed scans and their reasons: {out / 'failed.csv'}")
        raise typer.Exit(EXIT_BATCH_FAILURES)


@contextmanager
def _batch_progress(quiet: bool):
    """A progress callback for :func:`ctbmd.batch.run_batch`: a rich bar on a terminal (done, failed, rate,
    ETA), one line per scan otherwise, nothing with ``quiet``."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    if quiet:
        yield None
        return
    started = time.monotonic()
    state = {"task": None, "analysed": 0}

    def line(ev) -> str:
        o = ev.outcome
        what = "done" if o.ok else f"failed (exit {o.exit_code}): {o.reason}"
        return f"[{ev.done + ev.failed}/{ev.total}] {o.scan_id} {what} ({o.seconds:.1f} s)"

    if not err.is_terminal:
        yield lambda ev: err.print(line(ev), markup=False, highlight=False, soft_wrap=True)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), console=err) as bar:
        def on_event(ev) -> None:
            if state["task"] is None:
                state["task"] = bar.add_task("scans", total=ev.total, completed=ev.done + ev.failed - 1, failed=0,
                                             rate="")
            state["analysed"] += ev.outcome.seconds > 0  # inputs that are no scan are not analysed
            rate = state["analysed"] / max(time.monotonic() - started, 1e-6) * 3600
            bar.update(state["task"], completed=ev.done + ev.failed, failed=ev.failed,
                       rate=f"{rate:.0f} scans/h" if state["analysed"] else "")
            if not ev.outcome.ok:
                bar.console.print(line(ev), markup=False, highlight=False, soft_wrap=True)

        yield on_event


@app.command("calibrate-scanner", cls=Command)
def calibrate_scanner(
    phantom_scan: Path = typer.Argument(..., metavar="PHANTOM_SCAN", help="CT of the rod phantom (file or DICOM "
                                        "folder), at the kVp and "
                                                  "kernel the profile is for."),
    rods: str = typer.Option(..., "--rods", help="K2HPO4 mg/cm3 per rod, left to right (e.g. 0,50,100,150,200), "
                                                 "or K:water pairs from the certificate, or a JSON file."),
    out: Path = typer.Option(..., "--out", "-o", help="Profile to write (JSON)."),
    kvp: Optional[float] = typer.Option(None, "--kvp", help="Tube voltage (kV, 70-150) when the header has none."),
    model: Optional[str] = typer.Option(None, "--model", help="Scanner model, recorded in the profile."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM series to read."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Make a scanner profile from a rod-phantom scan (asynchronous QCT calibration) for `run --scanner-profile`."""
    from ctbmd.calibrate.rods import make_profile, parse_rod_spec, save_profile
    from ctbmd.io import read_ct
    from ctbmd.pipeline import check_kvp

    with one_line_errors(debug):
        check_kvp(kvp)
        spec = parse_rod_spec(rods)
        ct = read_ct(phantom_scan, series_uid)
        profile = make_profile(ct, spec, model=model, kvp=kvp)
        path = save_profile(profile, out)
    typer.echo(f"rods: {len(profile.rods)}; sigma_CT {profile.sigma_ct:.4f} HU per mg/cm³ "
               f"(SE {profile.sigma_ct_se:.4f}), beta_CT {profile.beta_ct:+.1f} HU; {profile.kvp:g} kV, "
               f"kernel {profile.convolution_kernel or 'unknown'}")
    typer.echo(f"profile: {path}")


