"""Training: patient-grouped k-fold cross-validation with early stopping.

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
``CLASS_LOSS_WEIGHT``.

Tasks (``TrainConfig.task``): ``regression`` (the above); ``categories``, the
same with the 3-class head (``classify``); ``binary``, normal against low BMD as
Peng et al. 2024 trained it: the single output is the logit of "low BMD"
(reference below ``threshold``: :data:`BINARY_THRESHOLDS`, 120 mg/cm³ for QCT,
the ACR-QCT upper limit of osteopenia; -1.0 for a T-score, WHO), trained with
binary cross-entropy; the prediction is its probability.

Loss: smooth L1 (Huber, beta 1) on the normalised target. Optimiser: AdamW
(Loshchilov & Hutter, ICLR 2019). Augmentation (training only, MONAI):
``RandAffine`` (rotation up to 10 degrees about each axis, shift up to 2
voxels, scale +-5%), ``RandGaussianNoise`` (SD 0.02 of the normalised
intensity, about 15 HU), ``RandShiftIntensity`` per channel (up to 0.03, about
20 HU of HU jitter).

Offline expansion (``augment_copies``, Yasaka et al. 2020, who expanded each
training image 60-fold by noise, parallel shift and rotation): every training
crop gets ``augment_copies`` fixed copies (:func:`augmented_copy`: rotation up
to 15 degrees about the cranio-caudal axis, a parallel shift up to 3 voxels in
plane, Gaussian noise of SD 0.03; for the axial 2-D modes in 2-D on the planes
the network reads), made from a seed of (seed, crop, copy) so each copy is the
same in every epoch; they are generated when a batch needs
them instead of being stored. Copies join the fit set only, never early
stopping, validation, test or external sets; the on-the-fly augmentation
above still applies on top, unless ``augment`` is False (the ``yasaka2020``
preset, as the paper used the offline expansion alone).

Reproducibility: the randomness of epoch ``e`` of member ``m`` (shuffling,
augmentation, dropout) is seeded from ``(seed, m, e)``, so the same seed gives
the same split and the same losses, and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, WHO_OSTEOPENIA_T, WHO_OSTEOPOROSIS_T
from ctbmd.model.cohort import Samples
from ctbmd.model.nets import BmdNet

TARGET_SCALE_MG_CM3 = 20.0
TASKS = ("regression", "binary", "categories")
#: Default "low BMD" threshold of ``task="binary"``: below it is low. ACR-QCT 2018 (above 120 mg/cm³ is
#: normal) and WHO 1994 (a T-score of -1.0 or above is normal); other targets need ``threshold``.
BINARY_THRESHOLDS = {"bmd_mg_cm3": ACR_NORMAL_MG_CM3, "t_score": WHO_OSTEOPENIA_T}
CLASS_LOSS_WEIGHT = 0.2
EARLY_STOP_FRACTION = 0.15


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``ctbmd train``.

    Attributes
    ----------
    arch, dims : str
        Backbone and input mode (:data:`ctbmd.model.nets.ARCHS`, :data:`~ctbmd.model.nets.DIMS`).
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
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    protocol : str or None
        The seed study's protocol these settings came from (:mod:`ctbmd.model.protocols`).
    augment_copies : int
        Offline expansion: fixed augmented copies per training crop (0: none; see the module docstring).
    task : str
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

    arch: str = "densenet121"
    dims: str = "3d"
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
    device: str = "auto"
    target: str | None = None
    task: str = "regression"
    threshold: float | None = None
    augment_copies: int = 0
    muscle: bool = False
    protocol: str | None = None


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
    """Class index 0 normal, 1 osteopenia, 2 osteoporosis: ACR-QCT (120/80 mg/cm³) or WHO (-1/-2.5)."""
    if target == "bmd_mg_cm3":
        return np.where(values < ACR_OSTEOPOROSIS_MG_CM3, 2, np.where(values <= ACR_NORMAL_MG_CM3, 1, 0))
    return np.where(values <= WHO_OSTEOPOROSIS_T, 2, np.where(values < WHO_OSTEOPENIA_T, 1, 0))


def patient_folds(samples: Samples, n_folds: int, seed: int, target: str,
                  test_fraction: float = 0.0) -> tuple[list[Fold], np.ndarray]:
    """Patient-grouped, category-stratified, seeded folds (see the module docstring).

    Returns
    -------
    folds : list of Fold
    test : numpy.ndarray
        Indices of the held-out test vertebrae (manifest ``test`` split or
        ``test_fraction``). External sites (split ``external``, ``external_n``)
        are in neither: only ``cv`` vertebrae enter the folds.

    Raises
    ------
    ValueError
        Fewer cross-validation patients than ``2 * n_folds``, or ``n_folds < 2``.
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
        raise ValueError(f"{len(set(patients))} cross-validation patients are too few for {n_folds} folds "
                         f"(need at least {2 * n_folds})")
    # stratify by the patient's category (of its mean target), repeated on each of its vertebrae
    mean = {p: samples.target[cv][patients == p].mean() for p in set(patients)}
    values = np.array([mean[p] for p in patients])
    if target in ("bmd_mg_cm3", "t_score"):
        strata = categories(values, target)
    else:  # another per-patient target (TBS): its tertiles
        strata = np.digitize(values, np.quantile(list(mean.values()), [1 / 3, 2 / 3])).astype(int)
    counts = np.bincount(strata, minlength=3)
    if (counts[counts > 0] < n_folds).any():
        strata = np.zeros_like(strata)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (tr, va) in enumerate(skf.split(cv, strata, groups=patients)):
        gss = GroupShuffleSplit(n_splits=1, test_size=EARLY_STOP_FRACTION, random_state=seed * 1000 + k)
        fit, stop = next(gss.split(tr, groups=patients[tr]))
        folds.append(Fold(fit=cv[tr[fit]], stop=cv[tr[stop]], validation=cv[va]))
    return folds, test


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises
    ------
    ValueError
        ``cuda`` asked for on a machine without CUDA, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _augmenter(seed: int):
    from monai.transforms import Compose, RandAffine, RandGaussianNoise, RandShiftIntensity

    aug = Compose([
        RandAffine(prob=0.8, rotate_range=(math.radians(10),) * 3, translate_range=(2, 2, 2), scale_range=(0.05,) * 3,
                   padding_mode="border", mode="bilinear"),
        RandGaussianNoise(prob=0.5, std=0.02),
        RandShiftIntensity(offsets=0.03, prob=0.5, channel_wise=True),
    ])
    aug.set_random_state(seed=seed)
    return aug


def augmented_copy(image: np.ndarray, seed: int, crop: int, copy: int, dims: str = "3d") -> np.ndarray:
    """Copy ``copy`` (>= 1) of training crop ``crop``: the Yasaka 2020 expansion (see the module docstring).

    ``image`` is float32 ``(c, L, P, S)``; the result has the same shape and is
    the same for the same (seed, crop, copy, dims). The transform (a rotation
    about the cranio-caudal axis, a shift in the axial plane, noise) moves
    nothing along S, so for the axial modes ``2d`` and ``2.5d`` it is applied in
    2-D to the central axial planes the network reads (1-2 ms a copy instead of about 5 ms);
    the other planes are returned unchanged.
    """
    from monai.transforms import Compose, RandAffine, RandGaussianNoise

    state = int(np.random.SeedSequence([seed, crop, copy]).generate_state(1)[0] % (2 ** 31))
    if dims in ("2d", "2.5d"):
        from ctbmd.model.nets import SLICES_25D

        half = 0 if dims == "2d" else SLICES_25D // 2
        mid = image.shape[-1] // 2
        planes = np.moveaxis(image[..., mid - half: mid + half + 1], -1, 1)  # (c, k, L, P)
        flat = planes.reshape(-1, *planes.shape[2:])  # (c * k, L, P): one 2-D transform for all of them
        aug = Compose([RandAffine(prob=1.0, rotate_range=(math.radians(15),), translate_range=(3, 3),
                                  padding_mode="border", mode="bilinear"),
                       RandGaussianNoise(prob=1.0, std=0.03)])
        aug.set_random_state(seed=state)
        moved = np.asarray(aug(flat), dtype=np.float32).reshape(planes.shape)
        out = image.copy()
        out[..., mid - half: mid + half + 1] = np.moveaxis(moved, 1, -1)
        return out
    aug = Compose([
        RandAffine(prob=1.0, rotate_range=(0.0, 0.0, math.radians(15)), translate_range=(3, 3, 0),
                   padding_mode="border", mode="bilinear"),
        RandGaussianNoise(prob=1.0, std=0.03),
    ])
    aug.set_random_state(seed=state)
    return np.asarray(aug(image), dtype=np.float32)


def binary_threshold(cfg: TrainConfig, target: str) -> float:
    """The "low BMD" threshold of a binary task: ``cfg.threshold``, else the protocol's cut-off for this
    target (:attr:`ctbmd.model.protocols.Protocol.thresholds`, Huang 2025's osteoporosis), else
    :data:`BINARY_THRESHOLDS`.

    Raises
    ------
    ValueError
        A target without a default threshold (such as ``tbs``) and no ``cfg.threshold``.
    """
    if cfg.threshold is not None:
        return float(cfg.threshold)
    if cfg.protocol is not None:
        from ctbmd.model.protocols import PROTOCOLS

        if target in PROTOCOLS[cfg.protocol].thresholds:
            return float(PROTOCOLS[cfg.protocol].thresholds[target])
    if target not in BINARY_THRESHOLDS:
        raise ValueError(f"--task binary with a {target} target needs --threshold (below it is 'low')")
    return BINARY_THRESHOLDS[target]


def build_net(cfg: TrainConfig, n_features: int) -> BmdNet:
    """A fresh :class:`~ctbmd.model.nets.BmdNet` for ``cfg`` (3-channel crops, plus the muscle crop with ``cfg.muscle``)."""
    return BmdNet(cfg.arch, cfg.dims, 3, n_features, 3 if cfg.classify else 0, muscle=cfg.muscle)


#: TrainConfig fields a resumed run may change: how long to train, and where.
RESUMABLE_CHANGES = ("epochs", "patience", "device")


def resume_mismatch(saved: dict | None, cfg: TrainConfig) -> list[str]:
    """The settings of ``cfg`` that differ from an interrupted run's ``saved`` config (``asdict`` of its
    TrainConfig; None for a checkpoint that has none), leaving out :data:`RESUMABLE_CHANGES`."""
    now = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    saved = saved or {}
    return sorted(k for k, v in now.items() if saved.get(k) != (list(v) if isinstance(v, tuple) else v))


def _loss(out: torch.Tensor, y: torch.Tensor, cls: torch.Tensor | None, binary: bool = False) -> torch.Tensor:
    if binary:
        return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)
    loss = nn.functional.smooth_l1_loss(out[:, 0], y)
    if cls is not None and out.shape[1] > 1:
        loss = loss + CLASS_LOSS_WEIGHT * nn.functional.cross_entropy(out[:, 1:], cls)
    return loss


def _epoch_seed(seed: int, member: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, member, epoch + 1]).generate_state(1)[0])


def predict_arrays(net: BmdNet, norm: Normaliser, images: np.ndarray, features: np.ndarray, baseline: np.ndarray,
                   device: torch.device, batch_size: int = 32,
                   muscle: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions of one member.

    Parameters
    ----------
    net, norm :
        A trained member and its normaliser.
    images : numpy.ndarray
        float32 ``(n, 3, s, s, s)`` crops, axes (vertebra, channel, L, P, S).
    features : numpy.ndarray
        ``(n, len(FEATURES))`` raw features.
    baseline : numpy.ndarray
        ``(n,)`` calibration-only BMD (K2HPO4 mg/cm³).
    device : torch.device
    batch_size : int
    muscle : numpy.ndarray, optional
        float32 ``(n, 2, 64, 64)`` muscle crops (axes vertebra, channel, L, P),
        for a net with a muscle backbone.

    Returns
    -------
    values : numpy.ndarray
        float32 ``(n,)`` in target units (mg/cm³ or T-score).
    probabilities : numpy.ndarray or None
        ``(n, 3)`` normal/osteopenia/osteoporosis when the member has a class head.

    Raises
    ------
    ValueError
        A net with a muscle backbone given no ``muscle``.
    """
    net.eval()
    outs = []
    with torch.no_grad():
        f = norm.features(features)
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device)
            m = None if muscle is None else torch.from_numpy(np.ascontiguousarray(muscle[s:s + batch_size])).to(device)
            outs.append(net(x, torch.from_numpy(f[s:s + batch_size]).to(device), m).cpu().numpy())
    out = np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
    probs = None
    if out.shape[1] > 1:
        e = np.exp(out[:, 1:] - out[:, 1:].max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
    return norm.decode(out[:, 0], baseline), probs


def train_member(samples: Samples, fit: np.ndarray, stop: np.ndarray, cfg: TrainConfig, target: str, member: int = 0,
                 checkpoint=None, progress: Callable[[dict], None] | None = None) -> tuple[BmdNet, Normaliser, list[dict]]:
    """Train one network on the ``fit`` vertebrae, early-stopping on the ``stop`` vertebrae.

    Parameters
    ----------
    samples : Samples
    fit, stop : numpy.ndarray
        Indices of the training and the early-stopping vertebrae.
    cfg : TrainConfig
    target : str
        ``bmd_mg_cm3`` or ``t_score``.
    member : int
        Fold number (enters the seeds).
    checkpoint : Path, optional
        File for the resumable state, written after every epoch; training
        resumes from it when it exists.
    progress : callable, optional
        Called after every epoch with ``{"member", "epoch", "epochs", "train_loss", "stop_loss", "best_epoch"}``.

    Raises
    ------
    ValueError
        ``checkpoint`` was written with other settings than ``cfg``, or
        ``cfg.muscle`` and the samples hold no muscle crops.

    Returns
    -------
    net : BmdNet
        The network with the weights of the epoch with the lowest early-stopping loss, in eval mode.
    normaliser : Normaliser
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``stop_loss``.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(_epoch_seed(cfg.seed, member, -1))
    binary = cfg.task == "binary"
    norm = fit_normaliser(samples, fit, target, binary_threshold(cfg, target) if binary else None)
    net = build_net(cfg, samples.features.shape[1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    feats = norm.features(samples.features)
    y = norm.encode(samples.target, samples.baseline)
    cls = categories(samples.target, target) if cfg.classify else None
    if cfg.muscle and samples.muscle is None:
        raise ValueError("--muscle: the samples hold no muscle crops")
    history: list[dict] = []
    best = (math.inf, -1, None)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        changed = resume_mismatch(state.get("config"), cfg)
        if changed:
            raise ValueError(f"the interrupted run used other settings ({', '.join(changed)}); resume it with the "
                             "same options, or start again in another --out")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        history, start = state["history"], state["epoch"] + 1
        best = (state["best_loss"], state["best_epoch"], state["best_state"])

    def batch(ix: np.ndarray, aug=None, copies: np.ndarray | None = None):
        imgs = samples.images[ix]
        if copies is not None and copies.any():
            imgs = np.stack([augmented_copy(im, cfg.seed, int(i), int(k), cfg.dims) if k else im
                             for im, i, k in zip(imgs, ix, copies)])
        if aug is not None:
            imgs = np.stack([np.asarray(aug(im)) for im in imgs])
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return (to(imgs.astype(np.float32)), to(feats[ix]), to(y[ix]), (to(cls[ix]).long() if cls is not None else None),
                to(samples.muscle[ix]) if cfg.muscle else None)

    for epoch in range(start, cfg.epochs):
        if epoch - best[1] > cfg.patience and best[1] >= 0:
            break
        es = _epoch_seed(cfg.seed, member, epoch)
        torch.manual_seed(es)
        # each fit crop, and with augment_copies its fixed copies 1..N: (crop index, copy number) pairs
        pairs = np.stack([np.repeat(fit, cfg.augment_copies + 1),
                          np.tile(np.arange(cfg.augment_copies + 1), len(fit))], axis=1)
        order = pairs[np.random.default_rng(es).permutation(len(pairs))]  # without copies: the order of permutation(fit)
        aug = _augmenter(es % (2 ** 31)) if cfg.augment else None
        net.train()
        total, count = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            ix, copies = order[s:s + cfg.batch_size, 0], order[s:s + cfg.batch_size, 1]
            if len(ix) < 2:
                continue
            x, f, t, c, m = batch(ix, aug, copies)
            opt.zero_grad()
            loss = _loss(net(x, f, m), t, c, binary)
            loss.backward()
            opt.step()
            total += loss.item() * len(ix)
            count += len(ix)
        net.eval()
        with torch.no_grad():
            stop_total = 0.0
            for s in range(0, len(stop), 64):
                x, f, t, c, m = batch(stop[s:s + 64])
                stop_total += float(_loss(net(x, f, m), t, c, binary)) * len(x)
        rec = {"epoch": epoch, "train_loss": total / max(count, 1), "stop_loss": stop_total / max(len(stop), 1)}
        history.append(rec)
        if rec["stop_loss"] < best[0]:
            best = (rec["stop_loss"], epoch, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        if checkpoint is not None:
            _save_torch(checkpoint, {"model": net.state_dict(), "optim": opt.state_dict(), "epoch": epoch,
                                     "history": history, "best_loss": best[0], "best_epoch": best[1],
                                     "best_state": best[2], "config": asdict(cfg)})
        if progress:
            progress({**rec, "member": member, "epoch": epoch + 1, "epochs": cfg.epochs, "best_epoch": best[1] + 1})
    net.load_state_dict(best[2])
    return net.eval(), norm, history


def _save_torch(path, obj) -> None:
    from ctbmd.io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(obj, p))
