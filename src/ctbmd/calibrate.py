"""Stage 3: phantomless (internal) calibration of HU to K2HPO4-equivalent BMD.

Method, after Michalski et al., Med Eng Phys 2020;78:55-63
(doi 10.1016/j.medengphy.2020.01.009):

1. **Reference tissues** are sampled automatically (:func:`reference_tissues`):
   air outside the body, subcutaneous fat, paraspinal muscle and aortic blood,
   each as a median HU.
2. **Effective energy**: for E = 40-120 keV, the tissues' linear attenuation
   mu(E) is computed from their ICRU-44 elemental compositions (NIST,
   Hubbell & Seltzer, NISTIR 5632) with xraydb's elemental mass-attenuation
   tables, and the measured HU are fitted as ``HU = a * mu(E) + b``. The E with
   the smallest residual is kept. Contrast-enhanced blood is left out of the fit.
3. **HU scale**: measured HU are mapped linearly so that air reads its
   theoretical -1000 HU and subcutaneous fat the theoretical adipose HU at E
   (the two-point air/fat form of Comp2Comp, here with an energy-dependent fat
   value); water-like tissue then reads ~0 HU. Muscle and blood vary between
   patients, so they inform E but not the scale.
4. **Bone model**: trabecular bone is taken as K2HPO4 dissolved in water, the
   definition of the K2HPO4 rods of QCT phantoms (Cann & Genant, JCAT 1980):
   ``mu = mu_water + c * ((mu/rho)_K2HPO4 - mu_water / 2.44)``, c in g/cm^3 and
   2.44 g/cm^3 the density of K2HPO4. With steps 2-3 this gives a linear map
   ``BMD [mg/cm^3] = slope * HU + intercept``.
5. CaHA-equivalent density: ``HA = 1.15 * K2HPO4 - 7.32`` (Faulkner et al.,
   Calcif Tissue Int 1993).

The fit is rejected (HU-only results) when air, fat or muscle cannot be found,
when the fit residual RMS exceeds 30 HU, or when E lands on the 40/120 keV edge.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import xraydb
from scipy import ndimage as ndi

from ctbmd.masks import largest_component
from ctbmd.types import Calibration, ContrastPhase, CTVolume, ReferenceTissue, SpineSegmentation

#: ICRU-44 elemental mass fractions and densities (g/cm^3), as tabulated by NIST
#: (Hubbell & Seltzer 1995, "Tables of X-Ray Mass Attenuation Coefficients", Table 2).
COMPOSITIONS: dict[str, tuple[dict[str, float], float]] = {
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 0.001205),
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0),
    "adipose": ({"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001}, 0.95),
    "muscle": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.710, "Na": 0.001, "P": 0.002, "S": 0.003,
                "Cl": 0.001, "K": 0.004}, 1.05),
    "blood": ({"H": 0.102, "C": 0.110, "N": 0.033, "O": 0.745, "Na": 0.001, "P": 0.001, "S": 0.002,
               "Cl": 0.003, "K": 0.002, "Fe": 0.001}, 1.06),
    "k2hpo4": ({"K": 2 * 39.0983 / 174.176, "H": 1.00794 / 174.176, "P": 30.97376 / 174.176,
                "O": 4 * 15.9994 / 174.176}, 2.44),
}
#: Which composition models each reference tissue.
TISSUE_MATERIAL = {"air": "air", "subcutaneous_fat": "adipose", "paraspinal_muscle": "muscle",
                   "aortic_blood": "blood"}
ENERGIES_KEV = np.arange(40.0, 120.5, 1.0)
MAX_FIT_RMS_HU = 30.0
METHOD = "internal: effective-energy fit (Michalski 2020), air/fat two-point HU scale, K2HPO4-in-water model"


@lru_cache(maxsize=None)
def mass_attenuation(material: str) -> np.ndarray:
    """(mu/rho) in cm^2/g of a :data:`COMPOSITIONS` material at :data:`ENERGIES_KEV`."""
    fractions, _ = COMPOSITIONS[material]
    energies_ev = ENERGIES_KEV * 1000.0
    return sum(w * np.asarray(xraydb.mu_elam(el, energies_ev)) for el, w in fractions.items())


def linear_attenuation(material: str) -> np.ndarray:
    """mu in 1/cm of a :data:`COMPOSITIONS` material at :data:`ENERGIES_KEV`."""
    return mass_attenuation(material) * COMPOSITIONS[material][1]


def k2hpo4_to_caha(k2hpo4_mg_cm3: float | None) -> float | None:
    """Convert K2HPO4- to calcium-hydroxyapatite-equivalent density (mg/cm^3).

    ``HA = 1.15 * K2HPO4 - 7.32`` (Faulkner, Glüer, Grampp & Genant, Calcif
    Tissue Int 1993;52:157-159).
    """
    return None if k2hpo4_mg_cm3 is None else 1.15 * k2hpo4_mg_cm3 - 7.32


def _subsample(ct: CTVolume, seg: SpineSegmentation, target_mm: float = 2.0):
    step = tuple(max(1, int(round(target_mm / s))) for s in ct.spacing_mm)
    sl = tuple(slice(None, None, s) for s in step)
    return ct.hu[sl], seg.labels[sl], tuple(s * k for s, k in zip(ct.spacing_mm, step))


def _stats(name: str, values: np.ndarray, used: bool = True) -> ReferenceTissue | None:
    if values.size < 30:
        return None
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return ReferenceTissue(name=name, hu_median=round(float(med), 1), hu_iqr=round(float(q3 - q1), 1),
                           n_voxels=int(values.size), used_in_fit=used)


def reference_tissues(ct: CTVolume, seg: SpineSegmentation) -> dict[str, ReferenceTissue]:
    """Sample air, subcutaneous fat, paraspinal muscle and aortic blood.

    Regions (on a ~2 mm subsampled grid, in the slices holding labelled
    vertebrae):

    * air: outside the body, 5-30 mm from the skin, below -900 HU;
    * subcutaneous fat: inside the body, 3-20 mm under the skin, -250 to -30 HU;
    * paraspinal muscle: 15-60 mm left/right of the vertebral centre line and
      behind it, -30 to 150 HU, eroded by one voxel;
    * aortic blood: the most homogeneous 12 mm disc 3-45 mm in front of the
      vertebral bodies, slightly left of the midline, per slice; its median
      position along z, sampled with a 5 mm radius.

    Returns
    -------
    dict
        Tissue name -> :class:`ReferenceTissue`; missing tissues are left out.
    """
    hu, labels, sp = _subsample(ct, seg)
    spine = labels > 0
    zs = np.nonzero(spine.any(axis=(0, 1)))[0]
    out: dict[str, ReferenceTissue] = {}
    if len(zs) == 0:
        return out
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    h = hu[:, :, z0:z1]
    body = h > -400
    body = largest_component(ndi.binary_opening(body, iterations=1))
    for k in range(body.shape[2]):
        body[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    outside = ndi.distance_transform_edt(~body, sampling=sp)
    inside = ndi.distance_transform_edt(body, sampling=sp)
    t = _stats("air", h[(outside >= 5) & (outside <= 30) & (h < -900)])
    if t:
        out["air"] = t
    t = _stats("subcutaneous_fat", h[(inside >= 3) & (inside <= 20) & (h > -250) & (h < -30)])
    if t:
        out["subcutaneous_fat"] = t

    s = spine[:, :, z0:z1]
    xs, ys, zz = np.nonzero(s)
    cx = np.full(s.shape[2], np.nan)
    cy_front = np.full(s.shape[2], np.nan)
    cy_back = np.full(s.shape[2], np.nan)
    for k in np.unique(zz):
        sel = zz == k
        cx[k] = np.median(xs[sel])
        cy_front[k] = np.percentile(ys[sel], 2)
        cy_back[k] = np.percentile(ys[sel], 98)
    X, Y = np.meshgrid(np.arange(s.shape[0]), np.arange(s.shape[1]), indexing="ij")
    muscle = np.zeros_like(s)
    for k in np.nonzero(np.isfinite(cx))[0]:
        dx = np.abs(X - cx[k]) * sp[0]
        muscle[:, :, k] = (dx >= 15) & (dx <= 60) & (Y > (cy_back[k] + cy_front[k]) / 2)
    muscle &= body & (inside >= 10) & (h > -30) & (h < 150) & ~s
    muscle = ndi.binary_erosion(muscle)
    t = _stats("paraspinal_muscle", h[muscle])
    if t:
        out["paraspinal_muscle"] = t

    r = max(1, int(round(6 / sp[0])))
    mean = ndi.uniform_filter(h, size=(2 * r + 1, 2 * r + 1, 1))
    sq = ndi.uniform_filter(h * h, size=(2 * r + 1, 2 * r + 1, 1))
    sd = np.sqrt(np.maximum(sq - mean * mean, 0))
    picks = []
    for k in np.nonzero(np.isfinite(cx))[0]:
        region = ((Y < cy_front[k] - 3 / sp[1]) & (Y > cy_front[k] - 45 / sp[1])
                  & ((X - cx[k]) * sp[0] > -15) & ((X - cx[k]) * sp[0] < 35)
                  & (mean[:, :, k] > 10) & (mean[:, :, k] < 600) & body[:, :, k])
        if region.any():
            score = np.where(region, sd[:, :, k], np.inf)
            i, j = np.unravel_index(np.argmin(score), score.shape)
            picks.append((i, j))
    if len(picks) >= 3:
        pi, pj = np.median(np.array(picks), axis=0)
        disk = ((X - pi) * sp[0]) ** 2 + ((Y - pj) * sp[1]) ** 2 <= 25.0
        t = _stats("aortic_blood", h[disk[:, :, None].repeat(h.shape[2], 2) & body])
        if t:
            out["aortic_blood"] = t
    return out


def fit_calibration(tissues: dict[str, ReferenceTissue], phase: ContrastPhase | None = None) -> Calibration:
    """Fit the effective energy and the HU -> K2HPO4 map (see module docstring).

    Parameters
    ----------
    tissues : dict
        From :func:`reference_tissues`.
    phase : ContrastPhase, optional
        When enhanced, aortic blood is measured but left out of the fit.

    Returns
    -------
    Calibration
        ``ok`` False with a reason when the fit cannot be trusted.
    """
    tissues = dict(tissues)
    if phase is not None and phase.enhanced and "aortic_blood" in tissues:
        b = tissues["aortic_blood"]
        tissues["aortic_blood"] = ReferenceTissue(b.name, b.hu_median, b.hu_iqr, b.n_voxels, used_in_fit=False)
    if "aortic_blood" in tissues and tissues["aortic_blood"].hu_iqr > 60:
        b = tissues["aortic_blood"]  # inhomogeneous sample: probably not the aortic lumen
        tissues["aortic_blood"] = ReferenceTissue(b.name, b.hu_median, b.hu_iqr, b.n_voxels, used_in_fit=False)
    missing = [n for n in ("air", "subcutaneous_fat", "paraspinal_muscle") if n not in tissues]
    if missing:
        return Calibration(ok=False, method=METHOD, slope=None, intercept=None, effective_energy_kev=None,
                           tissues=tissues, residuals_hu={},
                           reason=f"reference tissue not found: {', '.join(missing)}; BMD not calibrated, HU only")
    used = [n for n, t in tissues.items() if t.used_in_fit]
    measured = np.array([tissues[n].hu_median for n in used])
    mus = np.array([linear_attenuation(TISSUE_MATERIAL[n]) for n in used])  # (tissues, energies)
    best = None
    for e in range(len(ENERGIES_KEV)):
        a, b = np.polyfit(mus[:, e], measured, 1)
        resid = measured - (a * mus[:, e] + b)
        rms = float(np.sqrt(np.mean(resid ** 2)))
        if best is None or rms < best[0]:
            best = (rms, e, a, b, resid)
    rms, e, a, b, resid = best
    energy = float(ENERGIES_KEV[e])
    mu_w = linear_attenuation("water")[e]
    mu_air = linear_attenuation("air")[e]
    fat_theory = 1000.0 * (linear_attenuation("adipose")[e] - mu_w) / (mu_w - mu_air)
    air_meas, fat_meas = tissues["air"].hu_median, tissues["subcutaneous_fat"].hu_median
    gain = (fat_theory + 1000.0) / (fat_meas - air_meas)
    offset = -1000.0 - gain * air_meas  # HU' = gain * HU + offset
    k = mass_attenuation("k2hpo4")[e] - mu_w / COMPOSITIONS["k2hpo4"][1]  # d(mu)/dc, per g/cm^3
    mg_per_hu = (mu_w - mu_air) / k  # 1 corrected HU -> mg/cm^3 K2HPO4
    slope = gain * mg_per_hu
    intercept = offset * mg_per_hu
    residuals = {n: round(float(r), 2) for n, r in zip(used, resid)}
    reason = None
    ok = True
    if rms > MAX_FIT_RMS_HU:
        ok, reason = False, f"reference tissues fit poorly (residual RMS {rms:.1f} HU > {MAX_FIT_RMS_HU:.0f})"
    elif e in (0, len(ENERGIES_KEV) - 1):
        ok, reason = False, f"effective energy at the search limit ({energy:.0f} keV): implausible tissue HU"
    elif a <= 0 or fat_meas <= air_meas:
        ok, reason = False, "reference tissue HU do not increase with attenuation"
    if not ok:
        return Calibration(ok=False, method=METHOD, slope=None, intercept=None, effective_energy_kev=energy,
                           tissues=tissues, residuals_hu=residuals, reason=reason + "; BMD not calibrated, HU only")
    return Calibration(ok=True, method=METHOD, slope=round(float(slope), 5), intercept=round(float(intercept), 3),
                       effective_energy_kev=energy, tissues=tissues, residuals_hu=residuals)
