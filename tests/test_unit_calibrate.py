"""Unit tests of the phantomless calibration (:mod:`ctbmd.calibrate.internal`, :mod:`ctbmd.calibrate.energy`).

Known answers from the documented equations: the QCT Pro line ``HU = sigma_CT(E) * BMD + beta_CT(E)`` is the
response of an ideal scanner at energy E to a K2HPO4 solution holding ``999.6 - 0.2174 K`` mg/cm^3 of water
(QCT PRO User Guide v5.0), ``HU = 1000 (mu - mu_water) / (mu_water - mu_air)``; CaHA from K2HPO4 is
``1.15 K - 7.32`` (Faulkner et al., Calcif Tissue Int 1993); Dw is ``2 sqrt(A_w / pi)`` (AAPM Report 220).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbmd.calibrate import (TissueSample, energy_prior, fit_calibration, k2hpo4_to_caha, reference_tissues,
                             water_equivalent_diameter_cm)
from ctbmd.calibrate.energy import SCANNER_SD_KEV, UNKNOWN_KVP_SD_KEV, TableEnergy, effective_energy_kev
from ctbmd.calibrate.internal import ENERGIES_KEV, CalibrationLine, expected_fat_hu, qct_pro_line_at
from ctbmd.materials import linear_attenuation, mass_attenuation
from ctbmd.types import VERSE_LABELS, ContrastPhase, CTVolume, Grid, ReferenceTissue, ScanInfo, SpineSegmentation


def _fat_hu(energy_kev: float) -> float:
    """Expected fat HU (:func:`expected_fat_hu`) interpolated on the fit's 0.25 keV grid: off the grid the
    attenuation would come from xraydb, which takes seconds to load."""
    return float(np.interp(energy_kev, ENERGIES_KEV, expected_fat_hu(ENERGIES_KEV)))


def _sample(fat_hu: float, air: float = -1000.0, blood: float = 40.0, dw_cm: float = 30.0,
            leave_out: tuple[str, ...] = ()) -> TissueSample:
    values = {"air": air, "subcutaneous_fat": fat_hu, "paraspinal_muscle": 35.0, "aortic_blood": blood}
    return TissueSample({n: ReferenceTissue(n, v, 10.0, 1000) for n, v in values.items() if n not in leave_out},
                        dw_cm=dw_cm)


def _hu_of_solution(k_mg_cm3: float, energy_kev: float) -> float:
    """HU of the QCT Pro reference solution (K mg/cm^3 K2HPO4 in 999.6 - 0.2174 K mg/cm^3 water), by hand."""
    mu = 1e-3 * (k_mg_cm3 * mass_attenuation("k2hpo4", energy_kev)
                 + (999.6 - 0.2174 * k_mg_cm3) * mass_attenuation("water", energy_kev))
    mu_w, mu_a = float(linear_attenuation("water", energy_kev)), float(linear_attenuation("air", energy_kev))
    return 1000.0 * (mu - mu_w) / (mu_w - mu_a)


def test_k2hpo4_to_caha_is_faulkners_line():
    assert k2hpo4_to_caha(100.0) == pytest.approx(107.68)
    assert k2hpo4_to_caha(0.0) == pytest.approx(-7.32)
    assert k2hpo4_to_caha(200.0) - k2hpo4_to_caha(100.0) == pytest.approx(115.0)  # slope 1.15
    assert k2hpo4_to_caha(None) is None


def _solution_line(energy_kev: float) -> tuple[float, float]:
    """``(sigma, beta)`` of the solution's HU, linear in K, by hand; between two points of the 0.25 keV grid
    (off it, the attenuation comes from xraydb, seconds to load) interpolated linearly."""
    lo = math.floor(energy_kev * 4.0) / 4.0
    w = (energy_kev - lo) / 0.25
    out = []
    for e in (lo, lo + 0.25):
        hu0, hu100 = _hu_of_solution(0.0, e), _hu_of_solution(100.0, e)
        out.append(((hu100 - hu0) / 100.0, hu0))
    return tuple((1.0 - w) * a + w * b for a, b in zip(*out))


def test_calibration_gives_the_bmd_of_the_documented_equation():
    prior = energy_prior(120.0, 30.0)
    cal = fit_calibration(_sample(_fat_hu(prior.mean_kev)), kvp=120.0)
    assert cal.ok and cal.method == "phantomless" and cal.qc_flags == ()
    sigma, beta = _solution_line(cal.effective_energy_kev)
    assert cal.sigma_ct == pytest.approx(sigma, rel=1e-4)  # sigma rounded to 5 decimals, E to 0.01 keV
    assert cal.beta_ct == pytest.approx(beta, abs=2e-3)
    # the BMD of 150 HU solves HU = sigma * K + beta
    assert cal.to_mg_cm3(150.0) == pytest.approx((150.0 - beta) / sigma, rel=2e-4)
    # water reads 0 HU and is 0 mg/cm^3 of K2HPO4, within the QCT Pro water shift (beta about -0.4 HU)
    assert abs(cal.to_mg_cm3(0.0)) < 0.5


def test_fat_at_its_expected_hu_leaves_the_energy_at_the_prior():
    prior = energy_prior(120.0, 30.0)
    cal = fit_calibration(_sample(_fat_hu(prior.mean_kev)), kvp=120.0)
    assert cal.effective_energy_kev == pytest.approx(prior.mean_kev, abs=0.05)
    assert cal.residuals_hu["subcutaneous_fat"] == pytest.approx(0.0, abs=0.2)
    assert cal.residuals_hu["aortic_blood"] == 0.0  # 40 HU, the expected unenhanced blood
    # adipose tissue reads nearer water at higher energies: fat 5 HU above its expectation raises the energy
    higher = fit_calibration(_sample(_fat_hu(prior.mean_kev) + 5.0), kvp=120.0)
    assert higher.effective_energy_kev > cal.effective_energy_kev
    assert _fat_hu(higher.effective_energy_kev) > _fat_hu(cal.effective_energy_kev)


def test_interval_widens_with_the_energys_uncertainty():
    fat = _fat_hu(energy_prior(120.0, 30.0).mean_kev)
    known = fit_calibration(_sample(fat), kvp=120.0)
    unknown = fit_calibration(_sample(fat), kvp=None)  # prior SD 6 keV instead of about 1.8
    assert unknown.energy_sd_kev > known.energy_sd_kev
    widths = []
    for cal in (known, unknown):
        lo, hi = cal.interval_mg_cm3(200.0)
        assert lo < cal.to_mg_cm3(200.0) < hi
        # the interval's ends are (HU - beta) / sigma at the ends of sigma's 95% interval
        assert (lo, hi) == pytest.approx(((200.0 - cal.beta_ct) / max(cal.sigma_ct_95),
                                          (200.0 - cal.beta_ct) / min(cal.sigma_ct_95)))
        widths.append(hi - lo)
    assert widths[1] > 2.0 * widths[0]
    # and with the distance from water: a denser bone has a wider interval
    lo, hi = known.interval_mg_cm3(100.0)
    assert hi - lo < widths[0]


def test_calibration_refusals_name_their_reason():
    fat = _fat_hu(70.0)
    no_outline = fit_calibration(_sample(fat, dw_cm=float("nan")), kvp=120.0)
    assert not no_outline.ok and no_outline.reason.startswith("patient outline not found")
    assert no_outline.kvp == 120.0 and no_outline.to_mg_cm3(100.0) is None
    no_fat = fit_calibration(_sample(fat, leave_out=("subcutaneous_fat",)), kvp=120.0)
    assert not no_fat.ok and no_fat.reason.startswith("reference tissue not found: subcutaneous_fat")
    no_air = fit_calibration(_sample(fat, leave_out=("air",)), kvp=120.0)
    assert not no_air.ok and no_air.reason.startswith("reference tissue not found: air")
    assert no_air.reason.endswith("; BMD not calibrated, HU only")


def test_enhanced_blood_is_not_a_check():
    fat = _fat_hu(energy_prior(120.0, 30.0).mean_kev)
    phase = ContrastPhase(phase="portal_venous", aorta_hu=180.0, dicom_contrast_agent=None, evidence="test")
    cal = fit_calibration(_sample(fat, blood=180.0), phase, kvp=120.0)
    assert cal.ok and "aortic_blood" not in cal.residuals_hu and not cal.tissues["aortic_blood"].used_in_fit
    assert cal.qc_flags == ()
    # unenhanced, 180 HU blood is 140 HU off its expected 40 +- 6 HU: a QC flag, not a refusal
    native = fit_calibration(_sample(fat, blood=180.0), kvp=120.0)
    assert native.ok and any(q.startswith("aortic blood reads 180 HU") for q in native.qc_flags)


def test_calibration_line_at_an_energy_is_the_solution_line():
    line = qct_pro_line_at(65.0)
    assert isinstance(line, CalibrationLine) and line == (line.sigma_ct, line.beta_ct)
    hu0, hu100 = _hu_of_solution(0.0, 65.0), _hu_of_solution(100.0, 65.0)
    assert line.sigma_ct == pytest.approx((hu100 - hu0) / 100.0, rel=1e-9)
    assert line.beta_ct == pytest.approx(hu0, abs=1e-9)
    # sigma falls with the energy: K2HPO4's photoelectric share fades
    sigmas = [qct_pro_line_at(e).sigma_ct for e in (45.0, 55.0, 65.0, 75.0, 90.0)]
    assert sigmas == sorted(sigmas, reverse=True)


def test_energy_table_is_monotone_in_kvp_and_size_and_clipped_at_its_edges():
    assert isinstance(effective_energy_kev(120.0, 30.0), TableEnergy)
    by_kvp = [effective_energy_kev(k, 30.0).mean_kev for k in (70.0, 80.0, 100.0, 120.0, 140.0, 150.0)]
    by_dw = [effective_energy_kev(120.0, d).mean_kev for d in (10.0, 20.0, 30.0, 40.0, 50.0)]
    assert all(b > a for a, b in zip(by_kvp, by_kvp[1:])) and all(b > a for a, b in zip(by_dw, by_dw[1:]))
    assert effective_energy_kev(200.0, 30.0) == effective_energy_kev(150.0, 30.0)
    assert effective_energy_kev(120.0, 5.0) == effective_energy_kev(120.0, 10.0)
    # the prior's SD: the filtration family's spread and the scanner's, in quadrature; 6 keV without a kVp
    table = effective_energy_kev(100.0, 25.0)
    prior = energy_prior(100.0, 25.0, "option")
    assert (prior.mean_kev, prior.kvp, prior.kvp_source) == (table.mean_kev, 100.0, "option")
    assert prior.sd_kev == pytest.approx(math.hypot(table.sd_family_kev, SCANNER_SD_KEV))
    unknown = energy_prior(None, 25.0)
    assert (unknown.kvp, unknown.sd_kev, unknown.kvp_source) == (120.0, UNKNOWN_KVP_SD_KEV, "assumed")


def test_water_equivalent_diameter_of_a_cylinder():
    # a water cylinder of radius 100 mm (Dw 20 cm) on 1 mm pixels; fat (-100 HU) counts 0.9 of its area
    x = np.arange(300) - 149.5
    disc = (x[:, None] ** 2 + x[None, :] ** 2 <= 100.0 ** 2)[:, :, None].repeat(3, 2)
    assert water_equivalent_diameter_cm(np.zeros(disc.shape), disc, (1.0, 1.0, 5.0)) == pytest.approx(20.0, abs=0.01)
    fat = water_equivalent_diameter_cm(np.full(disc.shape, -100.0), disc, (1.0, 1.0, 5.0))
    assert fat == pytest.approx(20.0 * math.sqrt(0.9), abs=0.01)
    assert math.isnan(water_equivalent_diameter_cm(np.zeros(disc.shape), np.zeros_like(disc), (1.0, 1.0, 5.0)))


def _torso(noise_hu: float = 5.0) -> tuple[CTVolume, SpineSegmentation]:
    """An elliptic torso on 2 mm voxels (axes L, P, S): 25 mm of fat (-100 HU) around soft tissue (40 HU), a
    bone block (200 HU) labelled L1 behind the centre, in air (-1000 HU)."""
    sp = (2.0, 2.0, 2.0)
    x = (np.arange(200) + 0.5) * sp[0] - 200.0
    y = (np.arange(160) + 0.5) * sp[1] - 160.0
    X, Y = np.meshgrid(x, y, indexing="ij")
    plane = np.full(X.shape, -1000.0)
    plane[(X / 150.0) ** 2 + (Y / 110.0) ** 2 <= 1.0] = -100.0
    plane[(X / 125.0) ** 2 + (Y / 85.0) ** 2 <= 1.0] = 40.0
    spine = (np.abs(X) <= 20.0) & (np.abs(Y - 30.0) <= 15.0)
    plane[spine] = 200.0
    hu = plane[:, :, None].repeat(20, 2) + np.random.default_rng(0).normal(0.0, noise_hu, (200, 160, 20))
    labels = np.zeros(hu.shape, np.uint8)
    labels[spine] = VERSE_LABELS["L1"]
    grid = Grid(size=hu.shape, spacing_mm=sp, origin_lps_mm=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    ct = CTVolume(hu=hu.astype(np.float32), grid=grid, info=ScanInfo(path="synthetic", format="nifti", input_grid=grid))
    return ct, SpineSegmentation(labels=labels, body=None, levels=("L1",), backend="labels")


def test_reference_tissues_of_a_synthetic_torso():
    ct, seg = _torso()
    sample = reference_tissues(ct, seg)
    assert set(sample.tissues) == {"air", "subcutaneous_fat", "paraspinal_muscle", "aortic_blood"}
    medians = {n: t.hu_median for n, t in sample.tissues.items()}
    assert medians["air"] == pytest.approx(-1000.0, abs=0.5)
    assert medians["subcutaneous_fat"] == pytest.approx(-100.0, abs=0.5)
    assert medians["paraspinal_muscle"] == pytest.approx(40.0, abs=0.5)
    assert medians["aortic_blood"] == pytest.approx(40.0, abs=1.0)
    assert sample.tissues["subcutaneous_fat"].hu_iqr == pytest.approx(2 * 0.6745 * 5.0, abs=0.5)  # IQR of N(0, 5)
    # Dw by hand: fat ellipse at 0.9, soft tissue at 1.04, bone at 1.2 (mm^2), 2 sqrt(A_w / pi)
    a_w = math.pi * 150 * 110 * 0.9 + math.pi * 125 * 85 * (1.04 - 0.9) + 40 * 30 * (1.2 - 1.04)
    assert sample.dw_cm == pytest.approx(0.2 * math.sqrt(a_w / math.pi), abs=0.1)


def test_reference_tissues_without_the_levels_slices_is_empty():
    ct, seg = _torso()
    seg = SpineSegmentation(labels=seg.labels, body=None, levels=("L3",), backend="labels")  # L3 is not labelled
    sample = reference_tissues(ct, seg)
    assert sample.tissues == {} and math.isnan(sample.dw_cm)
