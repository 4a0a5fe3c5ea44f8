"""Command line: ``ctbmd run INPUT --out DIR``.

Exit codes: 0 success, 2 bad usage, 3 unreadable or invalid input, 4 no spine
or no identifiable level, 5 internal error (see :mod:`ctbmd.errors`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from ctbmd import __version__
from ctbmd.errors import EXIT_INTERNAL, CtbmdError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ctbmd: vertebral BMD from routine CT (research use only, not a medical device).")
err = Console(stderr=True)


@app.callback()
def _main() -> None:
    """ctbmd: vertebral BMD from routine CT."""


@app.command()
def run(
    input: Path = typer.Argument(..., help="CT: .nii/.nii.gz/.nrrd/.mha file or DICOM folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    segmenter: str = typer.Option("builtin", "--segmenter", help="builtin | labels | totalsegmentator"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Existing vertebra label map; implies --segmenter labels."),
    label_map: str = typer.Option("auto", "--label-map", help="auto | total | verse | vertebrae_pp | vertebrae_pp_refined"),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM series to read."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
) -> None:
    """Measure per-vertebra trabecular BMD and classify the patient (ACR-QCT)."""
    from ctbmd.pipeline import STAGES, run as run_pipeline

    if labels is not None and segmenter == "builtin":
        segmenter = "labels"
    logging.basicConfig(level=logging.WARNING)
    try:
        if quiet:
            result = run_pipeline(input, out, segmenter=segmenter, labels=labels, label_map=label_map,
                                  series_uid=series_uid)
        else:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
                task = bar.add_task("starting", total=len(STAGES))

                def tick(stage: str) -> None:
                    bar.update(task, description=f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}",
                               completed=STAGES.index(stage))

                result = run_pipeline(input, out, progress=tick, segmenter=segmenter, labels=labels,
                                      label_map=label_map, series_uid=series_uid)
    except CtbmdError as exc:
        typer.echo(f"ctbmd: error: {exc.one_line()}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, distinct code
        if debug:
            raise
        detail = " ".join(str(exc).split())
        typer.echo(f"ctbmd: internal error: {type(exc).__name__}: {detail} (rerun with --debug and report it)", err=True)
        raise typer.Exit(EXIT_INTERNAL) from None
    p = result["patient"]
    levels = ", ".join(f"{lv['level']} {lv['trabecular_hu_median']:.0f} HU" + (
        f"/{lv['bmd_mg_cm3']:.0f} mg/cm³" if lv["bmd_mg_cm3"] is not None else "")
        for lv in result["levels"] if lv["trabecular_hu_median"] is not None)
    typer.echo(f"levels: {levels}")
    typer.echo(f"patient: {p['category'] or 'not classified'}"
               + (f" ({p['bmd_mg_cm3']:.1f} mg/cm³, {'+'.join(p['levels_used'])})" if p["bmd_mg_cm3"] else ""))
    typer.echo(f"outputs: {out}")


@app.command()
def version() -> None:
    """Print the ctbmd version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
