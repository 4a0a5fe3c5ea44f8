"""Stage 1: find and label the vertebrae.

Three backends behind :func:`segment`:

* ``builtin`` (default): classical image analysis, no weights; it names every
  vertebra from the cervicothoracic junction to the sacrum from anatomical
  evidence, or refuses (:mod:`ctbmd.segment.builtin`).
* ``labels``: an existing label map (``--labels FILE``), TotalSegmentator
  ``total``, ``vertebrae_pp(_refined)`` or VerSe numbering
  (:mod:`ctbmd.segment.labelmaps`).
* ``totalsegmentator``: TotalSegmentator's Python API when it and its weights
  are installed (:mod:`ctbmd.segment.totalseg`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctbmd.errors import NoSpineError, UsageError
from ctbmd.io import read_label_map
from ctbmd.masks import label_values
from ctbmd.segment.builtin import REPORTED_LEVELS, segment_builtin
from ctbmd.segment.labelmaps import to_verse
from ctbmd.types import LEVEL_ORDER, VERSE_LABELS, CTVolume, SpineSegmentation

SEGMENTERS = ("builtin", "labels", "totalsegmentator")
#: Levels that can be measured (``--levels``): T1 to L5.
MEASURABLE_LEVELS = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))


def parse_levels(text: str) -> tuple[str, ...]:
    """Parse a level list such as ``"T11-L5"``, ``"T4-T12"`` or ``"L1,L2,L4"`` (cranial to caudal).

    Raises
    ------
    UsageError
        A name outside T1-L5, or a range that runs upward.
    """
    out: list[str] = []
    for item in filter(None, (p.strip().upper() for p in text.split(","))):
        ends = [e.strip() for e in item.split("-")]
        if len(ends) > 2 or any(e not in MEASURABLE_LEVELS for e in ends):
            raise UsageError(f"`levels` item {item!r} is not a level or a range of levels from T1 to L5 "
                             "(e.g. T11-L5 or L1,L2)")
        a, b = MEASURABLE_LEVELS.index(ends[0]), MEASURABLE_LEVELS.index(ends[-1])
        if b < a:
            raise UsageError(f"`levels` range {item!r} runs upward; write it cranial to caudal (e.g. T4-T12)")
        out += [lv for lv in MEASURABLE_LEVELS[a:b + 1] if lv not in out]
    if not out:
        raise UsageError("`levels` names no level")
    return tuple(sorted(out, key=LEVEL_ORDER.index))


def _from_verse_labels(labels: np.ndarray, backend: str, source: str, levels: tuple[str, ...]) -> SpineSegmentation:
    present = label_values(labels)
    measured = tuple(n for n in levels if VERSE_LABELS[n] in present)
    if not measured:
        raise NoSpineError(f"none of the measured levels ({', '.join(levels)}) is in the label map", source)
    return SpineSegmentation(labels=labels, body=None, levels=measured, backend=backend,
                             anchors={"labels": f"from {backend}"})


def segment(ct: CTVolume, segmenter: str = "builtin", labels: str | Path | None = None,
            label_map: str = "auto", levels: tuple[str, ...] = REPORTED_LEVELS) -> SpineSegmentation:
    """Find and label the vertebrae of ``ct``.

    Parameters
    ----------
    ct : CTVolume
        Canonical HU volume.
    segmenter : str
        ``"builtin"``, ``"labels"`` or ``"totalsegmentator"``.
    labels : str or Path, optional
        Label map file, required by ``"labels"``; resampled onto the CT grid by
        nearest neighbour, so any orientation works.
    label_map : str
        Numbering of ``labels``: ``auto``, ``total``, ``verse``, ``vertebrae_pp``
        or ``vertebrae_pp_refined``.
    levels : tuple of str
        Levels to measure, cranial to caudal (default T11-L5; see :func:`parse_levels`).

    Returns
    -------
    SpineSegmentation
        Labels in VerSe numbering on ``ct``'s canonical grid.

    Raises
    ------
    UsageError
        Unknown segmenter, missing ``labels`` for the labels backend, or an
        undecidable label map.
    BackendUnavailableError
        TotalSegmentator or its weights missing.
    InvalidInputError
        Unreadable label file.
    NoSpineError
        No identifiable level; :class:`~ctbmd.errors.LabellingRefusedError` when
        the builtin labeller refuses to name the column.
    """
    if segmenter not in SEGMENTERS:
        raise UsageError(f"unknown segmenter {segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
    if segmenter == "builtin":
        return segment_builtin(ct, levels)
    if segmenter == "labels":
        if labels is None:
            raise UsageError("the labels segmenter needs a label map file")
        try:
            verse = to_verse(read_label_map(labels, ct), label_map)
        except UsageError as exc:  # the map's numbering cannot be told: name the file
            raise UsageError(exc.reason, labels) from None
        return _from_verse_labels(verse, "labels", str(labels), levels)
    from ctbmd.segment.totalseg import segment_totalsegmentator

    return _from_verse_labels(segment_totalsegmentator(ct), "totalsegmentator", ct.info.path, levels)


__all__ = ["MEASURABLE_LEVELS", "SEGMENTERS", "parse_levels", "segment", "segment_builtin"]
