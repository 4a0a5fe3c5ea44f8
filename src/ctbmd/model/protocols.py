"""The seed studies' training protocols as presets of ``ctbmd train --protocol NAME``.

Each :class:`Protocol` sets the architecture, input mode, task, augmentation and
splitting of one published study. Its ``fixed`` settings define the protocol
(Yasaka's axial slices, seed 002's sagittal slices): a ``ctbmd train`` option
that contradicts one is refused. Its ``defaults`` are the paper's choices that a
user may change (``--folds``, ``--epochs``, ...): options given beside the
preset override them, and ``config.json`` records the protocol and the settings
that resulted. ``published`` holds the paper's headline figures, which
``benchmarks/seed_protocols.py`` prints beside its own.

Sources (abstracts in ``../shared/seeds``):

* ``li2024``: Li J, Zhang P, Xu J, et al. Prediction of BMD from CT images
  with a deep learning model. doi:10.1159/000542396. 801 subjects, 2080
  vertebrae T11-L4, QCT reference; segmentation then BMD; random
  train/validation/test split.
* ``peng2024``: Peng et al. 2024 (seed 001), opportunistic CT osteoporosis
  screening with a DenseNet: a binary (normal/low BMD) classifier and a BMD
  regressor, QCT reference, 199 cases with five-fold cross-validation plus an
  independent test set of 42 cases from other scanners.
* ``jcat2023``: seed 002 (J Comput Assist Tomogr 2023), ResNet50 on sagittal
  vertebral images of L1-L4 from multivendor CT, DXA BMD and TBS; 280/70/52
  patients for training, validation and test.
* ``yasaka2020``: Yasaka K, Akai H, Kunimatsu A, et al. Prediction of BMD from
  CT: application of deep learning with a CNN. Eur Radiol 2020;30:3549-3557,
  doi:10.1007/s00330-020-06677-0. Axial CT slices, a CNN, 60-fold
  augmentation (noise, parallel shift, rotation), internal and external
  validation against DXA.
* ``huang2025``: seed 004 (2025), DenseNet121 on unenhanced chest CT images of
  the vertebral body and skeletal muscle, DXA, one training and three external
  test hospitals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ctbmd.classify import ACR_OSTEOPOROSIS_MG_CM3, T_SCORE_STEP, WHO_OSTEOPOROSIS_T
from ctbmd.model.errors import ModelSettingsError

#: Names of the protocols (the keys of :data:`PROTOCOLS`, in the same order).
ProtocolName = Literal["li2024", "peng2024", "jcat2023", "yasaka2020", "huang2025"]


@dataclass(frozen=True)
class Protocol:
    """One study's training protocol.

    Attributes
    ----------
    name : ProtocolName
    study : str
        Authors, year and DOI (or seed file).
    fixed : dict
        :class:`~ctbmd.model.targets.TrainConfig` fields that define the protocol; an
        option that sets one of them to another value is refused.
    defaults : dict
        TrainConfig fields the paper chose and a user may override.
    needs : tuple of str
        Inputs the protocol needs that this version may lack (``"muscle"``).
    thresholds : dict
        For a binary task without ``--threshold``: the paper's cut-off by target
        (``t_score``, ``bmd_mg_cm3``), used instead of
        :data:`ctbmd.model.targets.BINARY_THRESHOLDS`.
    published : dict
        The paper's figures, by name (``"r2"``, ``"auc_internal"``, ...).
    notes : str
        How ctbmd's preset differs from the paper.
    """

    name: ProtocolName
    study: str
    fixed: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    thresholds: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    notes: str = ""


PROTOCOLS: dict[ProtocolName, Protocol] = {p.name: p for p in (
    Protocol("li2024", "Li et al. 2024, doi:10.1159/000542396 (seed 000)",
             fixed={"dims": "3d", "task": "regression"},
             defaults={"arch": "densenet121", "test_fraction": 0.2, "folds": 5},
             published={"r2": (0.95, 0.97), "accuracy": (0.88, 0.91)},
             notes="3-D crops of each vertebral body after segmentation, QCT target; the paper's validation set "
                   "becomes cross-validation with early stopping, its random test split --test-fraction 0.2."),
    Protocol("peng2024", "Peng et al. 2024 (seed 001)",
             fixed={"dims": "3d"},
             defaults={"arch": "densenet121", "task": "regression", "folds": 5},
             published={"auc_internal": 0.974, "auc_external": 0.938, "mae_internal": 8.52, "mae_external": 13.89,
                        "rmse_internal": 10.80, "rmse_external": 20.36, "f1_internal_min": 0.91},
             notes="The regressor by default; --task binary gives the classifier. The independent test set is the "
                   "manifest's external split."),
    Protocol("jcat2023", "J Comput Assist Tomogr 2023 (seed 002)",
             fixed={"dims": "sagittal"},
             defaults={"arch": "resnet50", "task": "regression", "folds": 5},
             published={"r_bmd": 0.81},
             notes="Mid-sagittal slices through each vertebral body; --target tbs trains the TBS model."),
    Protocol("yasaka2020", "Yasaka et al., Eur Radiol 2020, doi:10.1007/s00330-020-06677-0 (seed 003)",
             fixed={"dims": "2d"},
             defaults={"arch": "densenet_small", "task": "regression", "augment_copies": 60, "augment": False,
                       "folds": 5},
             published={"r_internal": 0.852, "r_external": 0.840, "auc_internal": 0.965, "auc_external": 0.970},
             notes="Axial slices; Yasaka's own small CNN is stood in for by densenet_small; 60 offline copies and, "
                   "as in the paper, no on-the-fly augmentation (--augment-copies and --augment override)."),
    Protocol("huang2025", "Huang et al. 2025 (seed 004)",
             fixed={"dims": "2d", "muscle": True},
             defaults={"arch": "densenet121", "task": "binary", "folds": 5},
             needs=("muscle",),
             thresholds={"t_score": round(WHO_OSTEOPOROSIS_T + T_SCORE_STEP / 2, 2), "bmd_mg_cm3": ACR_OSTEOPOROSIS_MG_CM3},
             published={"auc": (0.827, 0.865), "f1_mean_external": 0.865},
             notes="Osteoporosis against the rest: a T-score of -2.5 or lower (coded as below -2.45, since "
                   "T-scores have one decimal; WHO), or for a QCT target below 80 mg/cm³ (ACR-QCT), from the "
                   "axial vertebral body and the muscle crop (--muscle); the manifest's external sites are the "
                   "three external test sets."),
)}

#: Inputs this version can give a network (a protocol needing another one is refused).
AVAILABLE_INPUTS: tuple[str, ...] = ("muscle",)


def resolve(name: ProtocolName, given: dict) -> dict:
    """The TrainConfig fields of protocol ``name`` with the options ``given`` on the command line.

    Parameters
    ----------
    name : ProtocolName
        A key of :data:`PROTOCOLS`.
    given : dict
        TrainConfig fields the user set explicitly.

    Returns
    -------
    dict
        ``defaults`` overridden by ``given``, then ``fixed``.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        Unknown protocol, ``given`` contradicts a fixed setting, or the protocol
        needs an input this version lacks; the message says which (a
        :class:`ValueError` too).
    """
    if name not in PROTOCOLS:
        raise ModelSettingsError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    missing = [n for n in p.needs if n not in AVAILABLE_INPUTS]
    if missing:
        raise ModelSettingsError(f"protocol {name} needs the {', '.join(missing)} input, which this version of ctbmd "
                         "does not have yet")
    clash = {k: v for k, v in given.items() if k in p.fixed and v != p.fixed[k]}
    if clash:
        k, v = next(iter(clash.items()))
        raise ModelSettingsError(f"protocol {name} cannot take `{k}` {v}: its {k} is {p.fixed[k]} "
                         f"({p.study})")
    return {**p.defaults, **given, **p.fixed}
