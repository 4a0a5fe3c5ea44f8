"""What a BMD model learns and from which patients: settings, targets, tasks, splits and devices.

The training loop that uses them is :mod:`ctbmd.model.train` (which re-exports
every public name here, so ``from ctbmd.model.train import TrainConfig`` keeps
working).

Splits (:func:`patient_folds`)
------------------------------
* Patients marked ``test`` in the manifest, or a seeded ``test_fraction`` of
  them (:class:`sklearn.model_selection.GroupShuffleSplit`), are held out.
* The rest are split into ``folds`` folds **by patient**
  (:class:`sklearn.model_selection.StratifiedGroupKFold`, shuffled with the
  seed, stratified by the patient's reference category so every fold holds
  each class): all vertebrae of a patient are in one fold.
* Inside each fold's training patients, a seeded 15% of patients
  (``GroupShuffleSplit``) is the **early-stopping set**; the fold's own
  validation patients are never used to choose an epoch, so the out-of-fold
  predictions are honest.

Targets
-------
``bmd_mg_cm3`` (QCT): the network predicts the **residual** to the
calibration-only BMD of the same vertebra, in units of ``TARGET_SCALE_MG_CM3``
(20 mg/cm³); the prediction is ``baseline + 20 * output``. An untrained network
therefore reproduces the phantomless calibration, and training learns what the
calibration misses. ``t_score`` (DXA): the network predicts the standardised
T-score directly. With ``classify`` an extra 3-class head (ACR-QCT categories
of the target BMD, or WHO categories of the T-score) is trained with weight
:data:`ctbmd.model.train.CLASS_LOSS_WEIGHT`.

Tasks (``TrainConfig.task``): ``regression`` (the above); ``categories``, the
same with the 3-class head (``classify``); ``binary``, normal against low BMD as
Peng et al. 2024 trained it: the single output is the logit of "low BMD"
(reference below ``threshold``: :data:`BINARY_THRESHOLDS`, 120 mg/cm³ for QCT,
the ACR-QCT upper limit of osteopenia; -1.0 for a T-score, WHO), trained with
binary cross-entropy; the prediction is its probability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, WHO_OSTEOPENIA_T, WHO_OSTEOPOROSIS_T
from ctbmd.model.cohort import Samples
from ctbmd.model.errors import ModelSettingsError
from ctbmd.model.nets import Arch, Dims
from ctbmd.model.protocols import PROTOCOLS, ProtocolName

if TYPE_CHECKING:
    import torch

#: Scale of the residual a ``bmd_mg_cm3`` network predicts (mg/cm³ per unit of output).
TARGET_SCALE_MG_CM3 = 20.0
#: What a network is trained to give (see the module docstring).
Task = Literal["regression", "binary", "categories"]
TASKS: tuple[Task, ...] = get_args(Task)
#: Where to train: ``auto`` is CUDA when present, else the CPU.
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)
#: Default "low BMD" threshold of ``task="binary"``: below it is low. ACR-QCT 2018 (above 120 mg/cm³ is
#: normal) and WHO 1994 (a T-score of -1.0 or above is normal); other targets need ``threshold``.
BINARY_THRESHOLDS = {"bmd_mg_cm3": ACR_NORMAL_MG_CM3, "t_score": WHO_OSTEOPENIA_T}
#: Fraction of a fold's training patients held out to choose the epoch (early stopping).
EARLY_STOP_FRACTION = 0.15


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``ctbmd train``.

    Attributes
    ----------
    arch : Arch
        Backbone (:data:`ctbmd.model.nets.ARCHS`).
    dims : Dims
        Input mode (:data:`ctbmd.model.nets.DIMS`).
    folds : int
        Cross-validation folds (>= 2).
    test_fraction : float
        Fraction of patients held out as a test split when the manifest marks none.
    epochs, patience : int
        Maximum epochs; stop after ``patience`` epochs without a lower early-stopping loss.
    batch_size : int
    lr, weight_decay : float
        AdamW settings.
    classify : bool
        Add the 3-class head.
    augment : bool
        Use the MONAI augmentation.
    seed : int
    device : Device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    protocol : ProtocolName or None
        The seed study's protocol these settings came from (:mod:`ctbmd.model.protocols`).
    augment_copies : int
        Offline expansion: fixed augmented copies per training crop (0: none; see
        :mod:`ctbmd.model.train`).
    task : Task
        One of :data:`TASKS` (see the module docstring); ``categories`` sets ``classify``.
    threshold : float or None
        With ``task="binary"``: a reference below it is "low BMD" (default
        :data:`BINARY_THRESHOLDS` of the target).
    target : str or None
        The manifest column to train on (None: ``bmd_mg_cm3`` or ``t_score``, as
        the manifest gives; another name: a numeric per-patient column such as
        ``tbs``, see :func:`ctbmd.model.cohort.read_manifest`).
    muscle : bool
        Also read the axial muscle crop of each level with a second backbone
        (:mod:`ctbmd.model.crops`, :class:`~ctbmd.model.nets.BmdNet`).
    """

    arch: Arch = "densenet121"
    dims: Dims = "3d"
    folds: int = 5
    test_fraction: float = 0.0
    epochs: int = 60
    patience: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    classify: bool = False
    augment: bool = True
    seed: int = 0
    device: Device = "auto"
    target: str | None = None
    task: Task = "regression"
    threshold: float | None = None
    augment_copies: int = 0
    muscle: bool = False
    protocol: ProtocolName | None = None


@dataclass(frozen=True)
class Fold:
    """Indices into :class:`~ctbmd.model.cohort.Samples` for one fold.

    ``fit`` + ``stop`` = the fold's training patients (``stop`` chooses the
    epoch); ``validation`` = its out-of-fold patients.
    """

    fit: np.ndarray
    stop: np.ndarray
    validation: np.ndarray


@dataclass(frozen=True)
class Splits:
    """The patient split of a cohort (:func:`patient_folds`).

    Attributes
    ----------
    folds : list of Fold
        The cross-validation folds.
    test : numpy.ndarray
        Indices of the held-out test vertebrae (manifest ``test`` split or
        ``test_fraction``). External sites (split ``external``, ``external_n``)
        are in neither: only ``cv`` vertebrae enter the folds.
    """

    folds: list[Fold]
    test: np.ndarray


@dataclass(frozen=True)
class Normaliser:
    """Feature standardisation and target scaling of one trained member.

    Attributes
    ----------
    feature_mean, feature_sd : tuple of float
        Per feature, from the member's ``fit`` vertebrae (NaN features become 0
        after standardising).
    residual : bool
        Target = baseline + scale * output (BMD) or mean + scale * output (T-score).
    target_mean, target_scale : float
    binary_threshold : float or None
        For a binary member: the network output is the logit of "target below
        this"; :meth:`encode` gives 0/1 and :meth:`decode` the probability.
    """

    feature_mean: tuple[float, ...]
    feature_sd: tuple[float, ...]
    residual: bool
    target_mean: float
    target_scale: float
    binary_threshold: float | None = None

    def features(self, f: np.ndarray) -> np.ndarray:
        """Standardise ``(n, n_features)`` raw features."""
        z = (f - np.asarray(self.feature_mean, np.float32)) / np.asarray(self.feature_sd, np.float32)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)

    def encode(self, target: np.ndarray, baseline: np.ndarray) -> np.ndarray:
        """Target -> normalised network output (for a binary member: 1.0 below the threshold, else 0.0)."""
        if self.binary_threshold is not None:
            return (target < self.binary_threshold).astype(np.float32)
        centre = baseline if self.residual else self.target_mean
        return ((target - centre) / self.target_scale).astype(np.float32)

    def decode(self, output: np.ndarray, baseline: np.ndarray) -> np.ndarray:
        """Normalised network output -> target units (for a binary member: the probability of low BMD)."""
        if self.binary_threshold is not None:
            return (1.0 / (1.0 + np.exp(-output.astype(np.float64)))).astype(np.float32)
        centre = baseline if self.residual else self.target_mean
        return (centre + self.target_scale * output).astype(np.float32)


def fit_normaliser(samples: Samples, idx: np.ndarray, target: str, binary_threshold: float | None = None) -> Normaliser:
    """Normaliser from the vertebrae ``idx`` (``target``: ``bmd_mg_cm3``, ``t_score`` or another column;
    ``binary_threshold`` for a binary member)."""
    f = samples.features[idx]
    mean = np.nanmean(f, axis=0)
    sd = np.nanstd(f, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    sd = np.where(np.isfinite(sd) & (sd > 1e-6), sd, 1.0)
    if binary_threshold is not None:
        return Normaliser(tuple(map(float, mean)), tuple(map(float, sd)), False, 0.0, 1.0, float(binary_threshold))
    if target == "bmd_mg_cm3":
        return Normaliser(tuple(map(float, mean)), tuple(map(float, sd)), True, 0.0, TARGET_SCALE_MG_CM3)
    t = samples.target[idx]
    return Normaliser(tuple(map(float, mean)), tuple(map(float, sd)), False, float(t.mean()),
                      float(max(t.std(), 0.1)))


def categories(values: np.ndarray, target: str) -> np.ndarray:
    """Class index 0 normal, 1 osteopenia, 2 osteoporosis: ACR-QCT (120/80 mg/cm³) for ``bmd_mg_cm3``,
    else WHO (-1/-2.5, for ``t_score``)."""
    if target == "bmd_mg_cm3":
        return np.where(values < ACR_OSTEOPOROSIS_MG_CM3, 2, np.where(values <= ACR_NORMAL_MG_CM3, 1, 0))
    return np.where(values <= WHO_OSTEOPOROSIS_T, 2, np.where(values < WHO_OSTEOPENIA_T, 1, 0))


def _strata(samples: Samples, cv: np.ndarray, target: str, n_folds: int) -> np.ndarray:
    """Stratum of each ``cv`` vertebra: its patient's category (of the patient's mean target), or the tertile
    of a per-patient target without categories (TBS); all 0 when a stratum has fewer than ``n_folds`` vertebrae."""
    patients = samples.patient[cv]
    mean = {p: samples.target[cv][patients == p].mean() for p in set(patients)}
    values = np.array([mean[p] for p in patients])
    if target in ("bmd_mg_cm3", "t_score"):
        strata = categories(values, target)
    else:  # another per-patient target (TBS): its tertiles
        strata = np.digitize(values, np.quantile(list(mean.values()), [1 / 3, 2 / 3])).astype(int)
    counts = np.bincount(strata, minlength=3)
    if (counts[counts > 0] < n_folds).any():
        strata = np.zeros_like(strata)
    return strata


def patient_folds(samples: Samples, n_folds: int, seed: int, target: str,
                  test_fraction: float = 0.0) -> Splits:
    """Patient-grouped, category-stratified, seeded folds (see the module docstring).

    Returns
    -------
    Splits
        The folds and the held-out test vertebrae.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        Fewer cross-validation patients than ``2 * n_folds``, or ``n_folds < 2``
        (a :class:`ValueError` too).
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    idx = np.arange(len(samples))
    test = idx[samples.split == "test"]
    cv = idx[samples.split == "cv"]
    if not len(test) and test_fraction > 0:
        gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        keep, held = next(gss.split(cv, groups=samples.patient[cv]))
        cv, test = cv[keep], cv[held]
    patients = samples.patient[cv]
    if n_folds < 2 or len(set(patients)) < 2 * n_folds:
        raise ModelSettingsError(f"{len(set(patients))} cross-validation patients are too few for {n_folds} folds "
                                 f"(need at least {2 * n_folds})")
    # stratify by the patient's category (of its mean target), repeated on each of its vertebrae
    strata = _strata(samples, cv, target, n_folds)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (tr, va) in enumerate(skf.split(cv, strata, groups=patients)):
        gss = GroupShuffleSplit(n_splits=1, test_size=EARLY_STOP_FRACTION, random_state=seed * 1000 + k)
        fit, stop = next(gss.split(tr, groups=patients[tr]))
        folds.append(Fold(fit=cv[tr[fit]], stop=cv[tr[stop]], validation=cv[va]))
    return Splits(folds=folds, test=test)


def resolve_device(name: Device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        ``cuda`` asked for on a machine without CUDA, or an unknown name (a
        :class:`ValueError` too).
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelSettingsError("`device` cuda: no CUDA device is available here (use `device` cpu)")
    if name not in ("cpu", "cuda"):
        raise ModelSettingsError(f"`device` must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def binary_threshold(cfg: TrainConfig, target: str) -> float:
    """The "low BMD" threshold of a binary task: ``cfg.threshold``, else the protocol's cut-off for this
    target (:attr:`ctbmd.model.protocols.Protocol.thresholds`, Huang 2025's osteoporosis), else
    :data:`BINARY_THRESHOLDS`.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        A target without a default threshold (such as ``tbs``) and no ``cfg.threshold``
        (a :class:`ValueError` too).
    """
    if cfg.threshold is not None:
        return float(cfg.threshold)
    if cfg.protocol is not None:
        if target in PROTOCOLS[cfg.protocol].thresholds:
            return float(PROTOCOLS[cfg.protocol].thresholds[target])
    if target not in BINARY_THRESHOLDS:
        raise ModelSettingsError(f"`task` binary with a {target} target needs `threshold` (below it is 'low')")
    return BINARY_THRESHOLDS[target]


#: TrainConfig fields a resumed run may change: how long to train, and where.
RESUMABLE_CHANGES = ("epochs", "patience", "device")


def resume_mismatch(saved: dict | None, cfg: TrainConfig) -> list[str]:
    """The settings of ``cfg`` that differ from an interrupted run's ``saved`` config (``asdict`` of its
    TrainConfig; None for a checkpoint that has none), leaving out :data:`RESUMABLE_CHANGES`."""
    now = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    saved = saved or {}
    return sorted(k for k, v in now.items() if saved.get(k) != (list(v) if isinstance(v, tuple) else v))
