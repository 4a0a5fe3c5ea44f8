"""Tissue compositions and X-ray attenuation, shared by calibration and the phantoms.

Elemental mass fractions and densities are those of ICRU Report 44 as
tabulated by NIST (Hubbell & Seltzer 1995, "Tables of X-Ray Mass Attenuation
Coefficients", NISTIR 5632, Table 2). Mass attenuation coefficients come from
xraydb's elemental tables (Elam, Ravel & Sieber, Radiat Phys Chem 2002), summed
by mass fraction (the mixture rule). On the 20-150 keV grid of 0.25 keV steps
they are read from ``attenuation_kev.csv``, generated from xraydb by
``tools/make_attenuation_table.py`` and checked against it by the tests; xraydb
itself is imported only for energies off that grid.

Units: energies in keV, mass attenuation in cm^2/g, linear attenuation in 1/cm,
densities in g/cm^3, HU relative to water and air at the same energy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

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
    # Woodard & White, Br J Radiol 1986;59:1209-1218, adipose tissue 3 (the lipid-rich end; ICRU-44
    # "adipose" above is their adipose tissue 2). Real abdominal fat reads close to it (about -106 HU).
    "adipose3": ({"H": 0.116, "C": 0.681, "N": 0.002, "O": 0.198, "Na": 0.001, "S": 0.001, "Cl": 0.001}, 0.93),
    # Triolein, C57H104O6, the dominant triglyceride of human fat; density 0.915 g/cm^3.
    "lipid": ({"C": 57 * 12.011 / 885.43, "H": 104 * 1.008 / 885.43, "O": 6 * 15.999 / 885.43}, 0.915),
    "k2hpo4": ({"K": 2 * 39.0983 / 174.176, "H": 1.00794 / 174.176, "P": 30.97376 / 174.176,
                "O": 4 * 15.9994 / 174.176}, 2.44),
    "iodine": ({"I": 1.0}, 4.93),
    "titanium": ({"Ti": 1.0}, 4.51),
}
#: Density of solid K2HPO4 (g/cm^3): the volume a dissolved concentration displaces.
K2HPO4_DENSITY = COMPOSITIONS["k2hpo4"][1]


#: Energies (keV) of the committed attenuation table: 20-150 keV in 0.25 keV steps.
TABLE_ENERGIES_KEV = np.round(np.arange(20.0, 150.0 + 1e-9, 0.25), 2)
#: The committed table (``tools/make_attenuation_table.py``).
TABLE_PATH = Path(__file__).with_name("attenuation_kev.csv")


def xraydb_mass_attenuation(material: str, energies_kev) -> np.ndarray:
    """(mu/rho) in cm^2/g of a :data:`COMPOSITIONS` material from xraydb, one call per element.

    Parameters
    ----------
    material : str
        Key of :data:`COMPOSITIONS`.
    energies_kev : array_like
        Photon energies, keV (1-D).

    Raises
    ------
    KeyError
        Unknown material.
    """
    import xraydb  # its database layer is slow to import; most runs never need it

    fractions, _ = COMPOSITIONS[material]
    e_ev = np.asarray(energies_kev, dtype=float) * 1000.0
    out = sum(w * np.atleast_1d(xraydb.mu_elam(el, e_ev)) for el, w in fractions.items())
    return np.asarray(out, dtype=float)


@lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    with open(TABLE_PATH) as fh:
        names = fh.readline().strip().split(",")
    data = np.loadtxt(TABLE_PATH, delimiter=",", skiprows=1, ndmin=2)
    return {n: data[:, i] for i, n in enumerate(names)}


@lru_cache(maxsize=1024)
def _mass_attenuation_cached(material: str, energies_kev: tuple[float, ...]) -> np.ndarray:
    e = np.asarray(energies_kev, dtype=float)
    step = TABLE_ENERGIES_KEV[1] - TABLE_ENERGIES_KEV[0]
    index = np.rint((e - TABLE_ENERGIES_KEV[0]) / step).astype(int)
    on_grid = (index >= 0) & (index < len(TABLE_ENERGIES_KEV))
    if on_grid.all() and np.allclose(TABLE_ENERGIES_KEV[index], e, rtol=0.0, atol=1e-6):
        table = _table()
        if material in table:
            out = table[material][index].copy()
            out.setflags(write=False)
            return out
    out = xraydb_mass_attenuation(material, e)
    out.setflags(write=False)
    return out


def mass_attenuation(material: str, energy_kev) -> np.ndarray:
    """(mu/rho) of a :data:`COMPOSITIONS` material, cm^2/g.

    Energies on the committed grid (:data:`TABLE_ENERGIES_KEV`) are read from
    the table, others come from xraydb (:func:`xraydb_mass_attenuation`); both
    give the same numbers. Results are cached per (material, energies), so
    repeated calls on a fixed energy grid cost nothing.

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
    if material not in COMPOSITIONS:
        raise KeyError(material)
    out = _mass_attenuation_cached(material, tuple(round(float(x), 4) for x in e))
    return out.copy() if np.ndim(energy_kev) else float(out[0])


def linear_attenuation(material: str, energy_kev, density_g_cm3: float | None = None) -> np.ndarray:
    """mu = (mu/rho) * rho in 1/cm; ``density_g_cm3`` overrides the tabulated density."""
    rho = COMPOSITIONS[material][1] if density_g_cm3 is None else density_g_cm3
    return mass_attenuation(material, energy_kev) * rho


def hu_from_mu(mu, energy_kev):
    """HU = 1000 (mu - mu_water) / (mu_water - mu_air) at ``energy_kev``."""
    mu_w = linear_attenuation("water", energy_kev)
    mu_a = linear_attenuation("air", energy_kev)
    return 1000.0 * (np.asarray(mu) - mu_w) / (mu_w - mu_a)


#: Mindways QCT Pro water-displacement constants (QCT PRO User Guide v5.0, Mindways Software 2011; coded in
#: Bonelab/Ogo ``ogo/calib/mindways_calibration.py``). A rod fit ``HU - rho_water = sigma_ref K + beta_ref``
#: (rho_water and K in mg/cm^3 from the phantom's certificate) converts to ``HU = sigma_CT K + beta_CT`` with
#: ``sigma_CT = sigma_ref - 0.2174`` and ``beta_CT = beta_ref + 999.6``.
QCT_PRO_SIGMA_SHIFT = 0.2174
QCT_PRO_BETA_SHIFT = 999.6


def qct_pro_from_reference(sigma_ref: float, beta_ref: float) -> tuple[float, float]:
    """``(sigma_CT, beta_CT)`` from a Mindways rod fit ``HU - rho_water = sigma_ref K + beta_ref``.

    ``sigma_CT = sigma_ref - 0.2174`` (HU per mg/cm^3 K2HPO4) and
    ``beta_CT = beta_ref + 999.6`` (HU); BMD then is
    ``(HU - beta_CT) / sigma_CT`` (QCT PRO User Guide v5.0).
    """
    return sigma_ref - QCT_PRO_SIGMA_SHIFT, beta_ref + QCT_PRO_BETA_SHIFT


def qct_pro_line(energy_kev) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_CT, beta_CT)`` that an ideal monoenergetic scanner at ``energy_kev`` would give.

    The QCT Pro convention reads a K2HPO4 concentration ``K`` (mg/cm^3) as a
    solution holding ``999.6 - 0.2174 K`` mg/cm^3 of water (the two constants
    of :func:`qct_pro_from_reference`). Its HU is therefore
    ``sigma_CT K + beta_CT`` with

    * ``sigma_CT = 1000 * 1e-3 [(mu/rho)_K2HPO4 - 0.2174 (mu/rho)_water] / (mu_w - mu_air)``
      (HU per mg/cm^3);
    * ``beta_CT = 1000 (0.9996 - 1) mu_w / (mu_w - mu_air)`` (about -0.4 HU).

    Parameters
    ----------
    energy_kev : float or array_like
        Effective energy, keV.
    """
    mu_w = linear_attenuation("water", energy_kev)
    mu_a = linear_attenuation("air", energy_kev)
    span = mu_w - mu_a
    sigma = 1000.0 * 1e-3 * (mass_attenuation("k2hpo4", energy_kev)
                             - QCT_PRO_SIGMA_SHIFT * mass_attenuation("water", energy_kev)) / span
    beta = 1000.0 * (QCT_PRO_BETA_SHIFT / 1000.0 - 1.0) * mu_w / span
    return sigma, beta
