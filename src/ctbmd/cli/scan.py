"""``ctbmd run`` and ``ctbmd pacs``: one scan, from a file, a folder or a PACS."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from ctbmd.cli.app import (Command, LabelMap, Segmenter, app, err, one_line_errors)


@app.command(cls=Command)
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
    with one_line_errors(debug):
        if segmenter == "labels" and labels is None:
            from ctbmd.errors import UsageError
            raise UsageError("--segmenter labels needs --labels FILE")
        options = dict(segmenter=segmenter, labels=labels, label_map=label_map, series_uid=series_uid,
                       levels=parse_levels(levels), kvp=kvp, rods=rods, scanner_profile=scanner_profile,
                       model=cli_model(model))
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


@app.command(cls=Command)
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

    with one_line_errors(debug):
        with _stage_progress(quiet) as tick:
            res, pushed = pull_analyse_push(url, series, out, push=push, user=user,
                                            password=os.environ.get(PASSWORD_ENV), deidentify=deidentify,
                                            levels=parse_levels(levels), kvp=kvp, progress=tick)
    _print_summary(res.to_dict(), out)
    if push:
        typer.echo(f"pushed to {url}: {len(pushed)} objects (SEG, SR, SC) into the source study")


def cli_model(path: Path | None):
    """The model folder of ``--model``, loaded; a missing PyTorch or MONAI is named with the option."""
    if path is None:
        return None
    from ctbmd.api import load_model, require_dl

    require_dl("--model", path)
    return load_model(path)


