"""The effective-energy prior: what the tube voltage and the patient's size say about the beam.

The table ``effective_energy_kev.csv`` (made by
``tools/make_effective_energy_table.py`` with the SpekPy spectrum model; see
that script for the method) gives, for 70-150 kVp and a water-equivalent
diameter Dw of 10-50 cm, the monoenergetic energy that reproduces the
scanner's K2HPO4 slope at the centre of the patient, and its spread across a
family of tube filtrations. The prior is a normal distribution:

* mean: the table, linearly interpolated in kVp and Dw (clipped to its edges);
* SD: ``sqrt(sd_family^2 + SCANNER_SD_KEV^2)``, the family spread plus what
  the spectrum model leaves out (bowtie shape, the scanner's own
  beam-hardening correction, detector response). With a known kVp this gives
  about 1.8 keV, i.e. a 90% interval of about +-3 keV, the spread quoted for
  120 kVp in ``BACKGROUND.md`` (E ~ 59 + 0.40 Dw keV, +-3 keV; best-matching
  virtual monoenergetic images 65-75 keV, Pomerantz et al., Radiology
  2013;266:318);
* without a kVp: 120 kVp, the commonest setting for abdominal CT, and the SD
  widened to cover 100-140 kVp at the same Dw (:data:`UNKNOWN_KVP_SD_KEV`).

Dw follows AAPM Report 220 (2014): ``Dw = 2 sqrt(A_w / pi)`` with
``A_w = sum over the body of (HU / 1000 + 1) * voxel area``, averaged over the
slices of the measured vertebrae.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ctbmd.io import KVP_RANGE  # noqa: F401 - tube voltages the table covers (kV); --kvp outside is refused

TABLE = Path(__file__).with_name("effective_energy_kev.csv")
#: SD (keV) of the scanner effects the spectrum model leaves out (see module docstring).
SCANNER_SD_KEV = 1.5
#: kVp assumed when the header has none, and the prior SD then (keV): half the 100-140 kVp span at 30 cm.
DEFAULT_KVP = 120.0
UNKNOWN_KVP_SD_KEV = 6.0


@dataclass(frozen=True)
class EnergyPrior:
    """Prior belief about the effective energy, before the tissues are looked at.

    Attributes
    ----------
    mean_kev, sd_kev : float
        Normal prior on the effective energy (keV).
    kvp : float
        Tube voltage used (kV).
    kvp_source : str
        ``"header"`` (DICOM KVP), ``"option"`` (``--kvp``) or ``"assumed"``.
    dw_cm : float
        Water-equivalent diameter (cm) it was looked up at.
    """

    mean_kev: float
    sd_kev: float
    kvp: float
    kvp_source: str
    dw_cm: float


class TableEnergy(NamedTuple):
    """The effective energy of the committed table at one kVp and Dw (:func:`effective_energy_kev`).

    A tuple ``(mean_kev, sd_family_kev)``, so ``effective_energy_kev(kvp, dw)[0]`` is the energy.

    Attributes
    ----------
    mean_kev : float
        Effective energy (keV) of the table's median filtration.
    sd_family_kev : float
        Its spread (SD, keV) across the family of tube filtrations.
    """

    mean_kev: float
    sd_family_kev: float


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in csv.DictReader(line for line in TABLE.read_text().splitlines() if not line.startswith("#"))]
    kvps = np.array(sorted({float(r["kvp"]) for r in rows}))
    dws = np.array(sorted({float(r["dw_cm"]) for r in rows}))
    e = np.zeros((len(kvps), len(dws)))
    sd = np.zeros_like(e)
    for r in rows:
        i, j = np.searchsorted(kvps, float(r["kvp"])), np.searchsorted(dws, float(r["dw_cm"]))
        e[i, j], sd[i, j] = float(r["effective_energy_kev"]), float(r["sd_family_kev"])
    return kvps, dws, e, sd


def _interp2(kvps, dws, grid, kvp, dw) -> float:
    kvp = float(np.clip(kvp, kvps[0], kvps[-1]))
    dw = float(np.clip(dw, dws[0], dws[-1]))
    along_dw = np.array([np.interp(dw, dws, row) for row in grid])
    return float(np.interp(kvp, kvps, along_dw))


def effective_energy_kev(kvp: float, dw_cm: float) -> TableEnergy:
    """Table effective energy and its filtration-family SD (keV) at ``kvp`` (kV) and ``dw_cm`` (cm).

    Bilinear interpolation in the committed table; values outside 70-150 kVp
    or 10-50 cm are clipped to the edge.

    Parameters
    ----------
    kvp : float
        Tube voltage (kV).
    dw_cm : float
        Water-equivalent diameter (cm, AAPM Report 220).

    Returns
    -------
    TableEnergy
        ``(mean_kev, sd_family_kev)``.
    """
    kvps, dws, e, sd = _table()
    return TableEnergy(_interp2(kvps, dws, e, kvp, dw_cm), _interp2(kvps, dws, sd, kvp, dw_cm))


def energy_prior(kvp: float | None, dw_cm: float, kvp_source: str = "header") -> EnergyPrior:
    """The effective-energy prior for a scan (see module docstring).

    Parameters
    ----------
    kvp : float or None
        Tube voltage (kV); ``None`` assumes :data:`DEFAULT_KVP` with the wide SD.
    dw_cm : float
        Water-equivalent diameter (cm), :func:`water_equivalent_diameter_cm`.
    kvp_source : str
        Where the kVp came from, recorded in the prior.

    Returns
    -------
    EnergyPrior
        Normal prior (mean, SD in keV) with the kVp, its source and Dw it was made for.
    """
    if kvp is None:
        mean, _ = effective_energy_kev(DEFAULT_KVP, dw_cm)
        return EnergyPrior(mean, UNKNOWN_KVP_SD_KEV, DEFAULT_KVP, "assumed", dw_cm)
    mean, sd_family = effective_energy_kev(kvp, dw_cm)
    return EnergyPrior(mean, float(np.hypot(sd_family, SCANNER_SD_KEV)), float(kvp), kvp_source, dw_cm)


def water_equivalent_diameter_cm(hu: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Mean water-equivalent diameter (cm) over axial slices (AAPM Report 220, 2014).

    Parameters
    ----------
    hu : ndarray, float, shape (nx, ny, nz)
        HU on an axial grid (axes L, P, S).
    body : ndarray, bool, same shape
        The patient's body (table and air excluded).
    spacing_mm : tuple of float
        Voxel spacing (x, y, z) in mm.

    Returns
    -------
    float
        ``mean_k 2 sqrt(A_w,k / pi)`` over slices that hold body, in cm; NaN when none does.
    """
    area_cm2 = spacing_mm[0] * spacing_mm[1] / 100.0
    att = np.where(body, np.clip(hu, -1000.0, 3000.0) / 1000.0 + 1.0, 0.0)
    aw = att.sum(axis=(0, 1)) * area_cm2
    aw = aw[body.any(axis=(0, 1))]
    if aw.size == 0:
        return float("nan")
    return float(np.mean(2.0 * np.sqrt(aw / np.pi)))
