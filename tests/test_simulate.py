"""Known-truth phantoms: the truth matches the request, and ctbmd measures it.

Thresholds here are set to fail when calibration or ROI placement regresses:
the former two-point air/fat calibration read these phantoms ~15-20% high, and
an ROI that took in the spinal canal read 5-6 HU low.
"""

import json

import numpy as np
import pytest

from conftest import EXAMPLE, run_cli
from ctbmd.errors import UsageError
from ctbmd.materials import k2hpo4_hu_per_mg
from ctbmd.simulate import PhantomSpec, parse_bmd, shift_trabecular_hu, simulate_phantom
from ctbmd.types import VERSE_LABELS

FAST = dict(pixel_mm=1.5, slice_thickness_mm=3.0)


def test_truth_matches_the_request():
    spec = PhantomSpec(bmd_mg_cm3={"L1": 95, "L2": 100}, kvp=100, noise_hu=15, seed=3, **FAST)
    ph = simulate_phantom(spec)
    t = {lv["level"]: lv for lv in ph.truth["levels"]}
    assert [lv["level"] for lv in ph.truth["levels"]] == ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    assert t["L1"]["bmd_mg_cm3"] == 95 and t["L2"]["bmd_mg_cm3"] == 100
    # unset levels follow the mean of the set ones within +-5%
    assert all(0.95 * 97.5 - 1e-6 <= t[lv]["bmd_mg_cm3"] <= 1.05 * 97.5 + 1e-6 for lv in ("T12", "L3", "L5"))
    assert ph.truth["settings"]["kvp"] == 100 and ph.truth["settings"]["noise_hu"] == 15
    # labels: every level present in VerSe numbering, plus the sacrum, ordered top to bottom
    present = set(np.unique(ph.labels)) - {0}
    assert {VERSE_LABELS[lv] for lv in t} | {26} == present
    zs = [t[lv]["label_centroid_lps_mm"][2] for lv in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")]
    assert all(a > b for a, b in zip(zs, zs[1:]))
    # the added noise has the requested SD (air outside the body, unclipped part)
    air = ph.hu[:8, :8, :].astype(float)
    assert abs(air.std() - 15) < 1.0
    # same spec, same phantom
    again = simulate_phantom(spec)
    assert np.array_equal(again.hu, ph.hu) and again.truth == ph.truth


def test_noise_free_trabecular_hu_and_qct_equivalent():
    spec = PhantomSpec(bmd_mg_cm3={"L1": 150}, noise_hu=0, marrow_fat_fraction=0.0, beam_hardening=False,
                       psf_fwhm_mm=0.0, seed=5, **FAST)
    ph = simulate_phantom(spec)
    lv = next(v for v in ph.truth["levels"] if v["level"] == "L1")
    # with fat-free marrow the QCT-equivalent equals the K2HPO4 set
    assert lv["qct_equivalent_mg_cm3"] == pytest.approx(150.0, abs=0.5)
    energy = ph.truth["scan"]["effective_energy_kev"]
    assert lv["trabecular_hu"] == pytest.approx(150.0 * float(k2hpo4_hu_per_mg(energy)), abs=1.0)
    # the voxels at the body centre read that HU (no noise, no blur, no cupping)
    idx = np.round(np.linalg.solve(ph.grid.affine_lps[:3, :3],
                                   np.subtract(lv["body_centre_lps_mm"], ph.grid.affine_lps[:3, 3]))).astype(int)
    patch = ph.hu[idx[0] - 3:idx[0] + 4, idx[1] - 3:idx[1] + 4, idx[2] - 1:idx[2] + 2]
    assert abs(float(np.median(patch)) - lv["trabecular_hu"]) <= 1.0
    # marrow fat lowers the QCT-equivalent value (single-energy QCT's known error)
    fatty = simulate_phantom(PhantomSpec(**{**spec.__dict__, "marrow_fat_fraction": 0.5}))
    lv_f = next(v for v in fatty.truth["levels"] if v["level"] == "L1")
    assert lv_f["bmd_mg_cm3"] == 150 and lv_f["qct_equivalent_mg_cm3"] < 150 - 20


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError):
        parse_bmd("L1=95,X=3")
    with pytest.raises(UsageError):
        simulate_phantom(PhantomSpec(kvp=90))
    with pytest.raises(UsageError):
        simulate_phantom(PhantomSpec(bmd_mg_cm3={"C3": 100}))
    rc, _, err = run_cli("simulate", "--out", "unused", "--bmd", "L1=abc")
    assert rc == 2 and "L1=abc" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def small_cohort(phantom_cohort):
    """(truth, result) pairs of the three phantoms of ``phantom_cohort``."""
    root = phantom_cohort
    return [(json.loads((root / name / "truth.json").read_text()),
             json.loads((root / "results" / name / "result.json").read_text())) for name in ("a", "b", "c")]


def test_cohort_levels_are_found_and_named(small_cohort):
    for truth, result in small_cohort:
        t = {lv["level"]: lv for lv in truth["levels"]}
        found = {lv["level"]: lv for lv in result["levels"]}
        assert {"T12", "L1", "L2", "L3", "L4", "L5"} <= set(found)
        for name, lv in found.items():
            err = np.linalg.norm(np.subtract(lv["centroid_lps_mm"], t[name]["label_centroid_lps_mm"]))
            assert err <= 10.0, (name, err)


def test_cohort_hu_and_bmd_match_the_truth(small_cohort):
    errors = []
    for truth, result in small_cohort:
        t = {lv["level"]: lv for lv in truth["levels"]}
        for lv in result["levels"]:
            if lv["level"] in ("L1", "L2", "L3", "L4") and not lv["flags"]:
                # ROI placement: near the noise-free truth less the central cupping deficit
                hu = t[lv["level"]]["trabecular_hu"]
                expected = hu - truth["scan"]["cupping_fraction"] * (1000.0 + hu)
                tol = 4.0 + 0.25 * truth["settings"]["noise_hu"]  # 3 mm slices: endplate partial volume
                assert abs(lv["trabecular_hu_median"] - expected) <= tol, (lv["level"], lv["trabecular_hu_median"],
                                                                             expected)
        p = result["patient"]
        ref = np.mean([t[u]["qct_equivalent_mg_cm3"] for u in p["levels_used"]])
        errors.append(p["bmd_mg_cm3"] - ref)
        assert abs(p["bmd_mg_cm3"] - ref) <= 8.0, (p, ref)
    assert np.mean(np.abs(errors)) <= 5.0, errors


def test_real_anatomy_hu_shift_is_recovered(tmp_path):
    """Shift L1-L4 trabecular HU of the real example by +40 and -40 HU; ctbmd sees the change within 2 HU."""
    from ctbmd.io import array_to_image, read_ct, read_label_map, write_image_atomic
    from ctbmd.segment.labelmaps import to_verse

    ct, _ = read_ct(EXAMPLE / "ct.nii.gz")
    body = read_label_map(EXAMPLE / "vertebral_body_and_discs.nii.gz", ct) == 1
    levels = to_verse(read_label_map(EXAMPLE / "vertebrae_total.nii.gz", ct), "total")
    bodies = body & np.isin(levels, [VERSE_LABELS[lv] for lv in ("L1", "L2", "L3", "L4")])
    medians = {}
    for delta in (0.0, 40.0, -40.0):
        path = tmp_path / f"s{delta:+.0f}.nii.gz"
        write_image_atomic(array_to_image(shift_trabecular_hu(ct.hu, bodies, ct.spacing_mm, delta), ct.grid), path)
        rc, _, se = run_cli("run", path, "--out", tmp_path / f"o{delta:+.0f}", "--labels",
                            EXAMPLE / "vertebrae_total.nii.gz", "--quiet")
        assert rc == 0, se
        res = json.loads((tmp_path / f"o{delta:+.0f}" / "result.json").read_text())
        medians[delta] = {lv["level"]: lv["trabecular_hu_median"] for lv in res["levels"]}
    for delta in (40.0, -40.0):
        for name in ("L1", "L2", "L3", "L4"):
            assert abs(medians[delta][name] - medians[0.0][name] - delta) <= 2.0, (delta, name)
    # the rest of the scan is untouched
    assert medians[40.0]["T12"] == medians[0.0]["T12"]
