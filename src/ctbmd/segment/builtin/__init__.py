"""Built-in vertebra segmentation and labelling: no learned weights, no downloads.

The labeller finds every vertebra in view, from the cervicothoracic junction to
the sacrum, gathers the anatomical evidence of each and names the column as a
whole, or refuses with the reason. One module per step, each with its method
and sources:

1. :mod:`.grid` - resample the CT to a 2 mm working grid;
2. :mod:`.column` - track the spinal canal, straighten the column along it and
   follow the vertebral bodies (:mod:`.body`);
3. :mod:`.discs` - find the intervertebral discs (the chain of candidates,
   plain data: :mod:`.chain`);
4. :mod:`.segments` - cut the column into vertebrae and draw their masks;
5. :mod:`.evidence` - ribs (matched to vertebrae in order), lung, sacral alae, size;
6. :mod:`.scoring` - score every labelling (each offset, standard and transitional
   anatomy) from that evidence, as plain data;
7. :mod:`.naming` - name the column only when the best labelling is standard,
   clear of the runner-up, supported by an anchor in view, contradicted by none,
   and consistent level by level.

A column refused because a disc was missed (an end left unsplit, or a segment
as tall as two vertebrae) gets a second look with a disc added there
(:func:`_split_and_name`).
"""

from __future__ import annotations

import numpy as np

from ctbmd.errors import LabellingRefusedError, NoSpineError
from ctbmd.segment.builtin.column import find_column
from ctbmd.segment.builtin.discs import find_discs
from ctbmd.segment.builtin.evidence import ColumnEvidence, gather_evidence
from ctbmd.segment.builtin.grid import boxes_on_ct_grid, labels_to_ct_grid, to_working_grid
from ctbmd.segment.builtin.naming import (HEIGHT_RANGE, Naming, Observation, name_segments, relative_heights,
                                          unsplit_ends)
from ctbmd.segment.builtin.segments import SPINOUS_SLOPE, split_column, vertebra_masks
from ctbmd.types import (LEVEL_ORDER, VERSE_LABELS, AnchorRecord, CTVolume, LabellingRecord, SpineSegmentation,
                         VertebraRecord)

#: Levels measured by default (T11 to L5).
REPORTED_LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")
#: An open end segment with less bone than this fraction of a whole vertebra's is not drawn.
MIN_END_BONE = 0.5
#: Nor one shorter than this fraction of its whole neighbour: in a vertebra cut by the scan's
#: edge near mid-height, the arch in view is as much its neighbour's (posterior elements hang
#: over the vertebra below: Panjabi 1991/1992) as its own, and no trabecular ROI fits its body.
MIN_END_HEIGHT = 0.6
#: Further looks at a refused column, each adding one disc where one was missed
#: (:func:`_split_and_name`): enough for an end left unsplit over three vertebrae.
MAX_FILLED_DISCS = 3
#: Levels drawn into the label map when named (T1 to L5).
DRAWN_LEVELS = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))


def segment_builtin(ct: CTVolume, levels: tuple[str, ...] = REPORTED_LEVELS) -> SpineSegmentation:
    """Find, split and name the vertebrae of a CT with the built-in method.

    Parameters
    ----------
    ct : CTVolume
        HU volume in the canonical LPS frame.
    levels : tuple of str
        Levels to measure (``SpineSegmentation.levels``); every named level from
        T1 to L5 is drawn into ``labels`` regardless.

    Returns
    -------
    SpineSegmentation
        Whole-vertebra labels and body labels (VerSe numbering) on ``ct``'s grid,
        the measured levels in view, and the ``labelling`` record.

    Raises
    ------
    NoSpineError
        No spinal column or no disc found.
    LabellingRefusedError
        The column cannot be named with confidence (the reason names the
        conflicting evidence), or none of ``levels`` is in view.
    """
    source = ct.info.path
    work = to_working_grid(ct)
    col = find_column(work, source)
    segs, evidence, naming = _split_and_name(work, col, tuple(levels), source)
    record = _record(work, evidence, naming)
    if not naming.named:
        raise LabellingRefusedError(f"levels cannot be named: {naming.refusal}", source, labelling=record)

    values = {seg.index: VERSE_LABELS[n] for seg, n in zip(segs, naming.names) if n in DRAWN_LEVELS}
    ribbed = frozenset(values[e.segment.index] for e in evidence.vertebrae
                       if e.segment.index in values and e.rib > 0.0)
    slopes = {seg.index: SPINOUS_SLOPE["thoracic" if n.startswith(("T", "C")) else "lumbar"]
              for seg, n in zip(segs, naming.names) if n not in (None, "S")}
    vert_w, body_w = vertebra_masks(work, col, segs, values, ribbed, slopes)
    _drop_empty_ends(vert_w, body_w, segs, values)
    labels = labels_to_ct_grid(vert_w, work.grid, ct)
    body = labels_to_ct_grid(body_w, work.grid, ct)
    boxes = boxes_on_ct_grid(vert_w, work.grid, ct)
    present = set(boxes)
    measured = tuple(n for n in LEVEL_ORDER if n in levels and VERSE_LABELS[n] in present)
    named = [n for n in naming.names if n in DRAWN_LEVELS]
    if not measured:
        span = f"{named[-1]}-{named[0]}" if named else "no level from T1 to L5"
        raise LabellingRefusedError(
            f"named {span}, but none of the measured levels ({', '.join(levels)}) is in view; "
            "choose others with --levels", source, labelling=record)
    flags = {}
    for seg, n in zip(segs, naming.names):
        if n in measured:
            flags[n] = [] if seg.complete else ["partial"]
    anchors = {}
    for a in record.anchors:
        anchors[a.kind] = f"{a.named} ({'agrees' if a.agrees else 'disagrees'})"
    return SpineSegmentation(labels=labels, body=body, levels=measured, backend="builtin", level_flags=flags,
                             anchors=anchors, warnings=naming.warnings, labelling=record, known_boxes=boxes)


def _split_and_name(work, col, levels: tuple[str, ...], source: str | None):
    """Discs, segments, evidence and naming of a column, with a second look where a disc was missed.

    The strict disc chain (:func:`~.discs.find_discs`) can miss a disc where the
    column bends or the signal is faint. The naming then refuses: an end of the
    column is left unsplit (more than a vertebra past the last disc, and not the
    sacrum: :func:`~.naming.unsplit_ends`), or a segment of the best labelling is
    as tall as two vertebrae of its level (:func:`~.naming.relative_heights`).
    The chain is then given the strongest plausible candidate at that end or in
    that segment (``fill`` and ``split``) and the column is named again, one disc
    more per look, at most :data:`MAX_FILLED_DISCS` looks. A later look is kept
    only when it names the column, so scans named on the first look are
    unchanged, and a second look can only turn a refusal into names that pass
    every check of :mod:`.naming`; otherwise the first refusal stands.
    """
    def attempt(fill: dict[str, int], split: tuple[tuple[float, float], ...]):
        segs = split_column(col, find_discs(col, fill=fill, split=split))
        if len(segs) < 2:
            raise NoSpineError("levels cannot be identified: fewer than two vertebrae found along the column",
                               source)
        evidence = gather_evidence(work, col, segs)
        return segs, evidence, name_segments(observations(evidence), reported=levels)

    first = attempt({}, ())
    current, fill, split = first, {}, ()
    for _ in range(MAX_FILLED_DISCS):
        segs, evidence, naming = current
        if naming.named:
            return current
        obs = observations(evidence)
        ends = unsplit_ends(obs)
        names = naming.best.names if naming.best is not None else ()
        tall = tuple((segs[i].s_lo_mm, segs[i].s_hi_mm) for i, rel in relative_heights(obs, names).items()
                     if rel > HEIGHT_RANGE[1])
        if not ends and not tall:
            break
        fill = {end: fill.get(end, 0) + (end in ends) for end in ("below", "above")}
        split = split + tall
        previous = [(g.s_lo_mm, g.s_hi_mm) for g in segs]
        current = attempt(fill, split)
        if [(g.s_lo_mm, g.s_hi_mm) for g in current[0]] == previous:
            break  # no candidate where a disc was missed: looking again changes nothing
    return current if current[2].named else first


def observations(evidence: ColumnEvidence) -> tuple[Observation, ...]:
    """The naming input: one :class:`~.scoring.Observation` per segment, caudal to cranial."""
    return tuple(Observation(rib_left=e.rib_left, rib_right=e.rib_right, lung=e.lung, sacral=e.sacral,
                             width_mm=e.segment.width_mm, height_mm=e.segment.height_mm,
                             complete=e.segment.complete, closed_above=e.segment.closed_above,
                             rib_reach_mm=max((r for r in (e.rib_reach_left_mm, e.rib_reach_right_mm)
                                               if r is not None), default=None))
                 for e in evidence.vertebrae)


def _drop_empty_ends(vert_w: np.ndarray, body_w: np.ndarray, segs, values: dict[int, int]) -> None:
    """Erase an open end segment with too little of a vertebra in view.

    Past the last vertebra the scan may hold only soft tissue, or a vertebra cut
    by its edge: an end segment with less than :data:`MIN_END_BONE` of a whole
    vertebra's bone, or shorter than :data:`MIN_END_HEIGHT` of its whole
    neighbour, is not a level to report. In place.
    """
    counts = {seg.index: int((vert_w == values[seg.index]).sum()) for seg in segs if seg.index in values}
    whole = [counts[seg.index] for seg in segs if seg.complete and seg.index in counts]
    if not whole:
        return
    typical = float(np.median(whole))
    for n, seg in enumerate(segs):
        if seg.index not in counts or seg.complete:
            continue
        near = [segs[m] for m in (n - 1, n + 1) if 0 <= m < len(segs) and segs[m].complete]
        short = bool(near) and seg.height_mm < MIN_END_HEIGHT * near[0].height_mm
        if counts[seg.index] < MIN_END_BONE * typical or short:
            vert_w[vert_w == values[seg.index]] = 0
            body_w[body_w == values[seg.index]] = 0


def _record(work, evidence: ColumnEvidence, naming: Naming) -> LabellingRecord:
    """The ``labelling`` record of a named or refused column, cranial to caudal."""
    names = naming.names if naming.named else (naming.best.names if naming.best else naming.names)
    shown = naming.names if naming.named else tuple(None for _ in naming.names)
    verts = []
    for e, name in zip(evidence.vertebrae, shown):
        g = e.segment
        verts.append(VertebraRecord(
            name=name, centre_lps_mm=tuple(round(float(c), 1) for c in work.index_to_lps(g.centre_ijk)),
            height_mm=round(g.height_mm, 1), width_mm=round(g.width_mm, 1), complete=g.complete,
            rib_left=round(e.rib_left, 2), rib_right=round(e.rib_right, 2),
            rib_reach_left_mm=None if e.rib_reach_left_mm is None else round(e.rib_reach_left_mm, 1),
            rib_reach_right_mm=None if e.rib_reach_right_mm is None else round(e.rib_reach_right_mm, 1),
            lung=round(e.lung, 2), sacral=round(e.sacral, 2), ala_mm=None if e.ala_mm is None else round(e.ala_mm, 1)))
    anchors = tuple(AnchorRecord(kind=a.kind, implies=a.implies, named=names[a.segment], agrees=a.agrees)
                    for a in naming.anchors)
    runner = naming.runner_up
    return LabellingRecord(
        vertebrae=tuple(reversed(verts)), anchors=anchors,
        best=naming.best.describe() if naming.best else "none", runner_up=runner.describe() if runner else None,
        runner_up_names=tuple(reversed(runner.names)) if runner else None, margin=float(naming.margin),
        refusal=naming.refusal, overview=evidence.overview, overview_s_mm=evidence.overview_s_mm,
        segment_s_mm=tuple((e.segment.s_lo_mm, e.segment.s_hi_mm) for e in reversed(evidence.vertebrae)))


__all__ = ["DRAWN_LEVELS", "REPORTED_LEVELS", "segment_builtin"]
