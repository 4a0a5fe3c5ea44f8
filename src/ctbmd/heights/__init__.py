"""Vertebral body heights without the posterior elements, and Genant's semi-quantitative grade.

Part of stage 2 (:mod:`ctbmd.roi`), which raises the ``suspected_fracture`` flag from
:func:`grade_level`. Method:

* the body without its posterior elements is the front run of the vertebra mask on each
  antero-posterior line (axis 1) of the mid-sagittal slab, in front of the spinal canal; the
  median over the slab's planes gives its sagittal profile (:func:`sagittal_profile`; for the
  builtin labeller, the bone the CT shows inside its label, :func:`ct_body`);
* along the column's local axis (its tilt from the neighbouring body centroids,
  :func:`column_axes`) the body's chords give the anterior and posterior heights at the walls (a
  line fitted across the depth) and the middle height (:func:`body_heights`);
* the anterior and middle heights are compared with the posterior height and with the
  neighbouring vertebrae, and all three with the neighbours (crush), for Genant's grade
  (:func:`genant_grade`; Genant et al., J Bone Miner Res 1993;8:1137, doi 10.1002/jbmr.5650080915):
  grade 1 from a 20% loss, 2 from 25%, 3 from 40%.

Modules: :mod:`ctbmd.heights.profile` (the sagittal profile and the heights of one body),
:mod:`ctbmd.heights.levels` (the labelled vertebrae of a scan, and the builtin labeller's body
from the CT) and :mod:`ctbmd.heights.grade` (Genant's grade). Every name is importable from
:mod:`ctbmd.heights`.

Arrays are in the canonical frame: axes toward patient left, posterior, superior; spacing in mm.
"""

from ctbmd.heights.grade import (CONFIRM_LOSS, CRUSH_NEIGHBOUR_SPREAD, CRUSH_SHAPE, FRACTURE_MIN_GRADE, GENANT_LOSS,
                                 MIN_HEIGHT_FRACTION, NORMAL_SHAPE, POSTERIOR_CAP, Deformity, GenantGrade,
                                 genant_grade, grade_level)
from ctbmd.heights.levels import (BODY_MIN_MM, BODY_OVERLAP, LABEL_REACH_MM, OTHER_LABEL_SHARE, crop_of, ct_body,
                                  level_heights, touches_edge)
from ctbmd.heights.profile import (BODY_GAP_MM, EDGE_FRACTION, HEIGHT_SLAB_MM, HEIGHT_STEP_MM, BodyHeights,
                                   SagittalProfile, body_heights, column_axes, sagittal_profile)

__all__ = ["BODY_GAP_MM", "BODY_MIN_MM", "BODY_OVERLAP", "CONFIRM_LOSS", "CRUSH_NEIGHBOUR_SPREAD", "CRUSH_SHAPE",
           "EDGE_FRACTION", "FRACTURE_MIN_GRADE", "GENANT_LOSS", "HEIGHT_SLAB_MM", "HEIGHT_STEP_MM", "LABEL_REACH_MM",
           "MIN_HEIGHT_FRACTION", "NORMAL_SHAPE", "OTHER_LABEL_SHARE", "POSTERIOR_CAP", "BodyHeights", "Deformity",
           "GenantGrade", "SagittalProfile", "body_heights", "column_axes", "crop_of", "ct_body", "genant_grade",
           "grade_level", "level_heights", "sagittal_profile", "touches_edge"]
