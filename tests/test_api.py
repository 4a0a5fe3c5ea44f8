"""The Python API (issue 14): `ctbmd.analyse` and `ctbmd.run` give what `ctbmd run` gives, and the core
pipeline does not import the model package, torch or MONAI."""

import json
import subprocess
import sys

import numpy as np
import pytest

import ctbmd
from conftest import EXAMPLE


def test_analyse_returns_the_levels_and_bmd_of_ctbmd_run(example_builtin):
    cli = json.loads((example_builtin / "result.json").read_text())
    res = ctbmd.analyse(EXAMPLE / "ct.nii.gz")
    assert isinstance(res, ctbmd.Result)
    assert [m.level for m in res.levels] == [lv["level"] for lv in cli["levels"]] == [
        "T12", "L1", "L2", "L3", "L4", "L5"]
    got = res.to_dict()
    assert [lv["bmd_mg_cm3"] for lv in got["levels"]] == [lv["bmd_mg_cm3"] for lv in cli["levels"]]
    assert [lv["trabecular_hu_mean"] for lv in got["levels"]] == [lv["trabecular_hu_mean"] for lv in cli["levels"]]
    assert got["patient"] == cli["patient"]
    assert got["calibration"]["slope"] == cli["calibration"]["slope"]
    # typed access agrees with the dict, before rounding
    bmd = res.bmd_mg_cm3()
    for lv in cli["levels"]:
        assert bmd[lv["level"]] == pytest.approx(lv["bmd_mg_cm3"], abs=0.05)
    assert res.patient.category == cli["patient"]["category"] == "osteopenia"
    assert res.roi_labels.shape == res.ct.hu.shape and res.roi_labels.dtype == np.uint8
    assert isinstance(res.warnings, tuple) and res.dl is None


def test_analyse_accepts_a_ct_already_read_and_a_level_string():
    from ctbmd.io import read_ct

    ct = read_ct(EXAMPLE / "ct.nii.gz")
    a = ctbmd.analyse(ct, levels="L1-L2").to_dict()
    assert [lv["level"] for lv in a["levels"]] == ["L1", "L2"]
    b = ctbmd.analyse(EXAMPLE / "ct.nii.gz", levels=("L1", "L2")).to_dict()
    assert a["levels"] == b["levels"] and a["warnings"] == b["warnings"]


def test_run_writes_the_files_and_returns_the_result(tmp_path):
    out = tmp_path / "example"
    res = ctbmd.run(EXAMPLE / "ct.nii.gz", out, levels="L1-L4")
    written = json.loads((out / "result.json").read_text())
    assert written == json.loads(json.dumps(res.to_dict()))
    assert sorted(p.name for p in out.iterdir()) == ["levels.csv", "report.html", "report.png", "result.json",
                                                     "roi.nii.gz", "vertebrae.nii.gz"]  # NIfTI input: no DICOM
    # no staging folder left; the lock file beside the output folder stays (removing it would race)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [f".{out.name}.ctbmd-lock"]


def test_api_errors_are_ctbmd_errors_with_exit_codes(tmp_path):
    from ctbmd.errors import InvalidInputError, UsageError

    with pytest.raises(InvalidInputError, match="no such file"):
        ctbmd.analyse(tmp_path / "missing.nii.gz")
    with pytest.raises(UsageError, match="not a level"):
        ctbmd.analyse(EXAMPLE / "ct.nii.gz", levels="L1-X9")
    with pytest.raises(UsageError, match="outside 70-150"):
        ctbmd.analyse(EXAMPLE / "ct.nii.gz", kvp=300)


def test_the_core_pipeline_imports_neither_torch_nor_monai_nor_the_model_package():
    code = ("import sys, ctbmd, ctbmd.pipeline, ctbmd.api, ctbmd.report, ctbmd.batch; "
            "print(sorted(m for m in ('torch', 'monai', 'ctbmd.model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # and `import ctbmd` alone stays light: the API is imported on first use
    code = "import sys, ctbmd; print('ctbmd.pipeline' in sys.modules, ctbmd.analyse.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "ctbmd.api"]


def test_version_flag_and_command_print_the_version():
    """Issue 17: `ctbmd --version` (and `ctbmd version`) print the package version and exit 0."""
    from conftest import run_cli

    from ctbmd import __version__

    for args in (["--version"], ["version"]):
        rc, so, se = run_cli(*args)
        assert rc == 0 and so.strip() == __version__, (args, so, se)
