"""Convert vertebra label maps to the VerSe numbering ctbmd uses internally.

Supported maps (``--label-map``):

* ``total``: TotalSegmentator v2 task ``total`` (Wasserthal et al., Radiol Artif
  Intell 2023, doi 10.1148/ryai.230024): 25 sacrum, 26 S1, 27 L5 ... 31 L1,
  32 T12 ... 43 T1, 44 C7 ... 50 C1. Organ labels (1-24, 51+) are ignored.
* ``verse``: VerSe 2019/2020 (Löffler et al. 2020): 1-7 C1-C7, 8-19 T1-T12,
  20-24 L1-L5, 25 L6, 28 T13. TotalSegmentator's ``vertebrae_pp`` and
  ``vertebrae_pp_refined`` maps use the same numbers for T12-L5 (19-24).
* ``auto``: ``total`` when any label is 26, 27 or 29-50 (numbers VerSe does not
  use); ``verse`` when every label is within 1-25 or 28.
"""

from __future__ import annotations

import numpy as np

from ctbmd.errors import UsageError
from ctbmd.types import VERSE_LABELS

LABEL_MAPS = ("auto", "total", "verse", "vertebrae_pp", "vertebrae_pp_refined")

#: TotalSegmentator ``total`` label -> level name.
TOTAL_LEVELS: dict[int, str] = {
    **{32 - n: f"L{n}" for n in range(1, 6)},
    **{44 - n: f"T{n}" for n in range(1, 13)},
    **{51 - n: f"C{n}" for n in range(1, 8)},
}


def detect_label_map(values: np.ndarray) -> str:
    """Guess the label map from the label values present.

    Parameters
    ----------
    values : numpy.ndarray
        Distinct non-zero label values.

    Returns
    -------
    str
        ``"total"`` or ``"verse"``.

    Raises
    ------
    UsageError
        If the values fit neither map; pass ``--label-map`` explicitly.
    """
    vals = {int(v) for v in values if v > 0}
    total_only = {26, 27, *range(29, 51)}
    if vals & total_only:
        return "total"
    if vals and vals <= {*range(1, 26), 28}:
        return "verse"
    raise UsageError(f"cannot tell the label map from its values {sorted(vals)[:12]}; "
                     "give --label-map total or --label-map verse")


def to_verse(labels: np.ndarray, label_map: str = "auto") -> np.ndarray:
    """Return a uint8 copy of ``labels`` in VerSe numbering (vertebrae only).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label array of any shape.
    label_map : str
        One of :data:`LABEL_MAPS`.

    Raises
    ------
    UsageError
        Unknown ``label_map``, or ``auto`` cannot decide.
    """
    if label_map not in LABEL_MAPS:
        raise UsageError(f"unknown label map {label_map!r}; choose one of {', '.join(LABEL_MAPS)}")
    if label_map == "auto":
        label_map = detect_label_map(np.unique(labels))
    lut = np.zeros(max(int(labels.max()) + 1, 256), np.uint8)
    if label_map == "total":
        for value, name in TOTAL_LEVELS.items():
            lut[value] = VERSE_LABELS[name]
    else:
        for value in VERSE_LABELS.values():
            lut[value] = value
    return lut[labels]
