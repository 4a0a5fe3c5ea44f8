"""Phantomless (internal) calibration: an energy prior refined by reference tissues.

Method
------
1. **Reference tissues** are sampled automatically (:func:`reference_tissues`):
   air outside the body, subcutaneous fat, paraspinal muscle and aortic blood,
   each as a median HU, and the water-equivalent diameter Dw of the patient at
   the measured levels (AAPM Report 220).
2. **Effective energy, a prior plus refinement.** The prior comes from the
   tube voltage and Dw through a spectrum model (:mod:`ctbmd.calibrate.energy`;
   120 kVp with a wide SD when the kVp is unknown). It is refined, on a grid of
   energies, by the likelihood of the subcutaneous fat HU under a *realistic*
   adipose model: Woodard & White adipose tissue 3 (Br J Radiol 1986;59:1209),
   with the population spread of real abdominal fat, SD 9 HU (Pop & Mărușteri,
   Diagnostics 2023;13:1913: -106 +- 9 HU). A Huber loss keeps an atypical
   fat sample from dragging the energy. (ICRU-44 adipose, 0.95 g/cm^3, reads
   20-30 HU above real fat and pulled the energy down to about 53 keV, the
   energy of a 120 kVp beam with no patient in it.) The posterior mean is the
   effective energy and its SD the energy's uncertainty.
3. **Other tissues are checks, not calibrators.** Unenhanced, homogeneous
   aortic blood (expected 40 +- 6 HU; 38-47 HU tracking haemoglobin) and fat
   test the HU scale; paraspinal muscle drifts with age (42.6 +- 5.5 HU below
   45 years to 25.2 +- 6.8 HU at 75 and over, Invest Radiol 2024;59:259) and is
   a quality check only. A tissue far from its expectation becomes a QC flag,
   not a refusal.
4. **Air and the HU scale.** Air is sampled 10-40 mm outside the skin, away
   from the table side (posterior), with padding values (< -1100 HU) excluded.
   When it reads more than 40 HU off -1000, the scale is trusted only if the
   water-like tissues (unenhanced blood, fat) agree with it; then the air sample
   is reported as off (streaks, low dose, the reconstruction edge) and the
   calibration goes on. Otherwise it is refused.
5. **The QCT Pro convention.** BMD is what phantom-calibrated Mindways QCT
   Pro would read (:func:`ctbmd.materials.qct_pro_line`):
   ``HU = sigma_CT(E) * BMD + beta_CT(E)``, the response of an ideal scanner at
   the effective energy to a K2HPO4 solution holding ``999.6 - 0.2174 K`` mg/cm^3
   of water (QCT PRO User Guide v5.0). The 95% interval of ``sigma_CT`` comes
   from ``E +- 1.96 SD``.
6. CaHA-equivalent density: ``HA = 1.15 * K2HPO4 - 7.32`` (Faulkner et al.,
   Calcif Tissue Int 1993).

Sources: Michalski et al., Med Eng Phys 2020;78:55-63 (effective energy from
reference tissues); Bartenschlager, Engelke et al., JBMR 2023 (the best
internal references; precalibrated methods do best); Skornitzke et al., Sci Rep
2022 (reference values must match the kVp).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ctbmd.calibrate.energy import EnergyPrior, energy_prior, water_equivalent_diameter_cm
from ctbmd.masks import cross_opening, distance_mm, largest_component, plane_holes
from ctbmd.materials import TABLE_ENERGIES_KEV, hu_from_mu, linear_attenuation, qct_pro_line
from ctbmd.types import VERSE_LABELS, Calibration, ContrastPhase, CTVolume, ReferenceTissue, SpineSegmentation

ENERGIES_KEV = np.round(np.arange(40.0, 100.01, 0.25), 2)
#: Realistic subcutaneous fat: Woodard & White adipose-3 composition, and the SD (HU) of real fat about it.
FAT_MATERIAL = "adipose3"
FAT_SD_HU = 9.0
#: Unenhanced aortic blood: expected HU and SD (BACKGROUND.md: 38-47 HU, tracking haemoglobin).
BLOOD_HU, BLOOD_SD_HU = 40.0, 6.0
#: Paraspinal muscle plausible range (HU) for a QC flag: the age range 25-43 HU, widened by 3 SD.
MUSCLE_QC_RANGE_HU = (5.0, 60.0)
#: Residuals beyond this many SDs become QC flags; the Huber loss turns linear beyond HUBER_K SDs.
QC_RESIDUAL_SD = 2.5
HUBER_K = 1.5
#: Air must read -1000 HU within this, or the scale needs support from blood or fat.
AIR_TOLERANCE_HU = 40.0
#: Tissues that can vouch for the HU scale, within this many SDs of their expectation.
SCALE_CHECK_SD = 3.0
DESCRIPTION = ("phantomless: effective energy from the kVp and patient size (spectrum model) refined by "
               "subcutaneous fat (Woodard-White adipose-3); K2HPO4 in the Mindways QCT Pro convention")


@dataclass(frozen=True)
class TissueSample:
    """What :func:`reference_tissues` measured.

    Attributes
    ----------
    tissues : dict
        Tissue name -> :class:`ReferenceTissue`; tissues not found are left out.
    dw_cm : float
        Mean water-equivalent diameter (cm, AAPM Report 220) over the slices
        of the measured vertebrae; NaN when no slice holds them.
    """

    tissues: dict[str, ReferenceTissue]
    dw_cm: float


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


def reference_tissues(ct: CTVolume, seg: SpineSegmentation) -> TissueSample:
    """Sample air, subcutaneous fat, paraspinal muscle and aortic blood, and measure Dw.

    Regions (on a ~2 mm subsampled grid, in the slices holding the measured
    vertebrae, ``seg.levels``):

    * air: outside the body, 10-40 mm from the skin, -1100 to -800 HU (no
      padding values), not behind the body's back surface (the table lies there);
    * subcutaneous fat: inside the body, 3-20 mm under the skin, -250 to -30 HU;
    * paraspinal muscle: 15-60 mm left/right of the vertebral centre line and
      behind it, -30 to 150 HU, eroded by one voxel;
    * aortic blood: the most homogeneous 12 mm disc 3-45 mm in front of the
      vertebral bodies, slightly left of the midline, per slice; its median
      position along z, sampled with a 5 mm radius.

    The body is the largest connected region above -400 HU, opened by one
    voxel and hole-filled per slice, so the table (separated by air) is
    left out of it; Dw (AAPM Report 220) is measured on it.

    Returns
    -------
    TissueSample
        Tissue name -> :class:`ReferenceTissue` (missing tissues left out) and Dw in cm.
    """
    hu, labels, sp = _subsample(ct, seg)
    spine = np.isin(labels, [VERSE_LABELS[lv] for lv in seg.levels])
    zs = np.nonzero(spine.any(axis=(0, 1)))[0]
    out: dict[str, ReferenceTissue] = {}
    if len(zs) == 0:
        return TissueSample(out, float("nan"))
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    h = np.asfortranarray(hu[:, :, z0:z1])  # one copy: the subsampled view is strided
    body = h > -400
    body = largest_component(cross_opening(body, iterations=1))
    body |= plane_holes(body)  # holes filled slice by slice
    outside = distance_mm(~body, sp)
    inside = distance_mm(body, sp)
    dw_cm = water_equivalent_diameter_cm(h, body, sp)
    # at and behind the posterior-most body row of each slice: the table side
    rows = body.any(axis=0)  # (ny, nz)
    last = rows.shape[0] - 1 - np.argmax(rows[::-1], axis=0)
    back = ((np.arange(rows.shape[0])[:, None] >= last[None, :]) & rows.any(axis=0)[None, :])[None, :, :]
    t = _stats("air", h[(outside >= 10) & (outside <= 40) & (h > -1100) & (h < -800) & ~back])
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
    # the local mean and SD are needed only where the aorta is looked for: a box around every
    # slice's search region, r voxels wider (the filters' reach)
    measured = np.isfinite(cx)  # at least one slice: the spine is in these slices (checked above)
    x_lo, x_hi = (int(np.clip(v, 0, h.shape[0])) for v in (np.floor(np.min(cx[measured]) - 15 / sp[0]) - r,
                                                             np.ceil(np.max(cx[measured]) + 35 / sp[0]) + r + 1))
    y_lo, y_hi = (int(np.clip(v, 0, h.shape[1])) for v in (np.floor(np.min(cy_front[measured]) - 45 / sp[1]) - r,
                                                             np.ceil(np.max(cy_front[measured]) - 3 / sp[1]) + r + 1))
    near = h[x_lo:x_hi, y_lo:y_hi]
    mean = np.zeros(h.shape, h.dtype)
    sd = np.zeros(h.shape, h.dtype)
    if near.size:
        mean[x_lo:x_hi, y_lo:y_hi] = ndi.uniform_filter(near, size=(2 * r + 1, 2 * r + 1, 1))
        sq = ndi.uniform_filter(near * near, size=(2 * r + 1, 2 * r + 1, 1))
        sd[x_lo:x_hi, y_lo:y_hi] = np.sqrt(np.maximum(sq - mean[x_lo:x_hi, y_lo:y_hi] ** 2, 0))
    picks = []
    for k in np.nonzero(measured)[0]:
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
    return TissueSample(out, dw_cm)


class CalibrationLine(NamedTuple):
    """The QCT Pro calibration line ``HU = sigma_ct * BMD + beta_ct`` at one energy (:func:`qct_pro_line_at`).

    A tuple ``(sigma_ct, beta_ct)``, like :func:`ctbmd.materials.qct_pro_line`.

    Attributes
    ----------
    sigma_ct : float
        Slope, HU per mg/cm^3 K2HPO4 (QCT PRO User Guide v5.0 convention).
    beta_ct : float
        Intercept, HU.
    """

    sigma_ct: float
    beta_ct: float


def qct_pro_line_at(energy_kev: float) -> CalibrationLine:
    """``(sigma_CT, beta_CT)`` of :func:`ctbmd.materials.qct_pro_line` at any energy, from its grid.

    Between the points of the committed attenuation grid (0.25 keV,
    :data:`ctbmd.materials.TABLE_ENERGIES_KEV`) ``sigma_CT`` is interpolated
    linearly in log-log (it falls nearly as a power of the energy; relative
    error below 4e-6 at 40-100 keV, 4e-5 below) and ``beta_CT`` linearly, so a run needs no xraydb.
    Outside the grid (20-150 keV) the line is computed exactly.

    Parameters
    ----------
    energy_kev : float
        Effective energy, keV.

    Returns
    -------
    CalibrationLine
        ``(sigma_ct, beta_ct)``: slope (HU per mg/cm^3 K2HPO4, QCT PRO User Guide v5.0
        convention) and intercept (HU).
    """
    e = float(energy_kev)
    if not TABLE_ENERGIES_KEV[0] <= e <= TABLE_ENERGIES_KEV[-1]:
        return CalibrationLine(*(float(v) for v in qct_pro_line(e)))
    sigma, beta = _grid_line()
    log_sigma = np.interp(np.log(e), np.log(TABLE_ENERGIES_KEV), np.log(sigma))
    return CalibrationLine(float(np.exp(log_sigma)), float(np.interp(e, TABLE_ENERGIES_KEV, beta)))


@lru_cache(maxsize=1)
def _grid_line() -> tuple[np.ndarray, np.ndarray]:
    return qct_pro_line(TABLE_ENERGIES_KEV)


def expected_fat_hu(energy_kev) -> np.ndarray:
    """HU of realistic subcutaneous fat (Woodard & White adipose-3, 0.93 g/cm^3) at ``energy_kev``."""
    return hu_from_mu(linear_attenuation(FAT_MATERIAL, energy_kev), energy_kev)


def _huber(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.where(a <= HUBER_K, 0.5 * a * a, HUBER_K * (a - 0.5 * HUBER_K))


def _failed(reason: str, prior: EnergyPrior | None, tissues, qc=(), details=None) -> Calibration:
    return Calibration(ok=False, method="phantomless", description=DESCRIPTION, sigma_ct=None, beta_ct=None,
                       sigma_ct_95=None, effective_energy_kev=None, energy_sd_kev=None,
                       kvp=None if prior is None else prior.kvp, kvp_source=None if prior is None else prior.kvp_source,
                       dw_cm=None if prior is None else round(prior.dw_cm, 1), tissues=tissues, residuals_hu={},
                       qc_flags=tuple(qc), details=details or {}, reason=reason + "; BMD not calibrated, HU only")


def fit_calibration(sample: TissueSample, phase: ContrastPhase | None = None, kvp: float | None = None,
                    kvp_source: str = "header") -> Calibration:
    """Phantomless calibration: energy prior refined by fat, QCT Pro line (see module docstring).

    Parameters
    ----------
    sample : TissueSample
        From :func:`reference_tissues`.
    phase : ContrastPhase, optional
        When enhanced (by the aorta's HU or the DICOM contrast tag), blood is left out of the checks.
    kvp : float, optional
        Tube voltage (kV); ``None`` assumes 120 kVp with a wide prior and says so in ``qc_flags``.
    kvp_source : str
        ``header`` or ``option``: where ``kvp`` came from.

    Returns
    -------
    Calibration
        ``ok`` False with a ``reason`` when the patient's size or the HU scale
        cannot be established; tissue misfits are ``qc_flags``.
    """
    tissues = dict(sample.tissues)
    enhanced = phase is not None and phase.enhanced
    blood = tissues.get("aortic_blood")
    blood_ok = blood is not None and not enhanced and blood.hu_iqr <= 60
    if blood is not None and not blood_ok:
        tissues["aortic_blood"] = ReferenceTissue(blood.name, blood.hu_median, blood.hu_iqr, blood.n_voxels,
                                                  used_in_fit=False)
    for name in ("air", "paraspinal_muscle"):
        if name in tissues:
            t = tissues[name]
            tissues[name] = ReferenceTissue(t.name, t.hu_median, t.hu_iqr, t.n_voxels, used_in_fit=False)
    if not np.isfinite(sample.dw_cm) or sample.dw_cm <= 5.0:
        failed = _failed("patient outline not found: no water-equivalent diameter for the energy prior", None, tissues)
        return replace(failed, kvp=kvp, kvp_source=kvp_source if kvp is not None else None)
    prior = energy_prior(kvp, sample.dw_cm, kvp_source if kvp is not None else "assumed")
    qc: list[str] = []
    if kvp is None:
        qc.append(f"no kVp in the header: {prior.kvp:.0f} kVp assumed, energy prior widened to "
                  f"+-{prior.sd_kev:.0f} keV (give --kvp)")
    if "subcutaneous_fat" not in tissues:
        return _failed("reference tissue not found: subcutaneous_fat", prior, tissues, qc)

    energies = ENERGIES_KEV
    neg_log = 0.5 * ((energies - prior.mean_kev) / prior.sd_kev) ** 2
    fat = tissues["subcutaneous_fat"]
    fat_theory = expected_fat_hu(energies)
    neg_log = neg_log + _huber((fat.hu_median - fat_theory) / FAT_SD_HU)
    post = np.exp(-(neg_log - neg_log.min()))
    post /= post.sum()
    energy = float((post * energies).sum())
    energy_sd = float(np.sqrt((post * (energies - energy) ** 2).sum()))

    if min(energy - energies[0], energies[-1] - energy) < 2.0 * energy_sd:
        qc.append(f"effective energy {energy:.1f} keV lies near the {energies[0]:.0f}-{energies[-1]:.0f} keV "
                  "grid edge: the tissues contradict the kVp and size; BMD less certain")
    residuals = {"subcutaneous_fat": round(float(fat.hu_median - np.interp(energy, energies, fat_theory)), 1)}
    if blood_ok:
        residuals["aortic_blood"] = round(blood.hu_median - BLOOD_HU, 1)
    checks = {"subcutaneous_fat": FAT_SD_HU, "aortic_blood": BLOOD_SD_HU}
    for name, r in residuals.items():
        if abs(r) > QC_RESIDUAL_SD * checks[name]:
            qc.append(f"{name.replace('_', ' ')} reads {tissues[name].hu_median:.0f} HU, {r:+.0f} HU from its "
                      f"expected value at {energy:.1f} keV (> {QC_RESIDUAL_SD} SD): atypical tissue or HU scale off")
    muscle = tissues.get("paraspinal_muscle")
    if muscle is not None and not MUSCLE_QC_RANGE_HU[0] <= muscle.hu_median <= MUSCLE_QC_RANGE_HU[1]:
        qc.append(f"paraspinal muscle reads {muscle.hu_median:.0f} HU, outside {MUSCLE_QC_RANGE_HU[0]:.0f}-"
                  f"{MUSCLE_QC_RANGE_HU[1]:.0f} HU (fatty infiltration, contrast or HU scale off)")

    air = tissues.get("air")
    if air is None:
        return _failed("reference tissue not found: air outside the body", prior, tissues, qc)
    if abs(air.hu_median + 1000.0) > AIR_TOLERANCE_HU:
        vouch = [n for n, r in residuals.items() if abs(r) <= SCALE_CHECK_SD * checks[n]]
        if not vouch:
            return _failed(f"air reads {air.hu_median:.0f} HU, not -1000 +- {AIR_TOLERANCE_HU:.0f}, and no "
                           "water-like tissue confirms the HU scale", prior, tissues, qc)
        qc.append(f"air sample reads {air.hu_median:.0f} HU (not -1000 +- {AIR_TOLERANCE_HU:.0f}); "
                  f"{' and '.join(v.replace('_', ' ') for v in vouch)} agree with the HU scale, so the air sample "
                  "is taken to be off (streaks, low dose, reconstruction edge), not the scale")

    sigma, beta = qct_pro_line_at(energy)
    lo, hi = (qct_pro_line_at(energy + d * energy_sd)[0] for d in (1.96, -1.96))
    return Calibration(ok=True, method="phantomless", description=DESCRIPTION, sigma_ct=round(sigma, 5),
                       beta_ct=round(beta, 3), sigma_ct_95=(round(lo, 5), round(hi, 5)),
                       effective_energy_kev=round(energy, 2), energy_sd_kev=round(energy_sd, 2), kvp=prior.kvp,
                       kvp_source=prior.kvp_source, dw_cm=round(sample.dw_cm, 1), tissues=tissues,
                       residuals_hu=residuals, qc_flags=tuple(qc),
                       details={"energy_prior_kev": {"mean": round(prior.mean_kev, 2), "sd": round(prior.sd_kev, 2)},
                                "fat_model": f"{FAT_MATERIAL} (Woodard & White 1986), SD {FAT_SD_HU} HU"})
