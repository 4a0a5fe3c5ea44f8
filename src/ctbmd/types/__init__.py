"""Typed dataclasses passed between the pipeline stages.

Coordinate conventions used everywhere in ctbmd
-----------------------------------------------
* **World frame**: DICOM patient coordinates, **LPS**, in mm: +x toward the
  patient's left, +y toward posterior, +z toward superior (head).
* **Canonical voxel frame**: every volume handed between stages is a NumPy array
  of shape ``(nx, ny, nz)`` indexed ``[i, j, k]`` whose axes point (as closely as
  the acquisition allows) toward L, P and S. It is the input reoriented with
  SimpleITK's ``DICOMOrient(image, "LPS")``; no resampling is involved, so voxel
  values are the input's values. ``affine_lps`` maps ``(i, j, k, 1)`` to LPS mm.
* Level names are ``"T11"``, ``"T12"``, ``"L1"`` ... ``"L5"``; label maps use the
  VerSe numbering (Löffler et al., Radiol Artif Intell 2020, doi
  10.1148/ryai.2020190138): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13.

The types live in three modules, re-exported here: :mod:`ctbmd.types.volume` (the CT and its grid),
:mod:`ctbmd.types.spine` (level names, the labelled spine) and :mod:`ctbmd.types.measure` (levels,
calibration, contrast phase, the patient, a model's values).
"""

from ctbmd.types.measure import (EXCLUDING_FLAGS, Calibration, CalibrationMethod, ContrastPhase, LevelMeasurement,
                                 LevelPrediction, ModelOutput, PatientClassification, PhaseName, PickhardtFlag, QcFlag,
                                 ReferenceTissue)
from ctbmd.types.spine import (LEVEL_ORDER, VERSE_LABELS, VERSE_NAMES, AnchorRecord, LabellingRecord,
                               SpineSegmentation, VertebraRecord, level_index)
from ctbmd.types.volume import CTVolume, Grid, ScanInfo

__all__ = ["EXCLUDING_FLAGS", "LEVEL_ORDER", "VERSE_LABELS", "VERSE_NAMES", "AnchorRecord", "CTVolume", "Calibration",
           "CalibrationMethod", "ContrastPhase", "Grid", "LabellingRecord", "LevelMeasurement", "LevelPrediction", "ModelOutput",
           "PatientClassification", "PhaseName", "PickhardtFlag", "QcFlag", "ReferenceTissue", "ScanInfo", "SpineSegmentation",
           "VertebraRecord", "level_index"]
