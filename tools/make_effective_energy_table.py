"""Generate ``src/ctbmd/calibrate/effective_energy_kev.csv``: the effective energy behind a patient.

Usage::

    pip install spekpy        # only this script needs it; ctbmd reads the committed table
    python tools/make_effective_energy_table.py

For each tube voltage (70-150 kVp) and water-equivalent diameter Dw (10-50 cm,
AAPM Report 220) it computes what an ideal monoenergetic scanner would need to
reproduce the scanner's K2HPO4 response at the centre of the patient:

1. the tungsten-anode spectrum from SpekPy (Poludniowski et al., Med Phys
   2021;48:3630, doi 10.1002/mp.14945), after ``filter_mm_al`` of aluminium
   (the tube's inherent and added filtration plus the bowtie centre);
2. hardened by ``Dw`` of water (the central ray crosses the whole patient);
3. weighted by photon energy (an energy-integrating detector);
4. the polychromatic QCT Pro slope ``sigma_CT`` (HU per mg/cm^3 K2HPO4,
   :func:`ctbmd.materials.qct_pro_line`) is the spectrum average of
   ``(mu/rho)_K2HPO4 - 0.2174 (mu/rho)_water`` over that of ``mu_water``;
5. the effective energy is the monoenergetic energy with the same
   ``sigma_CT``. It is therefore *the* energy for BMD, not a mean photon
   energy.

Scanners differ in filtration and anode angle; the table gives the median
over a family of them (2.5-9 mm Al; anode 7 and 12 degrees) and the SD across
the family (``sd_family_kev``). At 120 kVp and 20-35 cm the median runs from
about 66 to 72 keV, inside the 65-75 keV of the best-matching virtual
monoenergetic image for 120 kVp (Pomerantz et al., Radiology 2013;266:318)
and rising with size as Yu et al. (Med Phys 2011;38:6371) found. The
resulting slopes (e.g. 1.27-1.45 HU per mg/cm^3 at 120 kVp) sit in the
published QCT Pro band for each kVp (``../shared/docs/BACKGROUND.md``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import spekpy
import xraydb

from ctbmd.materials import QCT_PRO_SIGMA_SHIFT, mass_attenuation, qct_pro_line

OUT = Path(__file__).resolve().parents[1] / "src" / "ctbmd" / "calibrate" / "effective_energy_kev.csv"
KVPS = (70, 80, 90, 100, 110, 120, 130, 140, 150)
DW_CM = tuple(range(10, 52, 2))
FILTERS_MM_AL = (2.5, 4.0, 5.5, 7.0, 9.0)
ANODE_DEG = (7.0, 12.0)
GRID_KEV = np.arange(30.0, 120.0, 0.05)


def sigma_ct_poly(energy: np.ndarray, fluence: np.ndarray, dw_cm: float) -> float:
    """Polychromatic QCT Pro slope (HU per mg/cm^3) at the centre of a ``dw_cm`` water cylinder."""
    mu_w = np.array([xraydb.material_mu("H2O", e * 1000.0, density=1.0) for e in energy])
    w = fluence * np.exp(-mu_w * dw_cm) * energy
    k = mass_attenuation("k2hpo4", energy) - QCT_PRO_SIGMA_SHIFT * mass_attenuation("water", energy)
    return float(1000.0 * 1e-3 * (w * k).sum() / (w * mu_w).sum())


def main() -> None:
    mono, _ = qct_pro_line(GRID_KEV)
    rows = []
    for kvp in KVPS:
        spectra = []
        for angle in ANODE_DEG:
            for al in FILTERS_MM_AL:
                s = spekpy.Spek(kvp=kvp, th=angle)
                s.filter("Al", al)
                e, phi = (np.asarray(a, float) for a in s.get_spectrum())
                keep = e >= 15.0
                spectra.append((e[keep], phi[keep]))
        for dw in DW_CM:
            energies = []
            for e, phi in spectra:
                sigma = sigma_ct_poly(e, phi, dw)
                energies.append(float(GRID_KEV[np.argmin(np.abs(mono - sigma))]))
            rows.append({"kvp": kvp, "dw_cm": dw, "effective_energy_kev": round(float(np.median(energies)), 2),
                         "sd_family_kev": round(float(np.std(energies)), 2)})
        print(kvp, [r["effective_energy_kev"] for r in rows if r["kvp"] == kvp and r["dw_cm"] in (20, 30, 40)])
    with open(OUT, "w", newline="") as f:
        f.write(f"# effective energy for K2HPO4 (QCT Pro convention) behind Dw of water; made by "
                f"tools/make_effective_energy_table.py with spekpy {spekpy.__version__}\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
