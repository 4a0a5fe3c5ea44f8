"""Command line: ``ctbmd run INPUT --out DIR [--model MODEL_DIR]``, ``ctbmd simulate --out DIR``,
``ctbmd calibrate-scanner PHANTOM_SCAN --rods SPEC --out profile.json``,
``ctbmd evaluate --pred PRED --ref REF.csv --out DIR`` and ``ctbmd train --manifest M.csv --out MODEL_DIR``.

``ctbmd batch INPUTS... --out DIR`` and ``ctbmd pacs --url URL --series UID --out DIR [--push]``.

Exit codes: 0 success, 2 bad usage, 3 unreadable or invalid input, 4 no spine
or no identifiable level, 5 internal error, 6 batch with failures, 7-9 PACS
errors (see :mod:`ctbmd.errors`).

One module per group of commands, registered on :data:`ctbmd.cli.app.app` as they are imported, in the order
``ctbmd --help`` lists them: :mod:`~ctbmd.cli.scan` (run, pacs), :mod:`~ctbmd.cli.cohort` (batch,
calibrate-scanner), :mod:`~ctbmd.cli.phantom` (simulate), :mod:`~ctbmd.cli.models` (evaluate, train).
"""

from __future__ import annotations

import sys

import typer

from ctbmd import __version__
from ctbmd.cli import scan, cohort, phantom, models  # noqa: F401, I001 - registers the commands, in this order
from ctbmd.cli.app import (CLI_FLAGS, Arch, BatchSegmenter, Command, Device, Dims, Fov, LabelMap,  # noqa: F401
                           PhantomKvp, Phase, Protocol, RibPairs, Sacrum, Segmenter, Task, TissueModel, Transition,
                           app)


@app.command(cls=Command)
def version() -> None:
    """Print the ctbmd version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
