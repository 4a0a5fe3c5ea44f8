"""Unit checks of label-map conversion, calibration physics and classification."""

import numpy as np
import pytest

from ctbmd.calibrate import TissueSample, energy_prior, fit_calibration, k2hpo4_to_caha
from ctbmd.calibrate.internal import expected_fat_hu
from ctbmd.materials import hu_from_mu, mass_attenuation, qct_pro_from_reference, qct_pro_line
from ctbmd.classify import acr_category, pickhardt_flag
from ctbmd.errors import UsageError
from ctbmd.segment.labelmaps import detect_label_map, to_verse
from ctbmd.types import ReferenceTissue


def test_total_to_verse():
    lab = np.array([0, 31, 32, 27, 26, 5])
    assert to_verse(lab, "total").tolist() == [0, 20, 19, 24, 0, 0]
    assert detect_label_map(np.array([19, 20, 24])) == "verse"
    assert detect_label_map(np.array([27, 31])) == "total"
    with pytest.raises(UsageError):
        to_verse(lab, "nonsense")


def _tissues(energy_kev, air=-1000.0, blood=40.0, fat=None):
    fat = float(expected_fat_hu(energy_kev)) if fat is None else fat
    values = {"air": air, "subcutaneous_fat": fat, "paraspinal_muscle": 35.0, "aortic_blood": blood}
    return TissueSample({n: ReferenceTissue(n, v, 10.0, 1000) for n, v in values.items()}, dw_cm=30.0)


def test_energy_prior_for_120_kvp_at_30_cm_is_behind_the_patient():
    prior = energy_prior(120.0, 30.0)
    assert 66.0 <= prior.mean_kev <= 74.0 and 1.0 < prior.sd_kev < 3.0
    # bigger patients harden the beam; higher kVp raises it; an unknown kVp widens the prior
    assert energy_prior(120.0, 40.0).mean_kev > prior.mean_kev > energy_prior(120.0, 20.0).mean_kev
    assert energy_prior(80.0, 30.0).mean_kev < prior.mean_kev < energy_prior(140.0, 30.0).mean_kev
    unknown = energy_prior(None, 30.0)
    assert unknown.kvp == 120.0 and unknown.kvp_source == "assumed" and unknown.sd_kev > 2 * prior.sd_kev


def test_qct_pro_equations_match_their_documented_form():
    # QCT PRO User Guide v5.0: sigma_CT = sigma_ref - 0.2174, beta_CT = beta_ref + 999.6
    assert qct_pro_from_reference(1.55, -1002.0) == pytest.approx((1.55 - 0.2174, -1002.0 + 999.6))
    # an ideal monoenergetic scanner: a K mg/cm3 solution holding 999.6 - 0.2174 K mg/cm3 of water
    e, k = 70.0, 150.0
    mu = k * 1e-3 * mass_attenuation("k2hpo4", e) + (999.6 - 0.2174 * k) * 1e-3 * mass_attenuation("water", e)
    sigma, beta = qct_pro_line(e)
    assert float(hu_from_mu(mu, e)) == pytest.approx(sigma * k + beta, abs=1e-6)
    assert beta == pytest.approx(-0.4, abs=0.05)
    # the published QCT Pro band at 120 kVp (1.27-1.45 HU per mg/cm3) brackets 66-74 keV
    assert 1.27 <= float(qct_pro_line(73.0)[0]) < float(qct_pro_line(67.0)[0]) <= 1.45


def test_phantomless_calibration_follows_the_prior_and_maps_water_to_zero():
    prior = energy_prior(120.0, 30.0)
    cal = fit_calibration(_tissues(prior.mean_kev), kvp=120.0)
    assert cal.ok and cal.method == "phantomless" and not cal.qc_flags
    assert cal.effective_energy_kev == pytest.approx(prior.mean_kev, abs=0.3)
    assert cal.sigma_ct == pytest.approx(float(qct_pro_line(cal.effective_energy_kev)[0]), rel=1e-3)
    assert abs(cal.to_mg_cm3(0.0)) < 0.5
    lo, hi = cal.interval_mg_cm3(150.0)
    assert lo < cal.to_mg_cm3(150.0) < hi and 5.0 < hi - lo < 30.0


def test_fat_refines_the_energy_but_cannot_drag_it_far():
    prior = energy_prior(120.0, 30.0)
    low_fat = fit_calibration(_tissues(prior.mean_kev, fat=-125.0), kvp=120.0)
    assert prior.mean_kev - 3.0 < low_fat.effective_energy_kev < prior.mean_kev
    assert any("subcutaneous fat" in q for q in low_fat.qc_flags)  # a QC flag, not a refusal
    assert low_fat.ok


def test_missing_kvp_is_a_flag_not_an_error():
    cal = fit_calibration(_tissues(70.0))
    assert cal.ok and cal.kvp_source == "assumed" and any("no kVp" in q for q in cal.qc_flags)
    assert cal.energy_sd_kev > 3.0


def test_air_off_is_accepted_only_when_tissues_confirm_the_scale():
    ok = fit_calibration(_tissues(70.0, air=-946.0), kvp=120.0)
    assert ok.ok and any("air sample reads -946" in q for q in ok.qc_flags)
    # blood and fat both far off too: the scale itself is off -> refused
    bad = fit_calibration(_tissues(70.0, air=-946.0, blood=110.0, fat=-20.0), kvp=120.0)
    assert not bad.ok and "air reads -946" in bad.reason and bad.to_mg_cm3(100.0) is None


def test_classification_thresholds():
    assert acr_category(121) == "normal"
    assert acr_category(120) == "osteopenia"
    assert acr_category(80) == "osteopenia"
    assert acr_category(79.9) == "osteoporosis"
    assert pickhardt_flag(100).flag == "osteoporosis_likely"
    assert pickhardt_flag(150).flag == "osteoporosis_possible"
    assert pickhardt_flag(170).flag == "osteoporosis_unlikely"
    assert abs(k2hpo4_to_caha(100) - 107.68) < 1e-9


def test_attenuation_table_is_xraydb_to_the_last_bits():
    # the committed table (tools/make_attenuation_table.py) cannot drift from the compositions. Not bit for bit:
    # xraydb's log-log interpolation goes through numpy's exp/log, whose last bit changes between numpy builds
    # (numpy 2.4.6 differs from the table by up to 2 ulp, 4.4e-16 relative)
    from ctbmd.materials import COMPOSITIONS, TABLE_ENERGIES_KEV, _table, xraydb_mass_attenuation

    table = _table()
    assert set(COMPOSITIONS) <= set(table)
    assert np.array_equal(table["energy_kev"], TABLE_ENERGIES_KEV)
    for material in COMPOSITIONS:
        np.testing.assert_allclose(table[material], xraydb_mass_attenuation(material, TABLE_ENERGIES_KEV),
                                   rtol=1e-14, atol=0, err_msg=material)
    # off the grid, xraydb is used: the same numbers either way
    assert mass_attenuation("water", 70.1) == float(xraydb_mass_attenuation("water", [70.1])[0])


def test_calibration_line_between_grid_points_matches_the_exact_line():
    from ctbmd.calibrate.internal import qct_pro_line_at

    for e in (40.13, 55.5, 69.46, 70.0, 88.88, 99.99, 12.0):
        sigma, beta = qct_pro_line_at(e)
        s_exact, b_exact = qct_pro_line(e)
        assert abs(sigma / float(s_exact) - 1.0) < 5e-6 if e >= 40 else abs(sigma / float(s_exact) - 1.0) < 1e-12
        assert abs(beta - float(b_exact)) < 1e-6
