"""Acceptance 5 of issue 2: bad input gives one clear line, the right exit code, no output."""

import shutil

import numpy as np
import pydicom
import SimpleITK as sitk

from conftest import DATA, EXAMPLE, run_cli
from ctbmd.errors import EXIT_INVALID_INPUT, EXIT_NO_SPINE, EXIT_USAGE


def assert_clean_failure(rc, stderr, out, code, *words):
    assert rc == code, stderr
    assert "Traceback" not in stderr
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_three_slice_dicom(tmp_path):
    out = tmp_path / "out"
    rc, _, se = run_cli("run", DATA / "dcmqi_ct3slice" / "dicom", "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "dcmqi_ct3slice", "too few slices")


def test_truncated_nifti(tmp_path):
    bad = tmp_path / "cut.nii.gz"
    data = (EXAMPLE / "ct.nii.gz").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    rc, _, se = run_cli("run", bad, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "cut.nii.gz")


def test_missing_path(tmp_path):
    out = tmp_path / "out"
    rc, _, se = run_cli("run", tmp_path / "nope.nii.gz", "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "nope.nii.gz", "no such file")


def test_volume_of_zeros(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((40, 64, 64), np.int16))
    img.SetSpacing((1.0, 1.0, 2.0))
    path = tmp_path / "zeros.nii.gz"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "out"
    rc, _, se = run_cli("run", path, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "zeros.nii.gz", "constant image")


def test_non_ct_dicom(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    for f in sorted((DATA / "dcmqi_ct3slice" / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(folder / f.name)
    out = tmp_path / "out"
    rc, _, se = run_cli("run", folder, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "not a CT", "MR")


def test_no_spine_in_view(tmp_path):
    """A water cylinder in air is valid CT but holds no spine: exit 4."""
    z, y, x = np.mgrid[:30, :100, :100]
    arr = np.where((x - 50) ** 2 + (y - 50) ** 2 < 40 ** 2, 0, -1000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_path / "water.nii.gz"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "out"
    rc, _, se = run_cli("run", path, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_NO_SPINE, "water.nii.gz")


def test_labels_segmenter_without_labels_is_usage_error(tmp_path):
    out = tmp_path / "out"
    rc, _, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", out, "--segmenter", "labels")
    assert_clean_failure(rc, se, out, EXIT_USAGE, "--labels")


def test_gap_in_dicom_series(tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(DATA / "ts_example_dicom" / "dicom", folder)
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for f in files[8:11]:
        f.unlink()
    out = tmp_path / "out"
    rc, _, se = run_cli("run", folder, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "gap")


def test_totalsegmentator_backend_unavailable_is_clear(tmp_path, monkeypatch):
    """Without the package or its weights, the backend names what is missing (exit 2)."""
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "no-weights"))
    out = tmp_path / "out"
    rc, _, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", out, "--segmenter", "totalsegmentator")
    assert_clean_failure(rc, se, out, EXIT_USAGE)
    assert "ctbmd[totalseg]" in se or "TOTALSEG_WEIGHTS_PATH" in se
