"""The calibration line of a rod phantom (:func:`fit_rods`) and its
:class:`~ctbmd.types.Calibration` (:func:`rod_calibration`), in the Mindways QCT Pro convention.

QCT PRO User Guide v5.0 (Mindways Software 2011; constants in
:mod:`ctbmd.materials`): ``HU = sigma_CT K + beta_CT``, or with certificate
water densities ``HU - W = sigma_ref K + beta_ref`` converted by
:func:`ctbmd.materials.qct_pro_from_reference`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from ctbmd.calibrate.rod_find import RodMeasurement
from ctbmd.calibrate.rod_spec import ENERGY_SEARCH_KEV, RodSpec
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.materials import qct_pro_from_reference, qct_pro_line
from ctbmd.types import Calibration, CTVolume


@dataclass(frozen=True)
class RodFit:
    """A rod phantom's calibration line in the QCT Pro convention.

    Attributes
    ----------
    sigma_ct : float
        HU per mg/cm^3 K2HPO4.
    beta_ct : float
        HU at zero K2HPO4.
    sigma_ref, beta_ref : float or None
        The Mindways certificate-form fit ``HU - W = sigma_ref K + beta_ref``
        when any rod has a certificate water density, else None.
    r2 : float
        Coefficient of determination of the fitted form.
    sigma_ct_se, beta_ct_se : float
        Standard errors (HU per mg/cm^3, HU) of slope and intercept
        (``scipy.stats.linregress``; 0 for an exact fit, NaN with 2 points).
    residuals_hu : tuple of float
        Measured minus fitted HU per rod, in the spec's order.
    form : str
        ``"qct_pro"`` (``HU = sigma_CT K + beta_CT`` fitted directly) or
        ``"certificate_water"`` (``HU - W`` fitted, then converted).
    """

    sigma_ct: float
    beta_ct: float
    sigma_ref: float | None
    beta_ref: float | None
    r2: float
    sigma_ct_se: float
    beta_ct_se: float
    residuals_hu: tuple[float, ...]
    form: str


def fit_rods(measurement: RodMeasurement, spec: RodSpec) -> RodFit:
    """Fit the rods' mean HU against K2HPO4 (``scipy.stats.linregress``).

    When no rod carries a certificate water density the line
    ``HU = sigma_CT K + beta_CT`` is fitted directly. Otherwise the Mindways
    form ``HU - W = sigma_ref K + beta_ref`` is fitted (a rod without ``W``
    takes the QCT Pro equivalent ``999.6 - 0.2174 K``) and converted with
    ``sigma_CT = sigma_ref - 0.2174``, ``beta_CT = beta_ref + 999.6`` (QCT PRO
    User Guide v5.0; :func:`ctbmd.materials.qct_pro_from_reference`).

    Parameters
    ----------
    measurement : RodMeasurement
        From :func:`~ctbmd.calibrate.rod_find.find_rods` (or built by hand); its readings' ``hu_mean`` are used.
    spec : RodSpec
        The phantom; its rods give K and W and must match the readings in number.

    Returns
    -------
    RodFit

    Raises
    ------
    UsageError
        (exit 2) Readings and spec differ in number of rods.
    InvalidInputError
        (exit 3) A rod HU is not finite.
    """
    if len(measurement.readings) != len(spec.rods):
        raise UsageError(f"{len(measurement.readings)} rod readings for a phantom of {len(spec.rods)} rods")
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods], float)
    hu = np.array([r.hu_mean for r in measurement.readings], float)
    if not np.all(np.isfinite(hu)):
        raise InvalidInputError("calibration rods not found: a rod's HU is not finite", measurement.path)
    certificate = any(r.water_mg_cm3 is not None for r in spec.rods)
    if certificate:
        water = np.array([r.water_used_mg_cm3 for r in spec.rods], float)
        res = stats.linregress(ks, hu - water)
        sigma_ref, beta_ref = float(res.slope), float(res.intercept)
        sigma, beta = qct_pro_from_reference(sigma_ref, beta_ref)
        fitted = water + sigma_ref * ks + beta_ref
    else:
        res = stats.linregress(ks, hu)
        sigma_ref = beta_ref = None
        sigma, beta = float(res.slope), float(res.intercept)
        fitted = sigma * ks + beta
    return RodFit(sigma_ct=float(sigma), beta_ct=float(beta), sigma_ref=sigma_ref, beta_ref=beta_ref,
                  r2=float(res.rvalue) ** 2, sigma_ct_se=float(res.stderr), beta_ct_se=float(res.intercept_stderr),
                  residuals_hu=tuple(float(v) for v in hu - fitted),
                  form="certificate_water" if certificate else "qct_pro")


def monoenergetic_equivalent_kev(sigma_ct: float) -> float | None:
    """Energy (keV) at which an ideal monoenergetic beam gives ``sigma_ct`` (:func:`ctbmd.materials.qct_pro_line`).

    Searched over 40-120 keV (0.05 keV grid, linear interpolation); None when
    ``sigma_ct`` lies outside what that range gives (3.26 to 0.84 HU per mg/cm^3).
    Informative only: a polychromatic beam is not one energy.
    """
    e, s = _sigma_grid()
    if not (s[-1] <= sigma_ct <= s[0]):
        return None
    return float(np.interp(sigma_ct, s[::-1], e[::-1]))


@lru_cache(maxsize=1)
def _sigma_grid() -> tuple[np.ndarray, np.ndarray]:
    """Energies (keV, 0.05 keV steps over ENERGY_SEARCH_KEV) and the ideal QCT Pro slope at each."""
    e = np.arange(ENERGY_SEARCH_KEV[0], ENERGY_SEARCH_KEV[1] + 1e-9, 0.05)
    return e, np.asarray(qct_pro_line(e)[0], float)


def _energy_sd(sigma: float, se: float, energy: float | None) -> float | None:
    if energy is None or not math.isfinite(se):
        return None
    e, s = _sigma_grid()
    slope = float(np.interp(energy, e[1:], np.diff(s) / np.diff(e)))
    return abs(se / slope) if slope else None


def t_quantile_975(n_rods: int) -> float:
    """97.5% quantile of Student's t with ``n_rods - 2`` degrees of freedom (scipy.stats); 1.96 for n > 200."""
    return float(stats.t.ppf(0.975, max(1, n_rods - 2))) if n_rods <= 200 else 1.96


def rod_calibration(fit: RodFit, measurement: RodMeasurement, ct: CTVolume) -> Calibration:
    """The :class:`~ctbmd.types.Calibration` of a synchronous rod phantom.

    Parameters
    ----------
    fit : RodFit
        From :func:`fit_rods`.
    measurement : RodMeasurement
        From :func:`~ctbmd.calibrate.rod_find.find_rods`.
    ct : CTVolume
        The scan (for its kVp).

    Returns
    -------
    Calibration
        ``method="rods"``; ``sigma_ct_95 = sigma_ct +- t SE`` and
        ``beta_ct_95 = beta_ct +- t SE``, with ``t`` the 97.5% quantile of
        Student's t with ``n_rods - 2`` degrees of freedom (3.18 for 5 rods);
        ``effective_energy_kev`` is the monoenergetic equivalent of ``sigma_ct``
        (40-120 keV, informative only) with ``energy_sd_kev`` from the slope's
        SE; ``residuals_hu`` per rod (keys ``rod_<K>``); ``details`` holds the
        rods (K, W, HU, SD, voxels, centre LPS mm, visible) and the fit.
        ``dw_cm`` is None (the pipeline knows the patient's size).
    """
    se = fit.sigma_ct_se if math.isfinite(fit.sigma_ct_se) else 0.0
    beta_se = fit.beta_ct_se if math.isfinite(fit.beta_ct_se) else 0.0
    t95 = t_quantile_975(len(measurement.readings))
    energy = monoenergetic_equivalent_kev(fit.sigma_ct)
    flags = []
    if energy is None:
        flags.append(f"rod slope {fit.sigma_ct:.3f} HU per mg/cm3 matches no monoenergetic beam of 40-120 keV")
    hidden = [r for r in measurement.readings if not r.visible]
    if measurement.located == "detected" and hidden:
        flags.append("rod(s) " + ", ".join(f"{r.rod.k2hpo4_mg_cm3:g}" for r in hidden)
                     + " mg/cm3 did not stand out from the block and were placed by the row's spacing")
    if measurement.reversed:
        flags.append("rod row read in decreasing LPS x (phantom turned round relative to the rod list)")
    if fit.r2 < 0.999:
        flags.append(f"rod fit r2 {fit.r2:.4f} < 0.999")
    rods = [{"k2hpo4_mg_cm3": r.rod.k2hpo4_mg_cm3, "water_mg_cm3": r.rod.water_mg_cm3,
             "hu_mean": round(r.hu_mean, 3), "hu_sd": round(r.hu_sd, 3), "n_voxels": r.n_voxels,
             "centre_lps_mm": [round(v, 2) for v in r.centre_lps_mm], "visible": r.visible,
             "residual_hu": round(res, 3)}
            for r, res in zip(measurement.readings, fit.residuals_hu)]
    details = {
        "rods": rods,
        "fit": {k: v for k, v in asdict(fit).items() if k != "residuals_hu"},
        "z_range_mm": list(measurement.z_range_mm), "n_slices": measurement.n_slices,
        "located": measurement.located, "reversed": measurement.reversed, "surround_hu": measurement.surround_hu,
        "convention": "QCT PRO User Guide v5.0: HU = sigma_ct K + beta_ct; HU - W = sigma_ref K + beta_ref, "
                      "sigma_ct = sigma_ref - 0.2174, beta_ct = beta_ref + 999.6",
    }
    return Calibration(
        ok=True, method="rods",
        description=(f"synchronous K2HPO4 rod phantom ({len(rods)} rods, r2 {fit.r2:.4f}), "
                     "QCT Pro convention"),
        sigma_ct=fit.sigma_ct, beta_ct=fit.beta_ct,
        sigma_ct_95=(fit.sigma_ct - t95 * se, fit.sigma_ct + t95 * se),
        beta_ct_95=(fit.beta_ct - t95 * beta_se, fit.beta_ct + t95 * beta_se),
        effective_energy_kev=energy, energy_sd_kev=_energy_sd(fit.sigma_ct, se, energy),
        kvp=None if ct.info.kvp is None else float(ct.info.kvp),
        kvp_source="header" if ct.info.kvp is not None else None, dw_cm=None,
        tissues={}, residuals_hu={f"rod_{r['k2hpo4_mg_cm3']:g}": r["residual_hu"] for r in rods},
        qc_flags=tuple(flags), details=details)
