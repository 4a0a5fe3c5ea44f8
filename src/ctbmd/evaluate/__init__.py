"""Evaluation: compare ctbmd (or any) BMD predictions with QCT or DXA references.

The tables follow what the field's papers report (e.g. Peng et al. 2024,
Li et al. 2024, see ``docs/BACKGROUND.md``):

* **agreement** per level and per patient (:class:`Agreement`): n, Pearson r
  with its p-value, r² (Pearson r squared), the coefficient of determination
  against the identity line (``r2_identity``), MAE, RMSE, bias (mean of
  prediction - reference), the SD of the differences and the Bland-Altman 95%
  limits of agreement (bias +- 1.96 SD; Bland & Altman, Lancet 1986, doi
  10.1016/S0140-6736(86)90837-8);
* **diagnosis** per patient (:class:`Diagnosis`): the 3-class confusion matrix
  (normal, osteopenia, osteoporosis), accuracy, per-class and macro precision,
  recall, F1 and specificity; the same for the binary osteoporosis split; ROC
  AUC for osteoporosis and for low BMD (osteopenia or osteoporosis), scored by
  the predicted BMD (lower = more likely);
* a seeded **bootstrap 95% CI** (percentile method, 2.5th-97.5th) for every
  figure, resampling patients with replacement so that the levels of one
  patient stay together (cluster bootstrap).

Every number comes from scikit-learn (``sklearn.metrics``), scipy.stats or a
numpy mean/SD; nothing is re-derived by hand.

Modules: :mod:`~ctbmd.evaluate.read` (references, predictions, result folders,
mappings), :mod:`~ctbmd.evaluate.pair` (matching by patient and level),
:mod:`~ctbmd.evaluate.metrics` (agreement, diagnosis, bootstrap, per split) and
:mod:`~ctbmd.evaluate.report` (markdown, plots, files). The names below are
re-exported here: ``from ctbmd.evaluate import evaluate``.

Reference kinds
---------------
``qct``
    Per-level volumetric BMD (``patient_id``, ``level``, ``bmd_mg_cm3``;
    K2HPO4- or CaHA-equivalent as the user's QCT reports it). The reference
    category is ACR-QCT (> 120 normal, 80-120 osteopenia, < 80 osteoporosis
    mg/cm³; ACR-SPR-SSR practice parameter for QCT, 2018) of the patient mean.
``dxa``
    Per-patient ``t_score`` and/or ``category``. The reference category is the
    given one, or WHO from the T-score (<= -2.5 osteoporosis, < -1 osteopenia;
    WHO Technical Report Series 843, 1994).

In both cases the predicted category is ACR-QCT of the predicted patient BMD
(mean of the levels used), so it can be compared with either reference.

Matching scans to patients
--------------------------
A prediction folder holds one ``result.json`` per scan (from ``ctbmd run``),
found recursively. Its patient is, in order: the ``patient_id`` column of a
mapping CSV (``ctbmd evaluate --map``, with a ``scan`` column holding the
folder's path relative to the prediction folder, its name, or the input path
recorded in ``result.json``); the DICOM PatientID stored in ``result.json``;
the name of the folder that holds ``result.json``. A prediction CSV carries
``patient_id`` (and ``level`` + ``bmd_mg_cm3`` per level, or ``bmd_mg_cm3``
per patient) itself.
"""

from ctbmd.evaluate.metrics import (MIN_BOOTSTRAP_PATIENTS, MIN_PAIRS, Agreement, BinaryDiagnosis, ClassScores,
                                    Diagnosis, agreement, binary_agreement, diagnosis, evaluate, figure_text)
from ctbmd.evaluate.pair import ALL_SPLITS, Paired, pair
from ctbmd.evaluate.read import (CATEGORIES, MAX_PLAUSIBLE_MG_CM3, MIN_PLAUSIBLE_MEDIAN_MG_CM3, CsvTable, LevelValue,
                                 PatientValue, Predictions, Reference, ReferenceKind, normalise_level, read_csv_table,
                                 read_mapping, read_predictions, read_reference, read_result_folder, require_columns)
from ctbmd.evaluate.report import markdown_table, write_evaluation, write_plots

__all__ = [
    "ALL_SPLITS", "CATEGORIES", "MAX_PLAUSIBLE_MG_CM3", "MIN_BOOTSTRAP_PATIENTS", "MIN_PAIRS",
    "MIN_PLAUSIBLE_MEDIAN_MG_CM3", "Agreement", "BinaryDiagnosis", "ClassScores", "CsvTable", "Diagnosis",
    "LevelValue", "Paired", "PatientValue", "Predictions", "Reference", "ReferenceKind", "agreement",
    "binary_agreement", "diagnosis", "evaluate", "figure_text", "markdown_table", "normalise_level", "pair",
    "read_csv_table", "read_mapping", "read_predictions", "read_reference", "read_result_folder",
    "require_columns", "write_evaluation", "write_plots",
]
