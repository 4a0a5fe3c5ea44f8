"""Attenuation of the phantom's materials at the scan's effective energy.

Units: energies keV, linear attenuation 1/cm, densities g/cm^3, BMD mg/cm^3
K2HPO4, iodine mg/mL.

* **Effective energy**: the spectrum-model table of
  :mod:`ctbmd.calibrate.energy` at the phantom's kVp and water-equivalent
  diameter Dw (AAPM Report 220, measured on the painted phantom over T11-L5,
  or the levels in view), plus a scanner offset: fixed by
  ``PhantomSpec.energy_offset_kev`` (one scanner, shared by its patients) or
  drawn from the table's spread (normal, SD ``hypot(sd_family, 1.5)`` keV).
  ``beam_hardening=False`` holds Dw at 30 cm.
* **Cupping**: the residual of the scanner's water beam-hardening correction,
  modelled as a central attenuation deficit of 0.2% per 10 cm of width above
  25 cm, falling off as ``1 - r^2`` toward the body outline.
* **Tissues**, ``tissue_model="realistic"`` (the default), drawn from a seeded
  stream of their own (``default_rng([seed, 13])``), so that they do not share
  the calibrator's tables:

  - fat: a triolein-water mixture whose lipid mass fraction is drawn from
    0.54-0.85 (Martin et al., Int J Obes 1994;18:79); its density follows by
    volume additivity (0.927-0.952 g/cm^3, inside their 0.925-0.970);
  - muscle: the age-dependent L3 muscle HU (42.6 HU below 45 years falling to
    25.2 HU at 75 and over, SD 6, Invest Radiol 2024;59:259) at a drawn age of
    20-90, made by mixing ICRU-44 muscle with the drawn fat (fatty infiltration);
  - blood: ICRU-44 blood whose density is scaled so that it reads 40 +- 6 HU at
    70 keV (haemoglobin; unenhanced aortic blood reads 38-47 HU);
  - paraspinal fatty infiltration 0-12% on top.

  ``tissue_model="icru44"`` keeps exact ICRU-44 tissues with a density spread
  (``tissue_spread``) and blood 1.045-1.065 g/cm^3, as earlier phantoms had.
* **Trabecular bone**: K2HPO4 at ``c`` g/cm^3 in a marrow of water and fat,
  ``mu = c (mu/rho)_K2HPO4 + (1 - 0.2174 c) [(1-f) mu_water + f mu_fat]``:
  each gram of dissolved K2HPO4 takes the place of 0.2174 cm^3 of marrow, the
  water displacement of the QCT Pro convention (fat-free marrow is then exactly
  the QCT Pro reference solution).
  Its truth, ``qct_equivalent_mg_cm3``, is what phantom-calibrated QCT Pro
  reads at the effective energy: ``(HU_native - beta_CT) / sigma_CT``
  (:func:`ctbmd.materials.qct_pro_line`).
* **Chest and variant materials**: costal/sacroiliac cartilage is ICRU-44 cartilage at 1.14 g/cm^3
  (~150 HU; costal cartilage reads ~100-200 HU); sternum, clavicles, scapulae and humeri are 30 %
  cortical bone in marrow, like the ilium; myocardium is muscle with the organs' share of iodine.
  Stent wires are nitinol (Ni 55 %, Ti 45 % by mass, 6.45 g/cm^3) and graft fabric is PET
  (C10H8O4, 1.38 g/cm^3), each mixed with blood by its partial-volume fraction
  (:func:`stent_attenuation`).
* **Contrast**: aortic enhancement of 200-320 HU (arterial) or 100-160 HU
  (portal venous) sets the blood iodine; organs, muscle, marrow and cava take
  set fractions of it, so that marrow rises by roughly 10-20 HU, as reported
  for vertebral bone in contrast-enhanced CT (Pompe et al., Eur Radiol
  2015;25:2300; Kaesmacher et al., JCAT 2017).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xraydb

from ctbmd.calibrate.energy import SCANNER_SD_KEV
from ctbmd.calibrate.energy import effective_energy_kev as table_energy_kev
from ctbmd.materials import QCT_PRO_SIGMA_SHIFT, hu_from_mu, linear_attenuation, mass_attenuation, qct_pro_line
from ctbmd.simulate import anatomy as an

#: Seed word of the stream that draws the realistic tissues and the scanner's energy offset.
TISSUE_STREAM = 13
#: Lipid mass fraction of adipose tissue (Martin et al. 1994) and its non-lipid part.
LIPID_FRACTION_RANGE = (0.54, 0.85)
#: L3 muscle HU by age (Invest Radiol 2024;59:259): (age, HU) at the ends of the published groups.
MUSCLE_HU_BY_AGE = ((45.0, 42.6), (75.0, 25.2))
MUSCLE_HU_SD = 6.0
BLOOD_HU_MEAN, BLOOD_HU_SD = 40.0, 6.0
#: Intervertebral disc: ICRU-44 cartilage composition at 1.06 g/cm^3 (a hydrated nucleus; discs read
#: about 60-100 HU on CT, where articular cartilage density, 1.10, would give 105-135 HU).
DISC_DENSITY = 1.06
#: Costal (and sacroiliac) cartilage density, g/cm^3.
COSTAL_CARTILAGE_DENSITY = 1.14
#: Stent-graft materials: mass fractions and density (g/cm^3).
NITINOL = ({"Ni": 0.55, "Ti": 0.45}, 6.45)
PET = ({"C": 0.625, "H": 0.042, "O": 0.333}, 1.38)
HARDENING_KEV_PER_MM = 0.025
CUPPING_PER_MM = 0.002 / 100.0
#: Iodine concentration in each tissue as a fraction of the blood's, by phase.
IODINE_SHARE = {
    "arterial": {"organ": 0.15, "muscle": 0.03, "marrow": 0.06, "ivc": 0.25, "disc": 0.01},
    "portal_venous": {"organ": 0.35, "muscle": 0.05, "marrow": 0.10, "ivc": 0.9, "disc": 0.02},
}


def effective_energy_kev(kvp: int, dw_cm: float, offset_kev: float = 0.0) -> float:
    """Effective energy (keV) at ``kvp`` behind a patient of water-equivalent diameter ``dw_cm`` (see module doc)."""
    return table_energy_kev(float(kvp), dw_cm)[0] + offset_kev


def scanner_energy_offset_kev(spec, dw_cm: float) -> float:
    """The scanner's offset from the spectrum model: ``spec.energy_offset_kev`` or a seeded draw (keV)."""
    if spec.energy_offset_kev is not None:
        return float(spec.energy_offset_kev)
    sd = float(np.hypot(table_energy_kev(float(spec.kvp), dw_cm)[1], SCANNER_SD_KEV))
    rng = np.random.default_rng([spec.seed, TISSUE_STREAM, 1])
    return float(np.clip(rng.normal(0.0, 1.0), -2.5, 2.5) * sd)


def realistic_tissues(seed: int) -> dict[str, float]:
    """Seeded realistic fat, muscle and blood (see module doc): lipid fraction, age, target HU at 70 keV."""
    rng = np.random.default_rng([seed, TISSUE_STREAM])
    (a0, h0), (a1, h1) = MUSCLE_HU_BY_AGE
    age = float(rng.uniform(20.0, 90.0))
    muscle_mean = float(np.interp(age, [a0, a1], [h0, h1]))
    return {"lipid_fraction": float(rng.uniform(*LIPID_FRACTION_RANGE)), "age_years": age,
            "muscle_hu_70kev": muscle_mean + float(np.clip(rng.normal(0, 1), -2, 2)) * MUSCLE_HU_SD,
            "blood_hu_70kev": BLOOD_HU_MEAN + float(np.clip(rng.normal(0, 1), -2, 2)) * BLOOD_HU_SD}


class FatMu(NamedTuple):
    """Attenuation (``mu``, 1/cm) and density (``density``, g/cm^3) of a fat (:func:`fat_mu`)."""

    mu: float
    density: float


def fat_mu(lipid_fraction: float, energy: float) -> FatMu:
    """mu (1/cm) and density (g/cm^3) of a triolein-water mixture with ``lipid_fraction`` by mass."""
    rho = 1.0 / (lipid_fraction / 0.915 + (1.0 - lipid_fraction) / 1.0)
    mu = rho * (lipid_fraction * float(mass_attenuation("lipid", energy))
                + (1.0 - lipid_fraction) * float(mass_attenuation("water", energy)))
    return FatMu(mu, rho)


def cupping_fraction(body_width_mm: float) -> float:
    """Central attenuation deficit (fraction of mu) left by beam hardening (see module doc)."""
    return CUPPING_PER_MM * max(0.0, body_width_mm - 250.0)


class MaterialTable(NamedTuple):
    """The attenuation of a phantom's materials (:func:`material_table`).

    Attributes
    ----------
    table : dict
        ``mu``: float32 (256,) indexed by material id; ``mu_water``, ``mu_air``;
        ``trabecular``: level -> {``hu_native``, ``hu``, ``qct_equivalent_mg_cm3``}.
    scan : dict
        The drawn tissue properties, iodine and cupping, for the truth file.
    """

    table: dict
    scan: dict


class _SoftTissues(NamedTuple):
    """mu (1/cm) of the soft tissues before contrast."""

    fat: float
    muscle: float
    blood: float
    organ: float


def _mu(material: str, energy: float, density: float | None = None) -> float:
    return float(linear_attenuation(material, energy, density))


def material_table(energy: float, spec, bmd: dict[str, float], levels: list[str],
                   rng: np.random.Generator) -> MaterialTable:
    """mu (1/cm) of every material id at ``energy``, and the per-level trabecular truth.

    Parameters
    ----------
    energy : float
        Effective energy, keV.
    spec : ctbmd.simulate.spec.PhantomSpec
        Tissue model and spread, marrow fat, phase, pixel size (for the cortical shell) and seed.
    bmd : dict
        Level -> K2HPO4 mg/cm^3.
    levels : list of str
        The phantom's levels, top to bottom (material ``TRABECULAR_BASE + i`` is level ``i``).
    rng : numpy.random.Generator
        Draws the tissue variation (:func:`spec_variation`), then the blood iodine of a contrast phase.

    Returns
    -------
    MaterialTable
    """
    mu_w, mu_a = _mu("water", energy), _mu("air", energy)
    mu_i = float(mass_attenuation("iodine", energy)) * 1e-3  # per mg/mL
    var = spec_variation(rng, spec.tissue_spread)
    soft, var = _soft_tissues(spec, energy, var)
    marrow = (1.0 - spec.marrow_fat_fraction) * mu_w + spec.marrow_fat_fraction * _mu("adipose", energy)
    iodine_blood = 0.0
    if spec.phase != "native":
        lo, hi = (200.0, 320.0) if spec.phase == "arterial" else (100.0, 160.0)
        target = float(rng.uniform(lo, hi))
        iodine_blood = target / float(hu_from_mu(mu_w + mu_i, energy))
    share = IODINE_SHARE.get(spec.phase, {k: 0.0 for k in IODINE_SHARE["arterial"]})

    def plus_iodine(base, tissue):
        return base + iodine_blood * share[tissue] * mu_i

    marrow_c = plus_iodine(marrow, "marrow")
    table = _fill_table(spec, energy, soft, var, mu_a, mu_w, marrow_c, plus_iodine,
                        soft.blood + iodine_blood * mu_i)
    cort = _mu("cortical_bone", energy)
    k2 = float(mass_attenuation("k2hpo4", energy))

    def trabecular(c_mg, with_iodine=True):
        c = c_mg / 1000.0
        m = marrow_c if with_iodine else marrow
        return c * k2 + (1.0 - QCT_PRO_SIGMA_SHIFT * c) * m

    per_level = {}
    sigma_ct, beta_ct = (float(v) for v in qct_pro_line(energy))
    for i, lv in enumerate(levels):
        table[an.TRABECULAR_BASE + i] = trabecular(bmd[lv])
        hu_native = float(hu_from_mu(trabecular(bmd[lv], False), energy))
        per_level[lv] = {"hu_native": hu_native, "hu": float(hu_from_mu(trabecular(bmd[lv]), energy)),
                         "qct_equivalent_mg_cm3": (hu_native - beta_ct) / sigma_ct}
    table[an.SACRUM] = 0.08 * cort + 0.92 * trabecular(bmd[levels[-1]])
    scan = {"iodine_blood_mg_ml": round(iodine_blood, 3),
            "aortic_hu": round(float(hu_from_mu(table[an.AORTA], energy)), 1),
            "sigma_ct_hu_per_mg_cm3": round(sigma_ct, 5), "beta_ct_hu": round(beta_ct, 3),
            "fat_hu": round(float(hu_from_mu(soft.fat, energy)), 1),
            "muscle_hu": round(float(hu_from_mu(soft.muscle, energy)), 1),
            "blood_hu": round(float(hu_from_mu(soft.blood, energy)), 1),
            **{k: round(float(v), 4) for k, v in var.items()}}
    out = {"mu": table, "mu_water": mu_w, "mu_air": mu_a, "trabecular": per_level}
    return MaterialTable(out, scan)


def _soft_tissues(spec, energy: float, var: dict) -> tuple[_SoftTissues, dict]:
    """Fat, muscle, blood and organ mu of the tissue model, and ``var`` with the realistic model's draws added."""
    if spec.tissue_model == "realistic":
        real = realistic_tissues(spec.seed)
        fat, fat_rho = fat_mu(real["lipid_fraction"], energy)
        fat70, _ = fat_mu(real["lipid_fraction"], 70.0)
        m70, fat70_hu = float(hu_from_mu(_mu("muscle", 70.0), 70.0)), float(hu_from_mu(fat70, 70.0))
        infil = float(np.clip((m70 - real["muscle_hu_70kev"]) / (m70 - fat70_hu), 0.0, 0.5))
        muscle = (1.0 - infil) * _mu("muscle", energy) + infil * fat
        b70 = float(hu_from_mu(_mu("blood", 70.0), 70.0))
        blood = _mu("blood", energy, 1.06 * (1000.0 + real["blood_hu_70kev"]) / (1000.0 + b70))
        organ = _mu("soft_tissue", energy)
        var = {**var, **{k: v for k, v in real.items()}, "fat_density_g_cm3": fat_rho,
               "muscle_fat_infiltration": infil}
    else:
        fat = _mu("adipose", energy, 0.95 * var["fat_density_factor"])
        muscle = _mu("muscle", energy, 1.05 * var["muscle_density_factor"])
        blood = _mu("blood", energy, var["blood_density_g_cm3"])
        organ = _mu("soft_tissue", energy, 1.06 * var["muscle_density_factor"])
    return _SoftTissues(fat, muscle, blood, organ), var


def _fill_table(spec, energy: float, soft: _SoftTissues, var: dict, mu_a: float, mu_w: float, marrow_c: float,
                plus_iodine, aorta: float) -> np.ndarray:
    """float32 (256,) mu by material id, trabecular bone and sacrum left at 0."""
    fat, muscle, organ = soft.fat, soft.muscle, soft.organ
    shell_mm = an.shell_thickness_mm(spec.pixel_mm)
    cort = _mu("cortical_bone", energy)
    table = np.zeros(256, np.float32)
    table[an.AIR] = mu_a
    table[an.GAS] = mu_a
    table[an.SUBCUT_FAT] = fat
    table[an.VISCERAL_FAT] = fat
    table[an.MUSCLE_WALL] = plus_iodine(muscle, "muscle")
    table[an.ORGAN] = plus_iodine(organ, "organ")
    table[an.LUNG] = _mu("lung", energy)
    infil = var["paraspinal_fat_infiltration"]
    table[an.PARASPINAL] = plus_iodine((1 - infil) * muscle + infil * fat, "muscle")
    table[an.PSOAS] = plus_iodine(muscle, "muscle")
    table[an.AORTA] = aorta
    table[an.IVC] = plus_iodine(soft.blood, "ivc")
    table[an.DISC] = plus_iodine(_mu("cartilage", energy, DISC_DENSITY), "disc")
    table[an.CANAL] = mu_w
    table[an.CORTICAL_SHELL] = (0.55 / shell_mm) * cort + (1 - 0.55 / shell_mm) * marrow_c
    table[an.POSTERIOR_BONE] = 0.4 * cort + 0.6 * marrow_c
    table[an.RIB] = 0.35 * cort + 0.65 * marrow_c
    table[an.ILIUM] = 0.3 * cort + 0.7 * marrow_c
    table[an.METAL] = _mu("titanium", energy)
    table[an.CARTILAGE] = plus_iodine(_mu("cartilage", energy, COSTAL_CARTILAGE_DENSITY), "disc")
    table[an.FLAT_BONE] = 0.3 * cort + 0.7 * marrow_c
    table[an.MYOCARDIUM] = plus_iodine(muscle, "organ")
    table[an.AIRWAY] = mu_a
    table[an.STENT_WIRE] = table[an.AORTA]  # set by stent_attenuation once the wire is drawn
    table[an.STENT_GRAFT] = table[an.AORTA]
    return table


def spec_variation(rng: np.random.Generator, spread: float) -> dict[str, float]:
    """Seeded inter-patient tissue variation; ``spread`` is the SD of fat and muscle density (fraction)."""
    return {
        "fat_density_factor": float(1.0 + np.clip(rng.normal(0.0, 1.0), -2, 2) * spread),
        "muscle_density_factor": float(1.0 + np.clip(rng.normal(0.0, 1.0), -2, 2) * spread),
        "blood_density_g_cm3": float(rng.uniform(1.045, 1.065)),
        "paraspinal_fat_infiltration": float(rng.uniform(0.0, 0.12)),
    }


def _mixture_mu(composition: tuple[dict[str, float], float], energy: float) -> float:
    """Linear attenuation (1/cm) of a (mass fractions, density) mixture at ``energy`` keV (xraydb)."""
    fractions, density = composition
    return density * sum(w * float(xraydb.mu_elam(el, energy * 1000.0)) for el, w in fractions.items())


class StentMu(NamedTuple):
    """mu (1/cm) of a stent-wire voxel (``wire``) and a graft-fabric voxel (``graft``)."""

    wire: float
    graft: float


def stent_attenuation(energy: float, wire_fill: float, graft_fill: float, blood_mu: float) -> StentMu:
    """mu (1/cm) of a stent-wire voxel and a graft-fabric voxel.

    Parameters
    ----------
    energy : float
        Effective energy, keV.
    wire_fill, graft_fill : float
        Volume fraction (0-1) of nitinol in a wire voxel and of PET in a fabric voxel.
    blood_mu : float
        mu of the blood (with iodine) that fills the rest of those voxels.

    Returns
    -------
    StentMu
    """
    wire = wire_fill * _mixture_mu(NITINOL, energy) + (1.0 - wire_fill) * blood_mu
    graft = graft_fill * _mixture_mu(PET, energy) + (1.0 - graft_fill) * blood_mu
    return StentMu(wire, graft)
