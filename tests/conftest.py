"""Shared fixtures: paths to the real CTs in ../shared/data and a CLI runner."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = DATA / "ts_example_ct"
DICOM = DATA / "ts_example_dicom"


def need_tool(name: str) -> str:
    """The path of an external program (dciodvfy, chromium, Orthanc).

    Skipped where it is missing locally; a failure in CI, since ``.ci/run`` installs them with apt-get.
    """
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed, but .ci/run installs it")
        pytest.skip(f"{name} not installed (.ci/run installs it: apt-get install dicom3tools chromium orthanc)")
    return path


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


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory):
    """Three native phantoms through the CLI, one of them as DICOM.

    Returns the root folder: ``ROOT/<name>/`` holds each phantom (ct, truth.json,
    reference.csv), ``ROOT/results/<name>/`` its ``ctbmd run`` output.
    """
    cases = [
        ("a", ["--bmd", "L1=95,L2=100", "--kvp", "100", "--noise", "15", "--seed", "3", "--marrow-fat", "0.3"]),
        ("b", ["--bmd", "L1=60,L2=55", "--kvp", "80", "--noise", "10", "--seed", "11", "--marrow-fat", "0.6",
               "--body-width", "420"]),
        ("c", ["--bmd", "L1=200,L2=190", "--kvp", "140", "--noise", "25", "--seed", "21", "--dicom"]),
    ]
    root = tmp_path_factory.mktemp("cohort")
    for name, args in cases:
        d = root / name
        rc, so, se = run_cli("simulate", "--out", d, "--pixel", "1.5", "--slice", "3", "--tissue-spread", "0",
                             *args)
        assert rc == 0, se
        # NIfTI carries no kVp: give it, as a user who knows the protocol would; DICOM has it in the header
        kvp = [] if "--dicom" in args else ["--kvp", args[args.index("--kvp") + 1]]
        src = d / "ct" if "--dicom" in args else d / "ct.nii.gz"
        rc, so, se = run_cli("run", src, "--out", root / "results" / name, "--quiet", *kvp)
        assert rc == 0, se
    return root
