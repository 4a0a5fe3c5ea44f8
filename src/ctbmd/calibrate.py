"""Stage 3: phantomless (internal) calibration of HU to K2HPO4-equivalent BMD.

Method, after Michalski et al., Med Eng Phys 2020;78:55-63
(doi 10.1016/j.medengphy.2020.01.009):

1. **Reference tissues** are sampled automatically (:func:`reference_tissues`):
   air outside the body, subcutaneous fat, paraspinal muscle and aortic blood,
   each as a median HU.
2. **HU scale**: the scanner's scale is trusted (CT numbers are calibrated to
   water 0 and air -1000 HU); air must read -1000 +- 40 HU, else the
   calibration is refused. (Rescaling so that fat reads a theoretical value,
   the two-point form of Comp2Comp, was dropped: on the known-truth phantoms of
   ``benchmarks/accuracy.py`` it confounds the energy with the scale and biased
   BMD by ~20%.)
3. **Effective energy**: for E in 40-100 keV (narrowed to the kVp's plausible
   range when the DICOM header gives it, :func:`energy_search_range`), the
   theoretical HU of subcutaneous fat, paraspinal muscle and native aortic
   blood follow from their ICRU-44 compositions (NIST, Hubbell & Seltzer,
   NISTIR 5632) and xraydb's mass-attenuation tables. E minimises the
   squared residuals weighted by each tissue's expected spread
   (:data:`TISSUE_SD_HU`); fat carries most of the energy information.
4. **Bone model**: trabecular bone is taken as K2HPO4 dissolved in water, the
   definition of the K2HPO4 rods of QCT phantoms (Cann & Genant, JCAT 1980):
   ``mu = mu_water + c * ((mu/rho)_K2HPO4 - mu_water / 2.44)``, c in g/cm^3 and
   2.44 g/cm^3 the density of K2HPO4. This gives
   ``BMD [mg/cm^3] = slope * HU`` with ``slope = (mu_w - mu_air) / k(E)``.
5. CaHA-equivalent density: ``HA = 1.15 * K2HPO4 - 7.32`` (Faulkner et al.,
   Calcif Tissue Int 1993).

The fit is rejected (HU-only results) when air, fat or muscle cannot be found,
when air is off -1000 HU, when a tissue lies more than 4 SD from its fitted
value, or (without a kVp) when E lands on the 40/100 keV edge.

Limit: the energy rests on the fat HU, so an individual's fat composition
(water content) moves E and thus the slope; a 0.5% fat-density change moves
BMD by about 5-8%. Real subcutaneous fat often reads below ICRU-44 adipose
at the expected energy, which biases E low and BMD low on real scans.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ctbmd.masks import largest_component
from ctbmd.materials import K2HPO4_DENSITY, linear_attenuation, mass_attenuation
from ctbmd.types import VERSE_LABELS, Calibration, ContrastPhase, CTVolume, ReferenceTissue, SpineSegmentation

#: Which composition models each reference tissue.
TISSUE_MATERIAL = {"air": "air", "subcutaneous_fat": "adipose", "paraspinal_muscle": "muscle",
                   "aortic_blood": "blood"}
ENERGIES_KEV = np.arange(40.0, 100.01, 0.25)
#: Expected spread (HU) of each tissue's median about its ICRU-44 value at the true energy: the weights
#: of the energy fit. Fat composition varies least and is the energy-sensitive tissue (its HU rises by
#: ~2 HU per keV at 50-70 keV while muscle and blood change by < 0.3 HU per keV).
TISSUE_SD_HU = {"subcutaneous_fat": 6.0, "paraspinal_muscle": 12.0, "aortic_blood": 10.0}
#: A tissue further than this many SDs from its fitted value rejects the calibration.
MAX_RESIDUAL_SD = 4.0
#: Air must read -1000 HU within this, or the HU scale is not trusted.
AIR_TOLERANCE_HU = 40.0
METHOD = "internal: weighted effective-energy fit to ICRU-44 tissues (after Michalski 2020), K2HPO4-in-water model"


def _mu(material: str) -> np.ndarray:
    """mu in 1/cm of a :data:`ctbmd.materials.COMPOSITIONS` material at :data:`ENERGIES_KEV`."""
    return linear_attenuation(material, ENERGIES_KEV)


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

    Regions (on a ~2 mm subsampled grid, in the slices holding the measured
    vertebrae, ``seg.levels``):

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
    spine = np.isin(labels, [VERSE_LABELS[lv] for lv in seg.levels])
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


def energy_search_range(kvp: float | None) -> tuple[float, float]:
    """Plausible effective energies (keV) for a tube voltage; 40-100 keV when unknown.

    The effective energy of a filtered clinical CT spectrum behind a patient
    lies between about 0.38 kVp + 10 and 0.45 kVp + 20 keV (e.g. 56-74 keV at
    120 kVp; McCollough, Radiographics 1997;17:967).
    """
    if not kvp:
        return 40.0, 100.0
    return 0.38 * float(kvp) + 10.0, 0.45 * float(kvp) + 20.0


def fit_calibration(tissues: dict[str, ReferenceTissue], phase: ContrastPhase | None = None,
                    kvp: float | None = None) -> Calibration:
    """Fit the effective energy and the HU -> K2HPO4 map (see module docstring).

    Parameters
    ----------
    tissues : dict
        From :func:`reference_tissues`.
    phase : ContrastPhase, optional
        When enhanced, aortic blood is measured but left out of the fit.
    kvp : float, optional
        Tube voltage (kV) from the DICOM header; bounds the energy search
        (:func:`energy_search_range`).

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
    air = tissues["air"]
    air = ReferenceTissue(air.name, air.hu_median, air.hu_iqr, air.n_voxels, used_in_fit=False)
    tissues["air"] = air
    used = [n for n, t in tissues.items() if t.used_in_fit and n in TISSUE_SD_HU]
    measured = np.array([tissues[n].hu_median for n in used])
    sd = np.array([TISSUE_SD_HU[n] for n in used])
    lo, hi = energy_search_range(kvp)
    sel = (ENERGIES_KEV >= lo - 1e-9) & (ENERGIES_KEV <= hi + 1e-9)
    energies = ENERGIES_KEV[sel]
    mu_w, mu_a = _mu("water")[sel], _mu("air")[sel]
    theory = np.array([1000.0 * (_mu(TISSUE_MATERIAL[n])[sel] - mu_w) / (mu_w - mu_a) for n in used])
    cost = (((measured[:, None] - theory) / sd[:, None]) ** 2).sum(axis=0)
    e = int(np.argmin(cost))
    energy = float(energies[e])
    resid = measured - theory[:, e]
    k = mass_attenuation("k2hpo4", energy) - mu_w[e] / K2HPO4_DENSITY  # d(mu)/dc, per g/cm^3
    slope = float((mu_w[e] - mu_a[e]) / k)  # mg/cm^3 K2HPO4 per HU
    residuals = {n: round(float(r), 2) for n, r in zip(used, resid)}
    reason = None
    ok = True
    worst = max(used, key=lambda n: abs(residuals[n]) / TISSUE_SD_HU[n])
    if abs(air.hu_median + 1000.0) > AIR_TOLERANCE_HU:
        ok, reason = False, (f"air reads {air.hu_median:.0f} HU, not -1000 +- {AIR_TOLERANCE_HU:.0f}: "
                             "the HU scale is off")
    elif abs(residuals[worst]) > MAX_RESIDUAL_SD * TISSUE_SD_HU[worst]:
        ok, reason = False, (f"reference tissues fit poorly ({worst} {residuals[worst]:+.0f} HU from its "
                             f"ICRU-44 value at the best energy)")
    elif e in (0, len(energies) - 1) and not kvp:
        ok, reason = False, f"effective energy at the search limit ({energy:.0f} keV): implausible tissue HU"
    if not ok:
        return Calibration(ok=False, method=METHOD, slope=None, intercept=None, effective_energy_kev=energy,
                           tissues=tissues, residuals_hu=residuals, reason=reason + "; BMD not calibrated, HU only")
    caveat = None
    if e in (0, len(energies) - 1):
        caveat = (f"effective energy held at the {kvp:.0f} kVp limit ({energy:.0f} keV): the fat HU suggest "
                  "a value outside it; BMD less certain")
    return Calibration(ok=True, method=METHOD, slope=round(slope, 5), intercept=0.0,
                       effective_energy_kev=energy, tissues=tissues, residuals_hu=residuals, reason=caveat)
