"""Convert vertebra label maps to the VerSe numbering ctbmd uses internally.

Supported maps (``--label-map``):

* ``total``: TotalSegmentator v2 task ``total`` (Wasserthal et al., Radiol Artif
  Intell 2023, doi 10.1148/ryai.230024): 25 sacrum, 26 S1, 27 L5 ... 31 L1,
  32 T12 ... 43 T1, 44 C7 ... 50 C1. Organ labels (1-24, 51+) are ignored.
* ``verse``: VerSe 2019/2020 (Löffler et al. 2020): 1-7 C1-C7, 8-19 T1-T12,
  20-24 L1-L5, 25 L6, 26 sacrum, 27 coccyx, 28 T13. TotalSegmentator's ``vertebrae_pp`` and
  ``vertebrae_pp_refined`` maps use the same numbers for T12-L5 (19-24).
* ``auto``: ``total`` when any label is above 28 (numbers VerSe does not use);
  ``verse`` when every label is within 1-25; refused when 26, 27 or 28 (read
  differently by the two maps) appear without a label above 28.
"""

from __future__ import annotations

import numpy as np

from ctbmd.errors import UsageError
from ctbmd.types import VERSE_LABELS

LABEL_MAPS = ("auto", "total", "verse", "vertebrae_pp", "vertebrae_pp_refined")

#: The highest label of TotalSegmentator v2 ``total`` seen (117 classes in its label list; the LIDC-IDRI-0001
#: map in ``../shared/data`` holds 118): a larger value fits neither map.
TOTAL_MAX_LABEL = 118

#: TotalSegmentator ``total`` label -> level name.
TOTAL_LEVELS: dict[int, str] = {
    **{32 - n: f"L{n}" for n in range(1, 6)},
    **{44 - n: f"T{n}" for n in range(1, 13)},
    **{51 - n: f"C{n}" for n in range(1, 8)},
}


def detect_label_map(values: np.ndarray) -> str:
    """Guess the label map from the label values present, only where no value can be read two ways.

    VerSe uses 1-28 (26 sacrum, 27 coccyx, 28 T13); TotalSegmentator ``total`` gives 25 the sacrum, 26 S1,
    27-50 L5-C1 and 51-117 other structures (ribs, hips, muscles), so a ``total`` map of any trunk holds
    values above 28. Hence: a value within 29-:data:`TOTAL_MAX_LABEL` means ``total``; values within 1-25
    only mean ``verse``; a map with 26, 27 or 28 and nothing above 28 could be either (read the wrong way,
    VerSe's T13 would be named L4), and is refused; so is a value above :data:`TOTAL_MAX_LABEL`.

    Parameters
    ----------
    values : numpy.ndarray
        Distinct label values (0, background, is ignored).

    Returns
    -------
    str
        ``"total"`` or ``"verse"``.

    Raises
    ------
    UsageError
        If the values fit neither map, or both; the caller must name the map (``label_map``).
    """
    vals = {int(v) for v in values if v > 0}
    unknown = sorted(v for v in vals if v > TOTAL_MAX_LABEL)
    if unknown:
        raise UsageError(f"cannot tell the label map: values {', '.join(map(str, unknown[:6]))} fit neither VerSe (1-28) "
                         f"nor TotalSegmentator total (1-{TOTAL_MAX_LABEL}); give `label_map` verse or total")
    if any(v > 28 for v in vals):
        return "total"
    both = sorted(vals & {26, 27, 28})
    if both:
        raise UsageError(f"cannot tell the label map from its values: {', '.join(map(str, both))} "
                         f"{'is' if len(both) == 1 else 'are'} VerSe's sacrum (26), coccyx (27) or T13 (28) but "
                         "TotalSegmentator total's S1 (26), L5 (27) or L4 (28), and no value above 28 shows a "
                         "total map; give `label_map` verse or total")
    if vals:
        return "verse"
    raise UsageError("cannot tell the label map: it holds no label; give `label_map` verse or total")


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
