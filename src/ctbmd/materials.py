"""Tissue compositions and X-ray attenuation, shared by calibration and the phantoms.

Elemental mass fractions and densities are those of ICRU Report 44 as
tabulated by NIST (Hubbell & Seltzer 1995, "Tables of X-Ray Mass Attenuation
Coefficients", NISTIR 5632, Table 2). Mass attenuation coefficients come from
xraydb's elemental tables (Elam, Ravel & Sieber, Radiat Phys Chem 2002), summed
by mass fraction (the mixture rule).

Units: energies in keV, mass attenuation in cm^2/g, linear attenuation in 1/cm,
densities in g/cm^3, HU relative to water and air at the same energy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import xraydb

#: name -> (mass fractions by element, density g/cm^3). ICRU-44 via NIST NISTIR 5632, except k2hpo4
#: (stoichiometric, density 2.44 g/cm^3) and titanium (pure element, 4.51 g/cm^3).
COMPOSITIONS: dict[str, tuple[dict[str, float], float]] = {
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 0.001205),
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0),
    "adipose": ({"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001}, 0.95),
    "muscle": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.710, "Na": 0.001, "P": 0.002, "S": 0.003,
                "Cl": 0.001, "K": 0.004}, 1.05),
    "blood": ({"H": 0.102, "C": 0.110, "N": 0.033, "O": 0.745, "Na": 0.001, "P": 0.001, "S": 0.002,
               "Cl": 0.003, "K": 0.002, "Fe": 0.001}, 1.06),
    "soft_tissue": ({"H": 0.105, "C": 0.256, "N": 0.027, "O": 0.602, "Na": 0.001, "P": 0.002, "S": 0.003,
                     "Cl": 0.002, "K": 0.002}, 1.06),
    "lung": ({"H": 0.103, "C": 0.105, "N": 0.031, "O": 0.749, "Na": 0.002, "P": 0.002, "S": 0.003,
              "Cl": 0.003, "K": 0.002}, 0.26),
    "cartilage": ({"H": 0.096, "C": 0.099, "N": 0.022, "O": 0.744, "Na": 0.005, "P": 0.022, "S": 0.009,
                   "Cl": 0.003}, 1.10),
    "cortical_bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
                       "S": 0.003, "Ca": 0.225}, 1.92),
    "k2hpo4": ({"K": 2 * 39.0983 / 174.176, "H": 1.00794 / 174.176, "P": 30.97376 / 174.176,
                "O": 4 * 15.9994 / 174.176}, 2.44),
    "iodine": ({"I": 1.0}, 4.93),
    "titanium": ({"Ti": 1.0}, 4.51),
}
#: Density of solid K2HPO4 (g/cm^3): the volume a dissolved concentration displaces.
K2HPO4_DENSITY = COMPOSITIONS["k2hpo4"][1]


@lru_cache(maxsize=4096)
def _mass_attenuation_scalar(material: str, energy_kev: float) -> float:
    fractions, _ = COMPOSITIONS[material]
    return float(sum(w * float(xraydb.mu_elam(el, energy_kev * 1000.0)) for el, w in fractions.items()))


def mass_attenuation(material: str, energy_kev) -> np.ndarray:
    """(mu/rho) of a :data:`COMPOSITIONS` material, cm^2/g.

    Parameters
    ----------
    material : str
        Key of :data:`COMPOSITIONS`.
    energy_kev : float or array_like
        Photon energy or energies, keV.

    Raises
    ------
    KeyError
        Unknown material.
    """
    e = np.atleast_1d(np.asarray(energy_kev, dtype=float))
    out = np.array([_mass_attenuation_scalar(material, float(round(x, 4))) for x in e])
    return out if np.ndim(energy_kev) else out[0]


def linear_attenuation(material: str, energy_kev, density_g_cm3: float | None = None) -> np.ndarray:
    """mu = (mu/rho) * rho in 1/cm; ``density_g_cm3`` overrides the tabulated density."""
    rho = COMPOSITIONS[material][1] if density_g_cm3 is None else density_g_cm3
    return mass_attenuation(material, energy_kev) * rho


def hu_from_mu(mu, energy_kev):
    """HU = 1000 (mu - mu_water) / (mu_water - mu_air) at ``energy_kev``."""
    mu_w = linear_attenuation("water", energy_kev)
    mu_a = linear_attenuation("air", energy_kev)
    return 1000.0 * (np.asarray(mu) - mu_w) / (mu_w - mu_a)


def k2hpo4_hu_per_mg(energy_kev) -> np.ndarray:
    """HU added by 1 mg/cm^3 of K2HPO4 dissolved in water (it displaces water).

    ``mu = mu_water + c * ((mu/rho)_K2HPO4 - mu_water / 2.44)`` with c in g/cm^3:
    the definition of the K2HPO4 solution rods of QCT phantoms (Cann & Genant,
    JCAT 1980;4:493-500).
    """
    mu_w = linear_attenuation("water", energy_kev)
    mu_a = linear_attenuation("air", energy_kev)
    k = mass_attenuation("k2hpo4", energy_kev) - mu_w / K2HPO4_DENSITY
    return 1000.0 * k * 1e-3 / (mu_w - mu_a)
