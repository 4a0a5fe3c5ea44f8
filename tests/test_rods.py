"""Rod-phantom calibration (synchronous and asynchronous) in the Mindways QCT Pro convention.

Checked against known truth: exact synthetic rod HU, the documented QCT Pro
conversion (QCT PRO User Guide v5.0), and a simulated phantom with a rod block
under the patient whose rods lie on ``qct_pro_line(E)`` by construction.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from ctbmd.calibrate.rods import (DEFAULT_ROD_SPEC, Rod, RodMeasurement, RodReading, RodSpec, find_rods, fit_rods,
                                  load_profile, make_profile, monoenergetic_equivalent_kev, parse_rod_spec,
                                  profile_calibration, rod_calibration, save_profile)
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.materials import qct_pro_from_reference, qct_pro_line
from ctbmd.simulate import PhantomSpec, simulate_phantom
from ctbmd.simulate.rods import add_rod_phantom, rod_hu
from ctbmd.types import CTVolume, ScanInfo

FAST = dict(pixel_mm=1.5, slice_thickness_mm=3.0)
from conftest import EXAMPLE  # noqa: E402 - ../shared/data beside the repository

EXAMPLE_CT = EXAMPLE / "ct.nii.gz"


def _ct(phantom, path="phantom.nii.gz", **info) -> CTVolume:
    return CTVolume(hu=phantom.hu.astype(np.float32), grid=phantom.grid,
                    info=ScanInfo(path=path, format="nifti", input_grid=phantom.grid, **info))


def _measurement(spec: RodSpec, hu) -> RodMeasurement:
    readings = tuple(RodReading(rod=r, centre_lps_mm=(40.0 * i, 150.0), hu_mean=float(h), hu_sd=10.0, n_voxels=500,
                                visible=True) for i, (r, h) in enumerate(zip(spec.rods, hu)))
    return RodMeasurement(readings=readings, z_range_mm=(0.0, 100.0), n_slices=30, located="given")


@pytest.fixture(scope="module")
def phantoms():
    """A small abdomen phantom (120 kVp, 10 HU noise) without and with the default 5-rod block."""
    ph = simulate_phantom(PhantomSpec(seed=11, noise_hu=10.0, **FAST))
    return ph, add_rod_phantom(ph)


def test_fit_recovers_a_known_line_exactly():
    spec = DEFAULT_ROD_SPEC
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods])
    fit = fit_rods(_measurement(spec, 1.234 * ks + 3.5), spec)
    assert fit.form == "qct_pro" and fit.sigma_ref is None
    assert fit.sigma_ct == pytest.approx(1.234, abs=1e-12) and fit.beta_ct == pytest.approx(3.5, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.sigma_ct_se == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(fit.residuals_hu, 0.0, atol=1e-9)
    # a noisy rod shows in its residual and the slope's standard error
    hu = 1.234 * ks + 3.5 + np.array([0.0, 0.0, 4.0, 0.0, 0.0])
    noisy = fit_rods(_measurement(spec, hu), spec)
    assert noisy.sigma_ct_se > 0 and noisy.residuals_hu[2] > 2.0


def test_qct_pro_equations_have_their_documented_form():
    # QCT PRO User Guide v5.0: fit HU - W = sigma_ref K + beta_ref, then sigma_CT = sigma_ref - 0.2174,
    # beta_CT = beta_ref + 999.6. Certificate-style values (illustrative, Mindways-like: water differs by rod).
    assert qct_pro_from_reference(1.45, -1005.0) == pytest.approx((1.45 - 0.2174, -1005.0 + 999.6))
    spec = parse_rod_spec("-0.06:1012.2,58.9:1057.0,157.0:1103.6,375.8:1119.2,100.0:980.0")
    sigma_ref, beta_ref = 1.45, -1005.0
    hu = [r.water_mg_cm3 + sigma_ref * r.k2hpo4_mg_cm3 + beta_ref for r in spec.rods]
    fit = fit_rods(_measurement(spec, hu), spec)
    assert fit.form == "certificate_water"
    assert fit.sigma_ref == pytest.approx(sigma_ref, abs=1e-9) and fit.beta_ref == pytest.approx(beta_ref, abs=1e-6)
    assert fit.sigma_ct == pytest.approx(sigma_ref - 0.2174, abs=1e-9)
    assert fit.beta_ct == pytest.approx(beta_ref + 999.6, abs=1e-6)
    # K alone means a QCT-Pro-equivalent solution (W = 999.6 - 0.2174 K): both forms give the same line
    plain = RodSpec(rods=tuple(Rod(k) for k in (0.0, 50.0, 100.0, 150.0, 200.0)))
    explicit = RodSpec(rods=tuple(Rod(r.k2hpo4_mg_cm3, r.water_used_mg_cm3) for r in plain.rods))
    hu = [1.3 * r.k2hpo4_mg_cm3 - 2.0 for r in plain.rods]
    a, b = fit_rods(_measurement(plain, hu), plain), fit_rods(_measurement(explicit, hu), explicit)
    assert (a.sigma_ct, a.beta_ct) == pytest.approx((b.sigma_ct, b.beta_ct), abs=1e-9)
    assert b.sigma_ref == pytest.approx(1.3 + 0.2174) and b.beta_ref == pytest.approx(-2.0 - 999.6)
    # the simulator's rods lie exactly on qct_pro_line(E), and E is recovered from the slope
    for e in (50.0, 68.0, 90.0):
        s, b0 = qct_pro_line(e)
        assert rod_hu(123.0, None, e) == pytest.approx(s * 123.0 + b0, abs=1e-9)
        assert monoenergetic_equivalent_kev(float(s)) == pytest.approx(e, abs=0.01)


def test_simulated_rods_recover_the_qct_pro_line(phantoms):
    _, pr = phantoms
    truth = pr.truth["rod_phantom"]
    energy = truth["effective_energy_kev"]
    sigma_true, beta_true = (float(v) for v in qct_pro_line(energy))
    ct = _ct(pr, kvp=120)
    meas = find_rods(ct, DEFAULT_ROD_SPEC)
    fit = fit_rods(meas, DEFAULT_ROD_SPEC)
    assert fit.sigma_ct == pytest.approx(sigma_true, rel=0.015)
    assert fit.beta_ct == pytest.approx(beta_true, abs=2.0)
    assert fit.r2 > 0.999
    for reading, rod in zip(meas.readings, truth["rods"]):
        assert np.hypot(*np.subtract(reading.centre_lps_mm, rod["centre_lps_mm"])) < 1.0
        assert reading.hu_mean == pytest.approx(rod["hu_expected"], abs=2.0)
    # K = 0 in a water block does not stand out: placed by the row's spacing
    assert [r.visible for r in meas.readings] == [False, True, True, True, True] and not meas.reversed
    cal = rod_calibration(fit, meas, ct)
    assert cal.ok and cal.method == "rods" and cal.kvp == 120 and cal.kvp_source == "header"
    assert cal.sigma_ct_95[0] <= cal.sigma_ct <= cal.sigma_ct_95[1]
    assert cal.effective_energy_kev == pytest.approx(energy, abs=1.0)
    assert len(cal.details["rods"]) == 5 and set(cal.residuals_hu) == {"rod_0", "rod_50", "rod_100", "rod_150",
                                                                      "rod_200"}
    assert cal.to_mg_cm3(truth["rods"][3]["hu_expected"]) == pytest.approx(150.0, abs=3.0)
    # the rod list given right-to-left: the row is read reversed, with the same line
    rev_spec = RodSpec(rods=DEFAULT_ROD_SPEC.rods[::-1])
    rev = find_rods(ct, rev_spec)
    assert rev.reversed and fit_rods(rev, rev_spec).sigma_ct == pytest.approx(fit.sigma_ct, rel=1e-6)
    # given centres are measured directly
    given = RodSpec(rods=DEFAULT_ROD_SPEC.rods, centres_lps_mm=tuple(tuple(r["centre_lps_mm"]) for r in truth["rods"]))
    at = find_rods(ct, given)
    assert at.located == "given" and fit_rods(at, given).sigma_ct == pytest.approx(sigma_true, rel=0.015)
    # and a z range limits the slices
    sub = find_rods(ct, DEFAULT_ROD_SPEC, z_range_mm=(-60.0, 0.0))
    assert -60.0 <= sub.z_range_mm[0] <= sub.z_range_mm[1] <= 0.0 and sub.n_slices < meas.n_slices


def test_rod_block_is_apart_from_the_patient(phantoms):
    from ctbmd.segment.builtin.grid import to_working_grid

    ph, pr = phantoms
    assert pr.hu.shape[0] == ph.hu.shape[0] and pr.hu.shape[2] == ph.hu.shape[2] and pr.hu.shape[1] > ph.hu.shape[1]
    assert pr.grid.origin_lps_mm == ph.grid.origin_lps_mm and pr.labels.shape == pr.hu.shape
    assert np.array_equal(pr.labels[:, :ph.hu.shape[1]], ph.labels) and not pr.labels[:, ph.hu.shape[1]:].any()
    work = to_working_grid(_ct(pr))
    body_rows = np.nonzero(work.body.any(axis=(0, 2)))[0]
    body_back = work.grid.origin_lps_mm[1] + work.grid.spacing_mm[1] * body_rows.max()
    assert body_back < pr.truth["rod_phantom"]["block"]["y_range_mm"][0]
    json.dumps(pr.truth)  # still JSON-ready


def test_scan_without_rods_is_refused(phantoms):
    ph, _ = phantoms
    with pytest.raises(InvalidInputError, match="calibration rods not found") as info:
        find_rods(_ct(ph, path="no_rods.nii.gz"), DEFAULT_ROD_SPEC)
    assert info.value.exit_code == 3 and "no_rods.nii.gz" in str(info.value) and "\n" not in str(info.value)
    # rods that do not fit a line are refused too (given centres on soft tissue and air)
    centres = ((-60.0, 0.0), (0.0, 0.0), (60.0, 0.0), (150.0, 250.0), (-150.0, 250.0))
    with pytest.raises(InvalidInputError, match="calibration rods not found"):
        find_rods(_ct(ph), RodSpec(rods=DEFAULT_ROD_SPEC.rods, centres_lps_mm=centres))


def test_real_scan_with_a_table_is_refused():
    from ctbmd.io import read_ct

    ct = read_ct(EXAMPLE_CT)
    with pytest.raises(InvalidInputError, match="calibration rods not found") as info:
        find_rods(ct, DEFAULT_ROD_SPEC)
    assert info.value.exit_code == 3


def test_parse_rod_spec(tmp_path):
    spec = parse_rod_spec("0, 50,100,150,200")
    assert [r.k2hpo4_mg_cm3 for r in spec.rods] == [0, 50, 100, 150, 200]
    assert all(r.water_mg_cm3 is None for r in spec.rods) and spec.diameter_mm == 20.0
    cert = parse_rod_spec("-0.06:1012.2,58.9:1057,157:1103.6")
    assert cert.rods[0] == Rod(-0.06, 1012.2) and cert.rods[2].water_mg_cm3 == 1103.6
    f = tmp_path / "phantom.json"
    f.write_text(json.dumps({"rods": [{"k2hpo4_mg_cm3": 0}, {"k2hpo4_mg_cm3": 100, "water_mg_cm3": 980.0},
                                      {"k2hpo4_mg_cm3": 200}], "diameter_mm": 25,
                             "centres_lps_mm": [[-50, 140], [0, 140], [50, 140]]}))
    js = parse_rod_spec(str(f))
    assert js.diameter_mm == 25 and js.centres_lps_mm == ((-50, 140), (0, 140), (50, 140))
    assert js.rods[1] == Rod(100.0, 980.0)
    assert parse_rod_spec(spec.to_text()) == spec

    bad_file = tmp_path / "bad.json"
    bad_file.write_text("{not json")
    wrong_centres = tmp_path / "centres.json"
    wrong_centres.write_text(json.dumps({"rods": [0, 50, 100], "centres_lps_mm": [[0, 0]]}))
    for text in ("", "0,50", "0,0,50", "a,b,c", "0:abc,50,100", "0,,100", "0,50,100:10",
                 str(tmp_path / "missing.json"), str(bad_file), str(wrong_centres)):
        with pytest.raises(UsageError) as info:
            parse_rod_spec(text)
        assert info.value.exit_code == 2 and "\n" not in str(info.value), text


def test_scanner_profile_round_trip_and_checks(phantoms, tmp_path):
    _, pr = phantoms
    phantom_scan = _ct(pr, path="qa/phantom.nii.gz", kvp=120.0, convolution_kernel="B30f", manufacturer="ctbmd")
    profile = make_profile(phantom_scan, DEFAULT_ROD_SPEC, model="sim", created="2024-01-02")
    sigma_true = float(qct_pro_line(pr.truth["rod_phantom"]["effective_energy_kev"])[0])
    assert profile.sigma_ct == pytest.approx(sigma_true, rel=0.015) and profile.kvp == 120.0
    assert 15.0 < profile.dw_cm < 45.0 and profile.source == "qa/phantom.nii.gz" and len(profile.rods) == 5
    path = save_profile(profile, tmp_path / "scanner.json")
    loaded = load_profile(path)
    assert loaded == profile and loaded.path == str(path)

    # same size, same settings: the profile's line
    cal = profile_calibration(loaded, phantom_scan, profile.dw_cm)
    assert cal.ok and cal.method == "scanner_profile" and cal.kvp_source == "header"
    assert cal.sigma_ct == pytest.approx(profile.sigma_ct) and cal.beta_ct == profile.beta_ct
    # a bigger patient hardens the beam: smaller slope, same intercept
    big = profile_calibration(loaded, phantom_scan, profile.dw_cm + 10.0)
    assert big.sigma_ct < cal.sigma_ct and big.beta_ct == cal.beta_ct and big.dw_cm == profile.dw_cm + 10.0
    assert big.effective_energy_kev > cal.effective_energy_kev
    # no kVp in the header (NIfTI): the profile's, with a flag
    nifti = profile_calibration(loaded, _ct(pr), profile.dw_cm)
    assert nifti.kvp == 120.0 and nifti.kvp_source == "profile" and any("kVp" in f for f in nifti.qc_flags)
    # kVp or kernel mismatch: refused
    for info in (dict(kvp=100.0), dict(kvp=120.0, convolution_kernel="B70f")):
        with pytest.raises(UsageError) as err:
            profile_calibration(loaded, replace(phantom_scan, info=replace(phantom_scan.info, **info)), 30.0)
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
    # a profile needs a kVp
    with pytest.raises(UsageError):
        make_profile(_ct(pr), DEFAULT_ROD_SPEC)

    # the phantom scanned on its own (asynchronous QA scan): found without a patient, small Dw
    alone = pr.hu.copy()
    y = pr.grid.origin_lps_mm[1] + pr.grid.spacing_mm[1] * np.arange(alone.shape[1])
    alone[:, y < pr.truth["rod_phantom"]["block"]["y_range_mm"][0] - 2.0] = -1000
    solo = make_profile(_ct(replace(pr, hu=alone), kvp=120.0), DEFAULT_ROD_SPEC)
    assert solo.sigma_ct == pytest.approx(sigma_true, rel=0.015) and solo.dw_cm < 15.0


def test_load_profile_errors(tmp_path):
    with pytest.raises(InvalidInputError) as err:
        load_profile(tmp_path / "none.json")
    assert err.value.exit_code == 3
    bad = tmp_path / "bad.json"
    for text in ("{", json.dumps({"schema": "other"}), json.dumps({"schema": "ctbmd-scanner-profile 1"})):
        bad.write_text(text)
        with pytest.raises(InvalidInputError) as err:
            load_profile(bad)
        assert err.value.exit_code == 3 and "\n" not in str(err.value)
