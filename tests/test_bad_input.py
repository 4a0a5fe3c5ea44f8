"""Acceptance 5 of issue 2: bad input gives one clear line, the right exit code, no output."""

import shutil

import numpy as np
import pytest
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


def _raw(ds, tag, vr, text):
    """Write ``text`` into ``ds`` as the raw value of ``tag``, past pydicom's own value checks (as a broken
    scanner or anonymiser writes it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    v = text.encode()
    v += b" " * (len(v) % 2)
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(v), v, 0, False, True)


def _mutated_series(tmp_path, change, one_slice, source=DATA / "ts_example_dicom" / "dicom"):
    """A copy of a DICOM series (by default the bundled 20 slices with an empty SeriesInstanceUID) with
    ``change(ds)`` applied to its middle slice or to every slice; returns (folder, changed file)."""
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "LICENSE")
    for f in files[len(files) // 2: len(files) // 2 + 1] if one_slice else files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)
    return folder, files[len(files) // 2]


#: Issue 17's broken headers: 7 that ended in an internal error (exit 5) and 4 that gave a wrong answer with
#: exit 0 (a default pixel size of 1 mm, a 50 mm slice step, a slope of 1e9 read as metal).
BROKEN_HEADERS = [
    ("orientation not numeric", lambda ds: _raw(ds, 0x00200037, "DS", "1\\0\\0\\0\\x\\0"), True,
     "ImageOrientationPatient '1\\0\\0\\0\\x\\0' is not 6 finite numbers"),
    ("position with 2 values", lambda ds: _raw(ds, 0x00200032, "DS", "1\\2"), True,
     "ImagePositionPatient '1\\2' is not 3 finite numbers"),
    ("Columns missing", lambda ds: ds.__delitem__(0x00280011), False, "Columns missing is not a number of pixels"),
    ("RescaleIntercept empty", lambda ds: _raw(ds, 0x00281052, "DS", ""), False, "RescaleIntercept empty is not"),
    ("RGB", lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"), False,
     "PhotometricInterpretation 'RGB' is not MONOCHROME1 or MONOCHROME2"),
    ("PixelSpacing inf", lambda ds: _raw(ds, 0x00280030, "DS", "inf\\inf"), False, "PixelSpacing 'inf\\inf' is not"),
    ("PixelSpacing missing", lambda ds: ds.__delitem__(0x00280030), False, "PixelSpacing missing is not"),
    ("PixelSpacing empty", lambda ds: _raw(ds, 0x00280030, "DS", ""), False, "PixelSpacing empty is not"),
    ("position inf", lambda ds: _raw(ds, 0x00200032, "DS", "inf\\inf\\inf"), True,
     "ImagePositionPatient 'inf\\inf\\inf' is not 3 finite numbers"),
    ("slope 1e9 in one slice", lambda ds: _raw(ds, 0x00281053, "DS", "1e9"), True, "RescaleSlope '1e9' is not"),
]


@pytest.mark.parametrize("name, change, one_slice, message", BROKEN_HEADERS, ids=[b[0] for b in BROKEN_HEADERS])
def test_a_broken_dicom_header_is_named_never_defaulted(tmp_path, name, change, one_slice, message):
    from ctbmd.errors import InvalidInputError
    from ctbmd.io import read_ct

    folder, changed = _mutated_series(tmp_path, change, one_slice)
    with pytest.raises(InvalidInputError) as err:
        read_ct(folder)
    line = err.value.one_line()
    assert message in line, line
    if one_slice:
        assert changed.name in line, line  # the broken slice is the one named


def test_missing_pixel_spacing_stops_ctbmd_run_with_one_line(tmp_path):
    folder, _ = _mutated_series(tmp_path, lambda ds: ds.__delitem__(0x00280030), one_slice=False)
    out = tmp_path / "out"
    rc, _, se = run_cli("run", folder, "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "PixelSpacing missing", "no default")


@pytest.mark.parametrize("kvp", ["nan", "1e9", "50"])
def test_an_impossible_kvp_is_not_used_and_said(tmp_path, kvp):
    """KVP nan or 1e9 ended in an internal error after the whole run, and 50 kV (outside the energy table's
    70-150 kV) was silently read as 70 kV; now the kVp counts as unknown, as for a NIfTI, and a warning says
    why."""
    from ctbmd.api import analyse

    folder, _ = _mutated_series(tmp_path, lambda ds: _raw(ds, 0x00180060, "DS", kvp), one_slice=False,
                                source=DATA / "lidc_idri_0001_chest" / "dicom")
    res = analyse(folder)
    assert res.ct.info.kvp is None
    assert any(f"KVP '{kvp}'" in w and "not a tube voltage" in w for w in res.warnings), res.warnings
    assert res.calibration.kvp_source != "header"


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_an_unwritable_out_fails_before_the_analysis(tmp_path, case):
    """Issue 17: --out that cannot be written gave exit 5 after the whole analysis; now exit 2 at once."""
    import os
    import time

    if case == "a file":
        out = tmp_path / "taken"
        out.write_text("x")
    elif case == "under a file":
        (tmp_path / "taken").write_text("x")
        out = tmp_path / "taken" / "out"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "out"
    t = time.time()
    rc, _, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", out)
    assert rc == EXIT_USAGE and "Traceback" not in se and len(se.strip().splitlines()) == 1, se
    assert time.time() - t < 5.0  # no analysis ran (it takes about 10 s)
    assert ("is a file" if case == "a file" else "which is a file" if case == "under a file" else "no permission") in se


def test_check_output_dir_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    """The read-only case without root: os.access says no."""
    import os

    from ctbmd.errors import UsageError
    from ctbmd.io import check_output_dir

    assert check_output_dir(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="no permission"):
        check_output_dir(tmp_path / "out")


def test_written_files_follow_the_umask(tmp_path):
    """Issue 17: files were 0600 whatever the umask (mkstemp); under umask 022 they are 0644."""
    import os

    from ctbmd import io as ctio

    path = ctio.write_atomic(tmp_path / "a.txt", lambda p: p.write_text("x"))
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~ctio._UMASK)


def _flipped_header(src, dst, axis):
    """Write ``src`` with the header flipped along voxel ``axis`` (the data kept): the patient reads upside
    down (axis along S) or mirrored (along L); the volume covers the same space."""
    import nibabel as nib

    im = nib.load(str(src))
    a = im.affine.copy()
    a[:3, 3] += a[:3, axis] * (im.shape[axis] - 1)
    a[:3, axis] *= -1
    out = nib.Nifti1Image(np.asanyarray(im.dataobj), a, im.header)
    out.set_qform(a, 1)
    out.set_sform(a, 1)
    nib.save(out, str(dst))
    return dst


def test_a_header_flipped_head_to_foot_is_refused_with_the_reason(tmp_path):
    """Issue 17: a NIfTI flipped superior/inferior in its header gave levels in reverse order and
    "osteoporosis"; now the lungs at the inferior edge under an abdomen say why, exit 3, before naming."""
    out = tmp_path / "out"
    rc, _, se = run_cli("run", _flipped_header(EXAMPLE / "ct.nii.gz", tmp_path / "si.nii.gz", 2), "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "superior/inferior axis looks flipped",
                         "lungs reach the inferior edge")


def test_the_chest_ct_flipped_head_to_foot_is_refused_and_upright_passes():
    """LIDC-IDRI-0001 (C6 to L3, lungs from apex to base): upright it passes; upside down (its 55 mm of upper
    abdomen now above the lung apices) it is refused. The example (lung bases at the top) passes upright, and
    so does a scan of the neck and chest cut at the lung bases."""
    from dataclasses import replace

    from ctbmd.errors import InvalidInputError
    from ctbmd.io import read_ct
    from ctbmd.segment.orientation import check_superior_inferior, lung_mask

    ct = read_ct(DATA / "lidc_idri_0001_chest" / "dicom")
    check_superior_inferior(ct)
    with pytest.raises(InvalidInputError, match="superior/inferior axis looks flipped"):
        check_superior_inferior(replace(ct, hu=np.ascontiguousarray(ct.hu[:, :, ::-1])))
    check_superior_inferior(read_ct(EXAMPLE / "ct.nii.gz"))
    # a neck-and-chest scan that ends at the lung bases: lungs at the inferior edge, and 60 mm of shoulders
    # (its top slice repeated, 0.82 of the chest's cross-section) above them; the trachea says neck
    lungs, _ = lung_mask(ct.hu, ct.spacing_mm)
    bases = int(np.flatnonzero(lungs.any(axis=(0, 1)))[0])
    upper = ct.hu[:, :, bases:]
    neck = np.concatenate([upper, np.repeat(upper[:, :, -1:], 24, axis=2)], axis=2)
    check_superior_inferior(replace(ct, hu=np.ascontiguousarray(neck)))


def test_a_header_flipped_left_right_changes_no_level_and_no_bmd(tmp_path):
    """Issue 17: a left/right flip in the header named L4 "T11". The method is mirror-symmetric: the levels,
    HU and BMD must be those of the upright file."""
    from ctbmd.api import analyse

    upright = analyse(EXAMPLE / "ct.nii.gz")
    mirrored = analyse(_flipped_header(EXAMPLE / "ct.nii.gz", tmp_path / "lr.nii.gz", 0))
    assert [m.level for m in mirrored.levels] == [m.level for m in upright.levels] == \
        ["T12", "L1", "L2", "L3", "L4", "L5"]
    for a, b in zip(upright.levels, mirrored.levels):
        assert abs(a.hu_median - b.hu_median) <= 1.0, (a.level, a.hu_median, b.hu_median)
    assert mirrored.patient.category == upright.patient.category


def test_qform_and_sform_that_disagree_are_refused(tmp_path):
    """Readers pick different transforms (ITK and nibabel the sform, others the qform): a header whose two
    disagree on the left/right axis has no one orientation."""
    import nibabel as nib

    im = nib.load(str(EXAMPLE / "ct.nii.gz"))
    mirrored = im.affine.copy()
    mirrored[:3, 0] *= -1
    bad = nib.Nifti1Image(np.asanyarray(im.dataobj), im.affine, im.header)
    bad.set_sform(im.affine, 1)
    bad.set_qform(mirrored, 1)
    nib.save(bad, str(tmp_path / "qs.nii.gz"))
    out = tmp_path / "out"
    rc, _, se = run_cli("run", tmp_path / "qs.nii.gz", "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, "qform (LAS) and sform (RAS)")


def test_nan_in_the_air_outside_the_body_is_refused(tmp_path):
    """Issue 17: NaN in the air outside the body shifted the levels by one without a word. The read counts
    the NaN voxels and refuses the file (exit 3)."""
    import nibabel as nib

    im = nib.load(str(EXAMPLE / "ct.nii.gz"))
    hu = np.asanyarray(im.dataobj).astype(np.float32)
    hu[:10, :10, :] = np.nan  # a corner of air, far from the patient
    nib.save(nib.Nifti1Image(hu, im.affine), str(tmp_path / "nan.nii.gz"))
    out = tmp_path / "out"
    rc, _, se = run_cli("run", tmp_path / "nan.nii.gz", "--out", out)
    assert_clean_failure(rc, se, out, EXIT_INVALID_INPUT, f"{10 * 10 * hu.shape[2]} of {hu.size} voxels are NaN")


def test_lung_like_gas_on_one_side_at_the_inferior_edge_is_no_verdict():
    """Colon gas mixed with stool can read like lung (about -800 HU), posterior and beside the spine, at the
    inferior edge of an abdominal scan. On one side only it is not taken for the lung bases of a flipped
    scan; painted on both sides it is (the check's rule, stated here as plain data)."""
    from dataclasses import replace

    from ctbmd.errors import InvalidInputError
    from ctbmd.io import read_ct
    from ctbmd.segment.orientation import check_superior_inferior

    ct = read_ct(EXAMPLE / "ct.nii.gz")
    pelvis = np.ascontiguousarray(ct.hu[:, :, :40])  # the lower 120 mm: no lung
    grid = ct.grid
    ys = np.nonzero((pelvis > -400).any(axis=(0, 2)))[0]
    xs = np.nonzero((pelvis > -400).any(axis=(1, 2)))[0]
    cx, y = (xs[0] + xs[-1]) // 2, ys[0] + int(0.7 * (ys[-1] - ys[0]))  # posterior part of the trunk
    gas = pelvis.copy()
    gas[cx + 12: cx + 24, y - 6: y + 6, :8] = -800.0  # 36-72 mm to the patient's left, 24 mm high: 31 ml
    check_superior_inferior(replace(ct, hu=gas, grid=grid))
    both = gas.copy()
    both[cx - 24: cx - 12, y - 6: y + 6, :8] = -800.0
    with pytest.raises(InvalidInputError, match="superior/inferior axis looks flipped"):
        check_superior_inferior(replace(ct, hu=both, grid=grid))


def test_a_mount_point_as_out_is_refused_before_the_analysis(tmp_path, monkeypatch):
    """A Docker or Kubernetes volume mounted at --out cannot be renamed (EBUSY): it ended in exit 5 after the
    analysis. ``os.path.ismount`` stands in for a real mount here."""
    import os

    from ctbmd.errors import UsageError
    from ctbmd.io import check_output_dir

    out = tmp_path / "volume"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real(p))
    with pytest.raises(UsageError, match="is a mount point"):
        check_output_dir(out)
    assert check_output_dir(out / "inside") == out / "inside"
