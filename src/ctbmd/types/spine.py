"""Level names and the labelled spine: VerSe numbering, :class:`SpineSegmentation` and the labelling evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np


#: VerSe label number for each level name (VerSe 2019/2020 numbering).
VERSE_LABELS: dict[str, int] = {
    **{f"C{i}": i for i in range(1, 8)},
    **{f"T{i}": 7 + i for i in range(1, 13)},
    **{f"L{i}": 19 + i for i in range(1, 7)},
    "T13": 28,
}
#: Inverse of :data:`VERSE_LABELS`.
VERSE_NAMES: dict[int, str] = {v: k for k, v in VERSE_LABELS.items()}
#: Levels ordered from cranial to caudal (T13 and L6 are transitional and sit
#: between T12/L1 and after L5 respectively).
LEVEL_ORDER: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["T13"]
    + [f"L{i}" for i in range(1, 7)]
)



def level_index(name: str) -> int:
    """Return the cranio-caudal rank of a level name (``"T12"`` < ``"L1"``).

    Raises
    ------
    KeyError
        If ``name`` is not a vertebral level name known to VerSe.
    """
    return LEVEL_ORDER.index(name)



@dataclass(frozen=True)
class VertebraRecord:
    """What the builtin labeller saw at one vertebra (one segment of the column).

    Attributes
    ----------
    name : str or None
        Level name given (``"S"`` for the sacrum), None when unnamed or refused.
    centre_lps_mm : tuple of float
        Body centre at mid-height, LPS mm.
    height_mm, width_mm : float
        Disc-to-disc height along the canal and body width, mm.
    complete : bool
        Whether discs bound it on both sides (False: cut by the scan's edge or
        the end of the column).
    rib_left, rib_right : float
        Confidence (0-1) that a rib articulates with it on that side.
    rib_reach_left_mm, rib_reach_right_mm : float or None
        Lateral reach of that rib from the canal line, mm.
    lung : float
        Fraction (0-1) of aerated lung beside the body.
    sacral : float
        Confidence (0-1) of sacral alae in its upper part.
    ala_mm : float or None
        Shorter lateral reach of body-level bone below its upper disc, mm.
    """

    name: str | None
    centre_lps_mm: tuple[float, float, float]
    height_mm: float
    width_mm: float
    complete: bool
    rib_left: float
    rib_right: float
    rib_reach_left_mm: float | None
    rib_reach_right_mm: float | None
    lung: float
    sacral: float
    ala_mm: float | None


@dataclass(frozen=True)
class AnchorRecord:
    """An anatomical anchor in view: ``kind`` (``sacrum``, ``lowest_rib``, ``first_rib``), the name it
    implies for its vertebra in standard anatomy, the name given there, and whether they agree."""

    kind: Literal["sacrum", "lowest_rib", "first_rib"]
    implies: str
    named: str | None
    agrees: bool


@dataclass(frozen=True)
class LabellingRecord:
    """How the builtin labeller named the column (``result.json`` ``labelling``).

    Attributes
    ----------
    vertebrae : tuple of VertebraRecord
        Every vertebra found along the column, cranial to caudal.
    anchors : tuple of AnchorRecord
        Anchors in view.
    best : str
        The chosen labelling, e.g. ``"T10-L5 over the sacrum (12 rib pairs, 5 lumbar)"``.
    runner_up : str or None
        The best labelling that names a measured level differently.
    runner_up_names : tuple of str or None
        Its names, cranial to caudal, aligned with ``vertebrae``.
    margin : float
        Log-likelihood margin of ``best`` over ``runner_up`` (inf without one).
    refusal : str or None
        Why no names were given (then the run stops with exit code 4).
    overview : numpy.ndarray or None
        float32 ``(nu, ns)``: a coronal maximum-intensity view of the straightened
        column (u -110..110 mm by arc length, 2 mm steps, caudal row first), for the report.
    overview_s_mm : numpy.ndarray or None
        Arc length of each ``overview`` row, mm.
    segment_s_mm : tuple of tuple of float
        ``(s_lo, s_hi)`` of each vertebra on the overview's arc length, cranial to caudal.
    """

    vertebrae: tuple[VertebraRecord, ...]
    anchors: tuple[AnchorRecord, ...]
    best: str
    runner_up: str | None
    runner_up_names: tuple[str | None, ...] | None
    margin: float
    refusal: str | None = None
    overview: np.ndarray | None = None
    overview_s_mm: np.ndarray | None = None
    segment_s_mm: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class SpineSegmentation:
    """Labelled vertebrae on a :class:`CTVolume`'s canonical grid.

    Attributes
    ----------
    labels : numpy.ndarray
        uint8, shape ``(nx, ny, nz)`` of the CT; whole vertebra (body and posterior
        arch) in VerSe numbering, 0 = background. It may hold more levels than
        ``levels`` (the builtin labeller draws every level it names, T1-L5).
    body : numpy.ndarray or None
        Same shape and numbering, vertebral body only (no posterior elements),
        when the backend provides it; otherwise the ROI stage derives it.
    levels : tuple of str
        Levels to measure, present in ``labels``, cranial to caudal.
    backend : str
        ``"builtin"``, ``"labels"`` or ``"totalsegmentator"``.
    level_flags : dict
        Level name -> flags raised by the segmenter (e.g. ``"partial"``).
    anchors : dict
        How the labels were anchored (``"sacrum"``, ``"lowest_rib"``, ``"first_rib"``,
        ``"labels"``), for the report.
    warnings : tuple of str
        Patient-level remarks, e.g. short T12 ribs.
    labelling : LabellingRecord or None
        The builtin labeller's evidence and decision; None for label maps.
    known_boxes : dict or None
        The bounding boxes of ``labels`` (as :attr:`boxes`) when the segmenter
        already knows them (the builtin labeller maps them from its working
        grid); None to find them from ``labels``. They must describe ``labels``:
        give None when making a segmentation with other labels.
    """

    labels: np.ndarray
    body: np.ndarray | None
    levels: tuple[str, ...]
    backend: str
    level_flags: dict[str, list[str]] = field(default_factory=dict)
    anchors: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    labelling: LabellingRecord | None = None
    known_boxes: dict[int, tuple[slice, ...]] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def boxes(self) -> dict[int, tuple[slice, ...]]:
        """Bounding box (one slice per axis) of each label value in ``labels``, found once.

        See :func:`ctbmd.masks.label_boxes`; the stages after segmentation look
        at each level inside its box instead of scanning the whole volume. The
        boxes are ``known_boxes`` when given, otherwise found on first use and
        cached, so ``labels`` must not be changed after the segmentation is made.
        """
        if self.known_boxes is not None:
            return dict(self.known_boxes)
        from ctbmd.masks import label_boxes

        return label_boxes(self.labels)
