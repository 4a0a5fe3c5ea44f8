"""Acceptance 2-4 of issue 2 on the real TotalSegmentator example CTs."""

import json

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from conftest import DICOM, EXAMPLE, run_cli
from ctbmd.io import read_ct, read_label_map

TOTAL = {"T11": 33, "T12": 32, "L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27}
FILES = ("result.json", "levels.csv", "vertebrae.nii.gz", "roi.nii.gz", "report.png")


@pytest.fixture(scope="module")
def reference_centroids():
    ct = read_ct(EXAMPLE / "ct.nii.gz")
    ref = read_label_map(EXAMPLE / "vertebrae_total.nii.gz", ct)
    return {n: ct.index_to_lps(np.array(ndi.center_of_mass(ref == v))) for n, v in TOTAL.items() if (ref == v).any()}


def spine_report_medians():
    rep = json.loads((EXAMPLE / "spine_report.json").read_text())["results"]
    return {f"L{i}": rep[f"vertebrae_L{i}_intensity_median"] for i in range(1, 6)}


def test_builtin_writes_all_files_and_labels_l1_to_l5(example_builtin, reference_centroids):
    for name in FILES:
        assert (example_builtin / name).stat().st_size > 0, name
    result = json.loads((example_builtin / "result.json").read_text())
    names = [lv["level"] for lv in result["levels"]]
    assert {"L1", "L2", "L3", "L4", "L5"} <= set(names)
    for lv in result["levels"]:
        c = np.array(lv["centroid_lps_mm"])
        dist = {n: np.linalg.norm(c - r) for n, r in reference_centroids.items()}
        assert dist[lv["level"]] <= 10.0, (lv["level"], dist)
        assert min(dist, key=dist.get) == lv["level"], "level carries a wrong name"


def test_builtin_trabecular_hu_within_15(example_builtin):
    """Issue 11, acceptance 2: L1-L5 within 15 HU of the TotalSegmentator spine report, L5 included
    (the L5 body no longer takes in sacrum or ilium)."""
    result = json.loads((example_builtin / "result.json").read_text())
    ref = spine_report_medians()
    got = {lv["level"]: lv["trabecular_hu_median"] for lv in result["levels"]}
    for level in ("L1", "L2", "L3", "L4", "L5"):
        assert abs(got[level] - ref[level]) <= 15.0, (level, got[level], ref[level])


def test_result_schema_and_patient(example_builtin):
    result = json.loads((example_builtin / "result.json").read_text())
    for key in ("schema_version", "ctbmd_version", "input", "calibration", "levels", "patient", "warnings"):
        assert key in result
    assert result["calibration"]["ok"] is True
    p = result["patient"]
    # L1 is a Genant wedge (anterior 22.7 against posterior 31.2 mm; TotalSegmentator's spine report: 21 against
    # 27 mm), so it is left out and the patient value comes from the next two levels
    assert p["levels_used"] == ["L2", "L3"]
    assert p["category"] in {"normal", "osteopenia", "osteoporosis"}
    assert 40 < p["bmd_mg_cm3"] < 200


def test_vertebrae_map_on_input_grid_in_verse_numbering(example_builtin):
    import nibabel as nib

    lab = nib.load(example_builtin / "vertebrae.nii.gz")
    ct = nib.load(EXAMPLE / "ct.nii.gz")
    assert lab.shape == ct.shape
    assert np.allclose(lab.affine, ct.affine, atol=1e-3)
    values = set(np.unique(np.asanyarray(lab.dataobj)).tolist())
    assert {20, 21, 22, 23, 24} <= values  # L1..L5


def test_labels_backend_hu_within_10(tmp_path):
    rc, so, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", tmp_path, "--quiet", "--segmenter", "labels",
                         "--labels", EXAMPLE / "vertebrae_total.nii.gz")
    assert rc == 0, se
    result = json.loads((tmp_path / "result.json").read_text())
    got = {lv["level"]: lv["trabecular_hu_median"] for lv in result["levels"]}
    ref = spine_report_medians()
    for level in ("L1", "L2", "L3", "L4"):
        assert abs(got[level] - ref[level]) <= 10.0, (level, got[level], ref[level])


def test_dicom_with_labels_measures_t12(tmp_path):
    rc, so, se = run_cli("run", DICOM / "dicom", "--out", tmp_path, "--quiet", "--segmenter", "labels",
                         "--labels", DICOM / "segmentation_total.nii.gz")
    assert rc == 0, se
    result = json.loads((tmp_path / "result.json").read_text())
    t12 = next(lv for lv in result["levels"] if lv["level"] == "T12")
    assert t12["roi_voxels"] > 100 and t12["trabecular_hu_median"] is not None
    assert result["input"]["format"] == "dicom"
    # this series' StudyInstanceUID and SeriesInstanceUID are empty (a type 1 violation left by its
    # anonymiser), so no DICOM object could reference it: none is written, a warning says why, the rest stands
    head = pydicom.dcmread(next((DICOM / "dicom").iterdir()), stop_before_pixels=True)
    assert head.StudyInstanceUID == "" and head.SeriesInstanceUID == ""
    assert result["warnings"][-1] == ("DICOM SEG/SR/SC not written (ValueError: the source slices have no "
                                      "StudyInstanceUID, SeriesInstanceUID (required, type 1), so nothing could "
                                      "reference them)")
    assert "DICOM SEG/SR/SC not written" in (tmp_path / "report.html").read_text()
    assert not any((tmp_path / n).exists() for n in ("vertebrae_seg.dcm", "bmd_sr.dcm", "report_sc.dcm"))
