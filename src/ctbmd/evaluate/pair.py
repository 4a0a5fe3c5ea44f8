"""Pairing: match predictions to the reference by patient (and vertebral level)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctbmd.classify import ACR_LEVELS, acr_category
from ctbmd.errors import InvalidInputError
from ctbmd.evaluate.read import Predictions, Reference, ReferenceKind

#: The split that holds every patient (the only one when no split column is given).
ALL_SPLITS = "all"
#: How many unmatched patient IDs an error names before it says "and N more".
MAX_NAMED_UNMATCHED = 5


@dataclass(frozen=True)
class Paired:
    """Matched prediction/reference values, ready for the metrics.

    ``level_*`` arrays have one entry per (patient, level) pair, shape
    ``(n_levels,)``; ``patient_*`` arrays one per patient, shape
    ``(n_patients,)``. BMD in mg/cm³; categories are names from
    :data:`ctbmd.evaluate.CATEGORIES`. ``kind`` is the reference kind.
    ``patient_split`` is each patient's split (:data:`ALL_SPLITS` without a
    split column).
    """

    kind: ReferenceKind
    level_patient: np.ndarray
    level_name: np.ndarray
    level_pred: np.ndarray
    level_ref: np.ndarray
    patient_id: np.ndarray
    patient_pred: np.ndarray
    patient_ref: np.ndarray  # mg/cm³ (qct) or NaN (dxa)
    patient_pred_category: np.ndarray
    patient_ref_category: np.ndarray
    patient_split: np.ndarray
    unmatched_reference: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _check_known(pred: Predictions, ref: Reference) -> set[str]:
    """The reference's patient IDs; an error naming the predicted patients that are not among them."""
    ref_ids = {lv.patient_id for lv in ref.levels} | {p.patient_id for p in ref.patients}
    pred_ids = {p.patient_id for p in pred.patients} | {lv.patient_id for lv in pred.levels}
    unknown = sorted(pred_ids - ref_ids)
    if unknown:
        n = MAX_NAMED_UNMATCHED
        more = f" and {len(unknown) - n} more" if len(unknown) > n else ""
        raise InvalidInputError(f"predicted patient {', '.join(repr(u) for u in unknown[:n])}{more} not in the "
                                f"reference {ref.path} (unmatched ID; see `mapping`)", pred.path)
    return ref_ids


def pair(pred: Predictions, ref: Reference) -> Paired:
    """Match predictions to the reference by ``patient_id`` (and level).

    The patient reference of a QCT table is the mean of the reference levels
    that the prediction used for the patient (its ``levels_used``, else
    L1-L4), so both sides average the same vertebrae.

    Parameters
    ----------
    pred : Predictions
    ref : Reference

    Returns
    -------
    Paired
        The patients in prediction order; ``unmatched_reference`` lists the
        reference patients without a prediction, ``notes`` the predicted
        patients left out (no reference at their levels).

    Raises
    ------
    InvalidInputError
        A predicted patient that is not in the reference (named), or no patient
        in common.
    """
    ref_ids = _check_known(pred, ref)
    splits = {**pred.splits, **ref.splits}
    notes = []
    lp, ln, lx, ly = [], [], [], []
    ref_level = {(lv.patient_id, lv.level): lv.bmd_mg_cm3 for lv in ref.levels}
    for lv in pred.levels:
        if (lv.patient_id, lv.level) in ref_level:
            lp.append(lv.patient_id)
            ln.append(lv.level)
            lx.append(lv.bmd_mg_cm3)
            ly.append(ref_level[(lv.patient_id, lv.level)])
    pid, px, py, pc, rc, sp = [], [], [], [], [], []
    ref_patient = {p.patient_id: p for p in ref.patients}
    for p in pred.patients:
        if ref.kind == "qct":
            own = {lv: ref_level[(p.patient_id, lv)] for lv in (p.levels_used or ACR_LEVELS)
                   if (p.patient_id, lv) in ref_level}
            if not own:
                notes.append(f"patient {p.patient_id}: no reference at the levels used ({'+'.join(p.levels_used)})")
                continue
            y = float(np.mean(list(own.values())))
            cat = acr_category(y)
        else:
            y, cat = math.nan, ref_patient[p.patient_id].category
        pid.append(p.patient_id)
        px.append(p.bmd_mg_cm3)
        py.append(y)
        pc.append(p.category)
        rc.append(cat)
        sp.append(splits.get(p.patient_id, ALL_SPLITS))
    if not pid:
        raise InvalidInputError("no patient in common between predictions and reference", pred.path)
    missing = tuple(sorted(ref_ids - set(pid)))
    return Paired(ref.kind, np.array(lp, object), np.array(ln, object), np.array(lx, float), np.array(ly, float),
                  np.array(pid, object), np.array(px, float), np.array(py, float), np.array(pc, object),
                  np.array(rc, object), np.array(sp, object), missing, tuple(notes))
