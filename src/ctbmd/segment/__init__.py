"""Stage 1: find and label the vertebrae (T11-L5).

Three backends behind :func:`segment`:

* ``builtin`` (default): classical image analysis, no weights
  (:mod:`ctbmd.segment.builtin`).
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
from ctbmd.segment.builtin import REPORTED_LEVELS, segment_builtin
from ctbmd.segment.labelmaps import to_verse
from ctbmd.types import VERSE_LABELS, CTVolume, SpineSegmentation

SEGMENTERS = ("builtin", "labels", "totalsegmentator")


def _from_verse_labels(labels: np.ndarray, backend: str, source: str) -> SpineSegmentation:
    present = set(np.unique(labels).tolist())
    levels = tuple(n for n in REPORTED_LEVELS if VERSE_LABELS[n] in present)
    if not levels:
        raise NoSpineError("no vertebra between T11 and L5 in the label map", source)
    return SpineSegmentation(labels=labels, body=None, levels=levels, backend=backend,
                             anchors={"labels": f"from {backend}"})


def segment(ct: CTVolume, segmenter: str = "builtin", labels: str | Path | None = None,
            label_map: str = "auto") -> SpineSegmentation:
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
        No identifiable level.
    """
    if segmenter not in SEGMENTERS:
        raise UsageError(f"unknown segmenter {segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
    if segmenter == "builtin":
        return segment_builtin(ct)
    if segmenter == "labels":
        if labels is None:
            raise UsageError("--segmenter labels needs --labels FILE")
        verse = to_verse(read_label_map(labels, ct), label_map)
        return _from_verse_labels(verse, "labels", str(labels))
    from ctbmd.segment.totalseg import segment_totalsegmentator

    return _from_verse_labels(segment_totalsegmentator(ct), "totalsegmentator", ct.info.path)


__all__ = ["SEGMENTERS", "segment", "segment_builtin"]
