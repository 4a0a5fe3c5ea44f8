"""Deep-learning BMD models: crops, cohort, networks, training and prediction.

Stages (one module each):

* :mod:`ctbmd.model.crops`: isotropic vertebral-body crops and scan features
  from a ``ctbmd run`` analysis;
* :mod:`ctbmd.model.cohort`: the manifest, the crop cache and the sample table;
* :mod:`ctbmd.model.nets`: MONAI backbones (DenseNet-121 by default) with a
  feature head;
* :mod:`ctbmd.model.targets`: the training settings, targets, tasks,
  patient-grouped seeded folds and devices;
* :mod:`ctbmd.model.train`: the training loop and prediction;
* :mod:`ctbmd.model.evaluation`: the out-of-fold evaluation and summary;
* :mod:`ctbmd.model.workflow`: ``ctbmd train`` end to end;
* :mod:`ctbmd.model.store`: the model folder, :func:`load_model` and prediction.

Bad settings raise :class:`ctbmd.model.errors.ModelSettingsError` (a
:class:`ctbmd.errors.UsageError`); bad input files
:class:`ctbmd.errors.InvalidInputError`.

PyTorch and MONAI are needed only here (``pip install torch==2.13.0`` first,
then ``pip install 'ctbmd[dl]'``); the rest of ctbmd does not import them.
"""

from ctbmd.model.crops import CropSpec, ScanCrops, VertebraCrop, extract_crops

__all__ = ["CropSpec", "ScanCrops", "VertebraCrop", "extract_crops"]
