"""Command line: ``ctbmd run INPUT --out DIR [--model MODEL_DIR]``, ``ctbmd simulate --out DIR``,
``ctbmd calibrate-scanner PHANTOM_SCAN --rods SPEC --out profile.json``,
``ctbmd evaluate --pred PRED --ref REF.csv --out DIR`` and ``ctbmd train --manifest M.csv --out MODEL_DIR``.

``ctbmd batch INPUTS... --out DIR`` and ``ctbmd pacs --url URL --series UID --out DIR [--push]``.

Exit codes: 0 success, 2 bad usage, 3 unreadable or invalid input, 4 no spine
or no identifiable level, 5 internal error, 6 batch with failures, 7-9 PACS
errors (see :mod:`ctbmd.errors`).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from typer.core import TyperCommand, TyperGroup

from ctbmd import __version__
from ctbmd.errors import EXIT_INTERNAL, CtbmdError

# The closed sets of option values, as typer choices: --help lists them, and a value outside one is a usage
# error (exit 2) that names them. They repeat the library's tuples named beside them, which cannot be
# imported here without numpy, SimpleITK or torch (a slow --help); tests/test_cli_help.py checks that they agree.
Segmenter = Literal["builtin", "labels", "totalsegmentator"]  # ctbmd.segment.SEGMENTERS
BatchSegmenter = Literal["builtin", "totalsegmentator"]  # label maps come from a batch manifest's labels column
LabelMap = Literal["auto", "total", "verse", "vertebrae_pp", "vertebrae_pp_refined"]  # segment.labelmaps.LABEL_MAPS
Phase = Literal["native", "arterial", "portal_venous"]  # ctbmd.simulate.PHASES
PhantomKvp = Literal[80, 100, 120, 140]  # ctbmd.simulate.KVP_CHOICES
TissueModel = Literal["realistic", "icru44"]  # ctbmd.simulate.TISSUE_MODELS
Fov = Literal["abdomen", "chest"]  # ctbmd.simulate.FOVS
RibPairs = Literal[11, 12, 13]  # ctbmd.simulate.RIB_PAIRS
Transition = Literal["none", "lumbarised_s1", "sacralised_l5"]  # ctbmd.simulate.TRANSITIONS
Sacrum = Literal["segmented", "simple"]  # ctbmd.simulate.SACRUM_STYLES
Arch = Literal["densenet121", "densenet_small", "resnet18", "resnet50"]  # ctbmd.model.nets.ARCHS
Dims = Literal["3d", "2d", "2.5d", "sagittal", "sagittal3"]  # ctbmd.model.nets.DIMS
Task = Literal["regression", "binary", "categories"]  # ctbmd.model.train.TASKS
Device = Literal["auto", "cpu", "cuda"]  # ctbmd.model.train.resolve_device
Protocol = Literal["li2024", "peng2024", "jcat2023", "yasaka2020", "huang2025"]  # ctbmd.model.protocols.PROTOCOLS


def _tidy_help(command) -> None:
    """Make typer's help of ``command`` read cleanly: no value placeholder on flags (typer shows
    ``--quiet <bool>``), a choice as ``[native | arterial | portal_venous]`` (spaced, so that a narrow terminal
    wraps it between two choices, not inside one), and square brackets in help texts kept
    (``pip install 'ctbmd[dl]'``; Rich markup would take ``[dl]`` for a style and drop it)."""
    from rich.markup import escape

    rich = getattr(command, "rich_markup_mode", None) == "rich"
    if rich and command.help:
        command.help = escape(command.help)
    for param in command.params:
        if rich and getattr(param, "help", None):
            param.help = escape(param.help)
        if param.metavar is not None or param.param_type_name != "option":
            continue
        desc = getattr(param, "type_descriptor", None)
        if param.is_flag:
            param.metavar = ""
        elif desc is not None and desc.is_choice and desc.choices:
            param.metavar = "[" + " | ".join(str(c) for c in desc.choices) + "]"  # Literal values: str or int


def _plain_help_option(option):
    """The ``--help`` option without typer's ``<bool>``."""
    if option is not None and option.metavar is None:
        option.metavar = ""
    return option


class _Group(TyperGroup):
    """The ``ctbmd`` group, its help tidied as :func:`_tidy_help` says."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        _tidy_help(self)

    def get_help_option(self, ctx):
        return _plain_help_option(super().get_help_option(ctx))


class _Command(TyperCommand):
    """A command whose help reads like click's: ``Usage: ctbmd run [OPTIONS] INPUT`` (typer writes
    ``{input}``), ``[INPUTS]...`` for an optional list, and the rest as :func:`_tidy_help` says."""

    def __init__(self, name, **kwargs) -> None:
        super().__init__(name, **kwargs)
        _tidy_help(self)

    def get_help_option(self, ctx):
        return _plain_help_option(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="ctbmd: vertebral BMD from routine CT (research use only, not a medical device).")
err = Console(stderr=True)


def _configure_logging(debug: bool) -> None:
    """ctbmd's warnings on stderr; other libraries' messages and Python warnings (pydicom, nibabel,
    matplotlib, highdicom) only with ``--debug``, which also shows ctbmd's debug log (what the readers
    printed, :func:`ctbmd.io.quiet_libraries`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    logging.captureWarnings(True)
    if debug:
        logging.getLogger("ctbmd").setLevel(logging.DEBUG)
        return
    for handler in logging.getLogger().handlers:
        if not any(getattr(f, "__name__", "") == "_ctbmd_only" for f in handler.filters):
            def _ctbmd_only(record: logging.LogRecord) -> bool:
                return record.name.startswith("ctbmd") or record.levelno >= logging.ERROR

            handler.addFilter(_ctbmd_only)


#: Flags whose name is not their Python parameter's: library errors name parameters (ctbmd.errors.parameter_text).
CLI_FLAGS = {"mapping": "--map", "field_name": "--field", "n_boot": "--bootstrap", "slice_mm": "--slice",
             "pixel_mm": "--pixel", "psf_mm": "--psf", "out_dir": "--out"}


@contextmanager
def _one_line_errors(debug: bool = False):
    """Turn a :class:`CtbmdError` into ``ctbmd: error: <path>: <reason>`` and its exit code, and any
    other exception into one ``internal error`` line and exit code 5 (re-raised with ``debug``).
    Logging is set up first (:func:`_configure_logging`)."""
    _configure_logging(debug)
    try:
        yield
    except CtbmdError as exc:
        typer.echo(f"ctbmd: error: {exc.one_line('cli', CLI_FLAGS)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, distinct code
        if debug:
            raise
        detail = " ".join(str(exc).split())
        typer.echo(f"ctbmd: internal error: {type(exc).__name__}: {detail} (rerun with --debug and report it)", err=True)
        raise typer.Exit(EXIT_INTERNAL) from None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the ctbmd version and exit.")) -> None:
    """ctbmd: vertebral BMD from routine CT."""


@app.command(cls=_Command)
def run(
    input: Path = typer.Argument(..., metavar="INPUT", help="CT: .nii/.nii.gz/.nrrd/.mha file or DICOM folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    segmenter: Segmenter = typer.Option("builtin", "--segmenter", help="Vertebra labeller: the builtin one, the "
                                        "label map of --labels, or TotalSegmentator (pip install "
                                        "'ctbmd[totalseg]')."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Existing vertebra label map; implies --segmenter labels."),
    label_map: LabelMap = typer.Option("auto", "--label-map", help="Numbering of the --labels map (auto: "
                                       "recognised from its values)."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM series to read."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder from `ctbmd train`: adds "
                                                                "bmd_dl_mg_cm3 (or t_score_dl, tbs_dl, "
                                                                "p_low_bmd_dl) per level."),
    levels: str = typer.Option("T11-L5", "--levels", help="Levels to measure, e.g. T11-L5 (default), T4-T12 on a "
                                                          "chest CT, or L1,L2,L4."),
    kvp: Optional[float] = typer.Option(None, "--kvp", help="Tube voltage (kV, 70-150) when the header has none "
                                                            "(NIfTI); without it 120 kV is assumed, less certainly."),
    rods: Optional[str] = typer.Option(None, "--rods", help="Calibration phantom in the scan (synchronous QCT): "
                                                            "K2HPO4 mg/cm3 per rod, left to right, e.g. 0,50,100,150,200, "
                                                            "or K:water pairs, or a JSON file."),
    scanner_profile: Optional[Path] = typer.Option(None, "--scanner-profile", help="Profile from `ctbmd "
                                                                                   "calibrate-scanner` (asynchronous QCT)."),
    deidentify: bool = typer.Option(False, "--deidentify", help="De-identify the DICOM SEG/SR/SC (DICOM PS3.15 "
                                    "Basic Profile) and leave path, patient ID and series UID out of the other files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Measure per-vertebra trabecular BMD and classify the patient (ACR-QCT)."""
    from ctbmd.api import run as run_scan
    from ctbmd.segment import parse_levels

    if labels is not None and segmenter == "builtin":
        segmenter = "labels"
    with _one_line_errors(debug):
        if segmenter == "labels" and labels is None:
            from ctbmd.errors import UsageError
            raise UsageError("--segmenter labels needs --labels FILE")
        options = dict(segmenter=segmenter, labels=labels, label_map=label_map, series_uid=series_uid,
                       levels=parse_levels(levels), kvp=kvp, rods=rods, scanner_profile=scanner_profile,
                       model=_cli_model(model))
        earlier = (out / "result.json").is_file()
        with _stage_progress(quiet) as tick:
            result = run_scan(input, out, progress=tick, deidentify=deidentify, **options).to_dict()
    _print_summary(result, out, replaced=earlier)


@contextmanager
def _stage_progress(quiet: bool):
    """A spinner naming the pipeline stage on stderr; yields the ``progress`` callback (None when quiet)."""
    from ctbmd.pipeline import STAGES

    if quiet:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=len(STAGES))

        def tick(stage: str) -> None:
            bar.update(task, description=f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}",
                       completed=STAGES.index(stage))

        yield tick


def _print_summary(result: dict, out: Path, replaced: bool = False) -> None:
    """The levels, the patient category and the model's values, one line each, on stdout.

    ``replaced``: ``out`` held an earlier result, which this run replaced whole.
    """
    p = result["patient"]
    levels = ", ".join(f"{lv['level']} {lv['trabecular_hu_mean']:.0f} HU" + (
        f"/{lv['bmd_mg_cm3']:.0f} mg/cm³" if lv["bmd_mg_cm3"] is not None else "")
        for lv in result["levels"] if lv["trabecular_hu_mean"] is not None)
    typer.echo(f"levels: {levels}")
    ci = p.get("bmd_ci95_mg_cm3")
    typer.echo(f"patient: {p['category'] or 'not classified'}"
               + (" (uncertain)" if p.get("category_certain") is False else "")
               + (f" ({p['bmd_mg_cm3']:.1f} mg/cm³" + (f", 95% {ci[0]:.0f}-{ci[1]:.0f}" if ci else "")
                  + f", {'+'.join(p['levels_used'])})" if p["bmd_mg_cm3"] else ""))
    if "model" in result:
        from ctbmd.result import model_value_key

        key = model_value_key(result["model"]["target"])
        unit = " mg/cm³" if key == "bmd_dl_mg_cm3" else ""
        digits = 0 if unit else (1 if key == "t_score_dl" else 3)
        values = ", ".join(f"{lv['level']} {lv[key]:.{digits}f}" for lv in result["levels"]
                           if lv.get(key) is not None)
        origin = "trained on simulated phantoms" if result["model"]["phantom_trained"] else result["model"]["trained_on"]
        typer.echo(f"model ({origin}): {values}; patient {p[key] if p[key] is not None else 'n/a'}{unit}, "
                   f"{p['category_dl'] or 'not classified'}")
    typer.echo(f"outputs: {out}" + (" (an earlier result there was replaced whole)" if replaced else ""))


@app.command(cls=_Command)
def pacs(
    url: str = typer.Option(..., "--url", help="Orthanc REST API, e.g. http://127.0.0.1:8042."),
    series: str = typer.Option(..., "--series", help="SeriesInstanceUID of the CT series to analyse."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (the files of `ctbmd run`)."),
    push: bool = typer.Option(False, "--push", help="Store the DICOM SEG, SR and Secondary Capture into the "
                              "series' study (all or none)."),
    user: Optional[str] = typer.Option(None, "--user", help="HTTP basic-auth user; the password is read from "
                                       "the environment variable CTBMD_PACS_PASSWORD."),
    levels: str = typer.Option("T11-L5", "--levels", help="Levels to measure, as for `ctbmd run`."),
    kvp: Optional[float] = typer.Option(None, "--kvp", help="Tube voltage (kV) when the header has none."),
    deidentify: bool = typer.Option(False, "--deidentify", help="De-identify the outputs (not with --push)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Pull a CT series from an Orthanc PACS, analyse it, and with --push store SEG, SR and SC back.

    Exit codes beyond `run`'s: 7 PACS unreachable, 8 series not on the PACS, 9 PACS refused (nothing pushed).
    """
    import os

    from ctbmd.pacs import PASSWORD_ENV, pull_analyse_push
    from ctbmd.segment import parse_levels

    with _one_line_errors(debug):
        with _stage_progress(quiet) as tick:
            res, pushed = pull_analyse_push(url, series, out, push=push, user=user,
                                            password=os.environ.get(PASSWORD_ENV), deidentify=deidentify,
                                            levels=parse_levels(levels), kvp=kvp, progress=tick)
    _print_summary(res.to_dict(), out)
    if push:
        typer.echo(f"pushed to {url}: {len(pushed)} objects (SEG, SR, SC) into the source study")


@app.command(cls=_Command)
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

    with _one_line_errors(debug):
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
        _cli_model(model)  # a model that cannot be loaded fails here, before the batch
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


@app.command("calibrate-scanner", cls=_Command)
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

    with _one_line_errors(debug):
        check_kvp(kvp)
        spec = parse_rod_spec(rods)
        ct = read_ct(phantom_scan, series_uid)
        profile = make_profile(ct, spec, model=model, kvp=kvp)
        path = save_profile(profile, out)
    typer.echo(f"rods: {len(profile.rods)}; sigma_CT {profile.sigma_ct:.4f} HU per mg/cm³ "
               f"(SE {profile.sigma_ct_se:.4f}), beta_CT {profile.beta_ct:+.1f} HU; {profile.kvp:g} kV, "
               f"kernel {profile.convolution_kernel or 'unknown'}")
    typer.echo(f"profile: {path}")


def _cli_model(path: Path | None):
    """The model folder of ``--model``, loaded; a missing PyTorch or MONAI is named with the option."""
    if path is None:
        return None
    from ctbmd.api import load_model, require_dl

    require_dl("--model", path)
    return load_model(path)


@app.command(cls=_Command)
def simulate(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (ct.nii.gz or ct/, labels.nii.gz, truth.json)."),
    bmd: str = typer.Option("", "--bmd", help="Per-level K2HPO4 mg/cm³, e.g. L1=95,L2=100; others follow their mean."),
    kvp: PhantomKvp = typer.Option(120, "--kvp", help="Tube voltage (kV)."),
    noise: float = typer.Option(10.0, "--noise", help="Noise SD (HU)."),
    slice_mm: float = typer.Option(2.0, "--slice", help="Slice thickness = spacing (mm)."),
    pixel_mm: float = typer.Option(1.0, "--pixel", help="In-plane pixel size (mm)."),
    psf_mm: float = typer.Option(1.0, "--psf", help="In-plane PSF FWHM (mm)."),
    marrow_fat: float = typer.Option(0.4, "--marrow-fat", help="Marrow fat volume fraction (0-0.95)."),
    body_width: Optional[float] = typer.Option(None, "--body-width", help="Torso width (mm); seeded 280-400 if not given."),
    phase: Phase = typer.Option("native", "--phase", help="Contrast phase."),
    rotation: float = typer.Option(0.0, "--rotation", help="Patient rotation about z (degrees)."),
    no_t12_ribs: bool = typer.Option(False, "--no-t12-ribs", help="Drop the ribs of T12 (= --rib-pairs 11)."),
    l6: bool = typer.Option(False, "--l6", help="A sixth lumbar vertebra (= --transition lumbarised_s1)."),
    metal_level: Optional[str] = typer.Option(None, "--metal-level", help="Level with titanium pedicle screws."),
    tissue_spread: float = typer.Option(0.005, "--tissue-spread", help="With --tissue-model icru44: SD of "
                                                                         "fat/muscle density (fraction)."),
    tissue_model: TissueModel = typer.Option("realistic", "--tissue-model", help="realistic: fat, muscle and "
                                             "blood drawn from published ranges; icru44: ICRU 44 tissues."),
    energy_offset: Optional[float] = typer.Option(None, "--energy-offset", help="Scanner offset (keV) from the "
                                                                                "spectrum model; drawn if not given."),
    rods: Optional[str] = typer.Option(None, "--rods", help="Add a calibration phantom under the patient: rod "
                                                            "spec as for `ctbmd run --rods`, or 'default'."),
    fov: Fov = typer.Option("abdomen", "--fov", help="abdomen: T10-L5 and the sacrum; chest: C6-L2 with the rib "
                                                      "cage, shoulders, lungs, heart and aortic arch."),
    rib_pairs: RibPairs = typer.Option(12, "--rib-pairs", help="11: none on T12; 13: a T13 (VerSe 28) with short "
                                                               "floating ribs."),
    transition: Transition = typer.Option("none", "--transition", help="lumbarised_s1: an L6; sacralised_l5: L5 "
                                                                       "fused with the sacrum. Abdomen only."),
    sacrum: Optional[Sacrum] = typer.Option(None, "--sacrum", help="segmented (default): fused S1-S5, disc "
                                            "remnants, canal, alae, SI joints; simple: a block."),
    stent: bool = typer.Option(False, "--stent", help="Aortic stent graft: distal arch and descending aorta "
                                                      "(chest) or infrarenal aorta (abdomen)."),
    t12_rib_length: Optional[float] = typer.Option(None, "--t12-rib-length", help="Hypoplastic T12 ribs: "
                                                                                  "bony length in mm, e.g. 25."),
    fracture: Optional[str] = typer.Option(None, "--fracture", help="Vertebral compression fractures, "
                                           "LEVEL=KIND:LOSS comma-separated, e.g. L1=wedge:0.3 (kind wedge, "
                                           "biconcave or crush; loss 0.05-0.8 of the height). Recorded in "
                                           "truth.json."),
    dicom: bool = typer.Option(False, "--dicom", help="Write a DICOM series instead of NIfTI."),
    seed: int = typer.Option(0, "--seed", help="Random seed (anatomy, BMD factors, noise)."),
) -> None:
    """Write a known-truth digital phantom of the thoracolumbar spine (or chest) and its truth."""
    from ctbmd.simulate import PhantomSpec, parse_bmd, parse_fractures, simulate_phantom, write_phantom

    with _one_line_errors():
        spec = PhantomSpec(bmd_mg_cm3=parse_bmd(bmd), kvp=kvp, noise_hu=noise, slice_thickness_mm=slice_mm,
                           pixel_mm=pixel_mm, psf_fwhm_mm=psf_mm, marrow_fat_fraction=marrow_fat,
                           body_width_mm=body_width, phase=phase, rotation_deg=rotation, t12_ribs=not no_t12_ribs,
                           l6=l6, metal_level=metal_level, tissue_spread=tissue_spread, seed=seed, fov=fov,
                           rib_pairs=rib_pairs, transition=transition, sacrum=sacrum, stent=stent,
                           t12_rib_length_mm=t12_rib_length, tissue_model=tissue_model,
                           energy_offset_kev=energy_offset, fractures=parse_fractures(fracture) if fracture else {})
        phantom = simulate_phantom(spec)
        if rods is not None:
            from ctbmd.calibrate.rods import parse_rod_spec
            from ctbmd.simulate.rods import add_rod_phantom

            phantom = add_rod_phantom(phantom, None if rods == "default" else parse_rod_spec(rods))
        paths = write_phantom(phantom, out, dicom=dicom)
    truth = phantom.truth
    v = truth["variant"]
    typer.echo(f"anatomy: {v['fov']}, {v['rib_pairs']} rib pairs (lowest on {v['rib_levels'][-1]}), "
               f"transition {v['transition']}" + (f" ({v['sacralised_sides']})" if v["sacralised_sides"] else "")
               + (", stent graft" if v["stent"] else "")
               + (f", T12 ribs {v['t12_rib_length_mm']:g} mm" if v["t12_rib_length_mm"] is not None else ""))
    levels = ", ".join(f"{lv['level']} {lv['bmd_mg_cm3']:.0f}/{lv['qct_equivalent_mg_cm3']:.0f}" for lv in truth["levels"])
    typer.echo(f"levels (K2HPO4 set / QCT-equivalent, mg/cm³): {levels}")
    typer.echo(f"effective energy {truth['scan']['effective_energy_kev']:.1f} keV; "
               f"patient (L1+L2): {truth['patient'].get('qct_equivalent_mg_cm3', float('nan')):.1f} mg/cm³ "
               f"QCT-equivalent, {truth['patient'].get('category')}")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command(cls=_Command)
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of `ctbmd run` outputs (result.json each) or a CSV."),
    ref: Path = typer.Option(..., "--ref", help="Reference CSV: patient_id + level + bmd_mg_cm3 (QCT), "
                                                "or patient_id + t_score/category (DXA)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (metrics.json, metrics.md, PNGs)."),
    split: Optional[str] = typer.Option(None, "--split", help="Column naming each patient's data set "
                                                             "(train/validation/test/external)."),
    mapping: Optional[Path] = typer.Option(None, "--map", help="CSV with scan,patient_id: which result folder "
                                                               "belongs to which patient."),
    field_name: str = typer.Option("bmd_mg_cm3", "--field", help="Per-level value in result.json to evaluate "
                                                                 "(bmd_mg_cm3, or bmd_dl_mg_cm3 of a model)."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Compare predictions with QCT or DXA references: agreement, diagnosis, ROC, with bootstrap CIs."""
    from ctbmd import evaluate as ev

    with _one_line_errors(debug):
        if n_boot < 0:
            from ctbmd.errors import UsageError
            raise UsageError(f"--bootstrap must be >= 0, got {n_boot}")
        reference = ev.read_reference(ref, split_column=split)
        predictions = ev.read_predictions(pred, mapping=mapping, field_name=field_name, split_column=split)
        paired = ev.pair(predictions, reference)
        result = ev.evaluate(paired, n_boot=n_boot, seed=seed)
        result["prediction"] = {"path": str(pred), "field": field_name, "failed": [list(f) for f in predictions.failed]}
        result["reference"] = {"path": str(ref), "kind": reference.kind}
        written = ev.write_evaluation(paired, result, out)
    allm = result["splits"][ev.ALL_SPLITS]

    def figure(key: str, fmt: str) -> str:  # "0.912", or "not computed (needs at least 3 patients, got 1)"
        text = ev.figure_text(allm, key, fmt)
        return (f"not computed ({text.removeprefix('not computed: ')})" if text.startswith("not computed")
                else "n/a" if text == "–" else text)

    if reference.kind == "qct":
        loa = (f"{figure('patient.loa_low', '{:+.1f}')}..{figure('patient.loa_high', '{:+.1f}')}"
               if "patient.loa_low" not in allm["not_computed"] else figure("patient.loa_low", ""))
        typer.echo(f"patients: n {allm['patient']['n']:.0f}, r² {figure('patient.r2', '{:.3f}')}, "
                   f"MAE {figure('patient.mae', '{:.2f}')} mg/cm³, bias {figure('patient.bias', '{:+.2f}')}, "
                   f"LoA {loa}")
    typer.echo(f"diagnosis: accuracy {figure('diagnosis.accuracy', '{:.3f}')}, "
               f"AUC osteoporosis {figure('diagnosis.auc_osteoporosis', '{:.3f}')}")
    if "ci" in allm["not_computed"]:
        typer.echo(f"95% CIs: not computed ({allm['not_computed']['ci']})")
    if result["unmatched_reference"]:
        typer.echo(f"reference patients without a prediction: {len(result['unmatched_reference'])}")
    typer.echo("wrote " + ", ".join(p.name for p in written) + f" to {out}")


@app.command(cls=_Command)
def train(
    ctx: typer.Context,
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Cohort CSV: patient_id, ct, optionally labels "
                                                                "and split, and level + bmd_mg_cm3 (QCT) or "
                                                                "t_score (DXA)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    arch: Arch = typer.Option("densenet121", "--arch", help="Backbone (MONAI DenseNet or ResNet)."),
    dims: Dims = typer.Option("3d", "--dims", help="Input: 3d the whole crop, 2d its mid-axial slice, 2.5d 5 axial "
                                                   "slices, sagittal the mid-sagittal slice, sagittal3 3 sagittal "
                                                   "slices."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds, split by patient."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", help="Patients held out as a test split "
                                                                     "(when the manifest marks none)."),
    epochs: int = typer.Option(60, "--epochs", help="Maximum epochs per fold."),
    patience: int = typer.Option(10, "--patience", help="Early stopping: epochs without a better validation loss."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    classify: bool = typer.Option(False, "--classify", help="Add a 3-class (ACR or WHO) head."),
    task: Task = typer.Option("regression", "--task", help="binary: normal against low BMD (below 120 mg/cm³, "
                              "or T-score -1.0; see --threshold); categories: regression with the 3-class head, "
                              "as --classify."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="With --task binary: a reference below "
                                              "this is low BMD (default 120 mg/cm³ for QCT, -1.0 for a T-score; --protocol huang2025: "
                                              "osteoporosis, 80 mg/cm³ or -2.45)."),
    target: Optional[str] = typer.Option(None, "--target", help="Manifest column to train on: bmd_mg_cm3 or "
                                         "t_score (default: as the manifest gives), or another numeric per-patient "
                                         "column such as tbs."),
    muscle: bool = typer.Option(False, "--muscle", help="Also read an axial 160 mm crop of the paraspinal and psoas "
                                "muscle at each vertebra's level, with a second backbone (Huang 2025)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="On-the-fly MONAI augmentation (rotation, "
                                 "shift, scale, noise, HU jitter); a protocol may turn it off (yasaka2020)."),
    augment_copies: int = typer.Option(0, "--augment-copies", help="Offline expansion (Yasaka 2020: 60): fixed "
                                       "augmented copies per training crop (rotation, parallel shift, noise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, initialisation, augmentation and order."),
    device: Device = typer.Option("auto", "--device", help="Where to train (auto: CUDA when available)."),
    protocol: Optional[Protocol] = typer.Option(None, "--protocol", help="A seed study's protocol (architecture, "
                                                "input, task, augmentation, splits); options given beside it "
                                                "override its defaults."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Crop cache folder (default ~/.cache/ctbmd/crops)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    description: str = typer.Option("", "--description", help="Where the cohort came from (stored in the model)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Train a DL BMD model with patient-grouped k-fold cross-validation; write it with its out-of-fold report."""
    with _one_line_errors(debug):
        from ctbmd.api import require_dl

        require_dl("ctbmd train")
        from ctbmd.model.cohort import default_cache_dir
        from ctbmd.model.train import TrainConfig
        from ctbmd.model.workflow import train_cohort

        values = dict(arch=arch, dims=dims, folds=folds, test_fraction=test_fraction, epochs=epochs,
                      patience=patience, batch_size=batch_size, lr=lr, classify=classify, augment=augment,
                      seed=seed, device=device, target=target, task=task, threshold=threshold,
                      augment_copies=augment_copies, muscle=muscle)
        if protocol is None:
            cfg = TrainConfig(**values)
        else:
            from ctbmd.errors import InvalidInputError
            from ctbmd.model.protocols import resolve

            # typer ships its own click: compare the source by name
            given = {k: v for k, v in values.items()
                     if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
            try:
                cfg = TrainConfig(**{**resolve(protocol, given), "protocol": protocol,
                                     **{k: v for k, v in values.items() if k in ("seed", "device") and k not in given}})
            except ValueError as exc:  # refused like a bad manifest: one line, exit 3, nothing written
                raise InvalidInputError(str(exc), manifest) from None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
            task = bar.add_task("reading the manifest")

            def tick(kind: str, info: dict) -> None:
                if kind == "scan":
                    bar.update(task, description=f"crops: scan {info['done']}/{info['total']} ({info['patient_id']})")
                else:
                    bar.update(task, description=f"fold {info['member'] + 1}/{info['folds']} epoch "
                                                 f"{info['epoch']}/{info['epochs']}: train {info['train_loss']:.3f}, "
                                                 f"validation {info['stop_loss']:.3f} (best epoch {info['best_epoch']})")

            config = train_cohort(manifest, out, cfg, cache_dir=None if no_cache else (cache or default_cache_dir()),
                                  resume=resume, description=description, progress=tick)
    t = config["training"]
    typer.echo(f"trained on {t['n_patients']} patients, {t['n_vertebrae']} vertebrae ({t['data']}); "
               f"{t['failed_scans']} scans failed (see failed.csv)")
    for name, figures in t["out_of_fold"].items():
        if config.get("task") == "binary":
            for unit in ("vertebra", "patient"):
                m = figures[unit]

                def cell(key: str) -> str:
                    v = m[key]
                    if v["value"] is None:
                        return f"{key} n/a"
                    ci = f" ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})" if v["ci95"] else ""
                    return f"{key} {v['value']:.3f}{ci}"

                typer.echo(f"{name:11s} {unit:9s}: n {m['n']} ({m['n_low']} low, below {figures['threshold']:g}); "
                           + ", ".join(cell(k) for k in ("auc", "f1", "recall", "precision", "specificity",
                                                         "accuracy")))
        elif config["target"] == "bmd_mg_cm3":
            for split, m in figures.items():
                v = m["vertebra"]
                typer.echo(f"{name:11s} {split:11s}: vertebrae n {v['n']:.0f}, r² {v['r2']:.3f}, MAE {v['mae']:.2f} "
                           f"mg/cm³, RMSE {v['rmse']:.2f}; AUC osteoporosis {m['auc_osteoporosis']:.3f}")
        else:
            auc, r = figures["auc_osteoporosis"], figures["r"]
            typer.echo(f"{name:11s}: patients n {figures['n_patients']}, r "
                       + ("n/a" if r is None else f"{r:.3f}, r² {r * r:.3f}")
                       + f", MAE {figures['mae']:.3f}, RMSE {figures['rmse']:.3f} ({config['target']})"
                       + ("" if config["target"] != "t_score" else
                          "; AUC osteoporosis " + ("n/a" if auc is None else f"{auc:.3f}")))
    typer.echo(f"model: {out}")


@app.command(cls=_Command)
def version() -> None:
    """Print the ctbmd version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
