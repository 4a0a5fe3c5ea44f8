"""Shared fixtures: paths to the real CTs in ../shared/data and a CLI runner."""

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = DATA / "ts_example_ct"
DICOM = DATA / "ts_example_dicom"


def run_cli(*args, cwd=None):
    """Run ``ctbmd`` in a subprocess; return (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-c", "from ctbmd.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def example_builtin(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    rc, so, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", out, "--quiet")
    assert rc == 0, se
    return out
