"""Generate ``src/ctbmd/attenuation_kev.csv``: mass attenuation (cm^2/g) of every ctbmd material.

Usage::

    python tools/make_attenuation_table.py

For each material of :data:`ctbmd.materials.COMPOSITIONS` and each energy from
20 to 150 keV in 0.25 keV steps, it writes ``(mu/rho)`` from xraydb's elemental
tables (Elam, Ravel & Sieber, Radiat Phys Chem 2002) summed by mass fraction,
exactly as :func:`ctbmd.materials.mass_attenuation` computes it, with 17
significant digits so that the table reads back bit for bit.

``ctbmd run`` then needs no xraydb (whose database layer costs about 0.6 s to
import) for energies on this grid: the phantomless calibration works on the grid
(40-100 keV, 0.25 keV steps). ``tests/test_units.py`` checks the table against
xraydb, so it cannot drift from the compositions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ctbmd.materials import COMPOSITIONS, TABLE_ENERGIES_KEV, TABLE_PATH, xraydb_mass_attenuation


def main() -> None:
    """Write the table next to :mod:`ctbmd.materials`."""
    names = sorted(COMPOSITIONS)
    columns = {n: xraydb_mass_attenuation(n, TABLE_ENERGIES_KEV) for n in names}
    with open(TABLE_PATH, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["energy_kev", *names])
        for i, e in enumerate(TABLE_ENERGIES_KEV):
            w.writerow([f"{e:.2f}", *(repr(float(columns[n][i])) for n in names)])
    print(f"wrote {Path(TABLE_PATH)}: {len(TABLE_ENERGIES_KEV)} energies x {len(names)} materials")
    assert np.all(np.isfinite(np.array([columns[n] for n in names])))


if __name__ == "__main__":
    main()
