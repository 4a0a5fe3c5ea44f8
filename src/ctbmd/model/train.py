"""Training: the loop that fits one cross-validation member, with early stopping, and prediction.

The settings, targets, tasks, patient splits and devices it uses are in
:mod:`ctbmd.model.targets`; their names are re-exported here
(``from ctbmd.model.train import TrainConfig, patient_folds`` keeps working).

Loss: smooth L1 (Huber, beta 1) on the normalised target (see
:mod:`ctbmd.model.targets`), plus ``CLASS_LOSS_WEIGHT`` times the cross-entropy
of the 3-class head with ``classify``; binary cross-entropy for the binary
task. Optimiser: AdamW (Loshchilov & Hutter, ICLR 2019). Augmentation
(training only, MONAI): ``RandAffine`` (rotation up to 10 degrees about each
axis, shift up to 2 voxels, scale +-5%), ``RandGaussianNoise`` (SD 0.02 of the
normalised intensity, about 15 HU), ``RandShiftIntensity`` per channel (up to
0.03, about 20 HU of HU jitter).

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
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ctbmd.model.cohort import Samples
from ctbmd.model.errors import ModelSettingsError
from ctbmd.model.nets import BmdNet, Dims
from ctbmd.model.targets import (BINARY_THRESHOLDS, DEVICES, EARLY_STOP_FRACTION, RESUMABLE_CHANGES, TARGET_SCALE_MG_CM3,
                                 TASKS, Device, Fold, Normaliser, Splits, Task, TrainConfig, binary_threshold,
                                 categories, fit_normaliser, patient_folds, resolve_device, resume_mismatch)

__all__ = [
    # the training loop (this module)
    "CLASS_LOSS_WEIGHT", "MemberPrediction", "TrainedMember", "augmented_copy", "build_net", "predict_arrays",
    "train_member",
    # settings, targets, splits and devices (ctbmd.model.targets)
    "BINARY_THRESHOLDS", "DEVICES", "EARLY_STOP_FRACTION", "RESUMABLE_CHANGES", "TARGET_SCALE_MG_CM3", "TASKS",
    "Device", "Fold", "Normaliser", "Splits", "Task", "TrainConfig", "binary_threshold", "categories",
    "fit_normaliser", "patient_folds", "resolve_device", "resume_mismatch",
]

#: Weight of the 3-class head's cross-entropy beside the regression loss (``classify``).
CLASS_LOSS_WEIGHT = 0.2


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


def augmented_copy(image: np.ndarray, seed: int, crop: int, copy: int, dims: Dims = "3d") -> np.ndarray:
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


def build_net(cfg: TrainConfig, n_features: int) -> BmdNet:
    """A fresh :class:`~ctbmd.model.nets.BmdNet` for ``cfg`` (3-channel crops, plus the muscle crop with ``cfg.muscle``)."""
    return BmdNet(cfg.arch, cfg.dims, 3, n_features, 3 if cfg.classify else 0, muscle=cfg.muscle)


def _loss(out: torch.Tensor, y: torch.Tensor, cls: torch.Tensor | None, binary: bool = False) -> torch.Tensor:
    if binary:
        return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)
    loss = nn.functional.smooth_l1_loss(out[:, 0], y)
    if cls is not None and out.shape[1] > 1:
        loss = loss + CLASS_LOSS_WEIGHT * nn.functional.cross_entropy(out[:, 1:], cls)
    return loss


def _epoch_seed(seed: int, member: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, member, epoch + 1]).generate_state(1)[0])


@dataclass(frozen=True)
class MemberPrediction:
    """What one member predicts for ``n`` vertebrae (:func:`predict_arrays`).

    Attributes
    ----------
    values : numpy.ndarray
        float32 ``(n,)`` in target units (mg/cm³, T-score, the per-patient
        column's unit), or for a binary member the probability of low BMD.
    probabilities : numpy.ndarray or None
        ``(n, 3)`` normal/osteopenia/osteoporosis when the member has a class head.
    """

    values: np.ndarray
    probabilities: np.ndarray | None


def predict_arrays(net: BmdNet, norm: Normaliser, images: np.ndarray, features: np.ndarray, baseline: np.ndarray,
                   device: torch.device, batch_size: int = 32,
                   muscle: np.ndarray | None = None) -> MemberPrediction:
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
    MemberPrediction
        The values in target units and, with a class head, the class probabilities.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        A net with a muscle backbone given no ``muscle`` (a :class:`ValueError` too).
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
    return MemberPrediction(values=norm.decode(out[:, 0], baseline), probabilities=probs)


@dataclass(frozen=True)
class TrainedMember:
    """One trained cross-validation member (:func:`train_member`).

    Attributes
    ----------
    net : BmdNet
        The network with the weights of the epoch with the lowest early-stopping loss, in eval mode.
    normaliser : Normaliser
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``stop_loss``.
    """

    net: BmdNet
    normaliser: Normaliser
    history: list[dict]


class _Batch(NamedTuple):
    """One batch on the device: crops, standardised features, encoded target, classes, muscle crops."""

    images: torch.Tensor
    features: torch.Tensor
    target: torch.Tensor
    classes: torch.Tensor | None
    muscle: torch.Tensor | None


class _Batches:
    """Makes :class:`_Batch` es of chosen vertebrae of ``samples`` for one member."""

    def __init__(self, samples: Samples, norm: Normaliser, cfg: TrainConfig, target: str, device: torch.device):
        self.samples, self.cfg, self.device = samples, cfg, device
        self.features = norm.features(samples.features)
        self.target = norm.encode(samples.target, samples.baseline)
        self.classes = categories(samples.target, target) if cfg.classify else None

    def _to(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def __call__(self, ix: np.ndarray, aug=None, copies: np.ndarray | None = None) -> _Batch:
        """The vertebrae ``ix``; ``copies`` (per vertebra, 0 for the crop itself) picks offline copies and
        ``aug`` is applied on top."""
        imgs = self.samples.images[ix]
        if copies is not None and copies.any():
            imgs = np.stack([augmented_copy(im, self.cfg.seed, int(i), int(k), self.cfg.dims) if k else im
                             for im, i, k in zip(imgs, ix, copies)])
        if aug is not None:
            imgs = np.stack([np.asarray(aug(im)) for im in imgs])
        return _Batch(self._to(imgs.astype(np.float32)), self._to(self.features[ix]), self._to(self.target[ix]),
                      self._to(self.classes[ix]).long() if self.classes is not None else None,
                      self._to(self.samples.muscle[ix]) if self.cfg.muscle else None)


@dataclass
class _Best:
    """The epoch with the lowest early-stopping loss so far, and its weights (on the CPU)."""

    loss: float = math.inf
    epoch: int = -1
    state: dict | None = None


def _fit_epoch(net: BmdNet, opt: torch.optim.Optimizer, batches: _Batches, fit: np.ndarray, cfg: TrainConfig,
               epoch_seed: int, binary: bool) -> float:
    """Train one epoch on the ``fit`` vertebrae (and their offline copies); return the mean training loss."""
    # each fit crop, and with augment_copies its fixed copies 1..N: (crop index, copy number) pairs
    pairs = np.stack([np.repeat(fit, cfg.augment_copies + 1),
                      np.tile(np.arange(cfg.augment_copies + 1), len(fit))], axis=1)
    order = pairs[np.random.default_rng(epoch_seed).permutation(len(pairs))]  # without copies: the order of permutation(fit)
    aug = _augmenter(epoch_seed % (2 ** 31)) if cfg.augment else None
    net.train()
    total, count = 0.0, 0
    for s in range(0, len(order), cfg.batch_size):
        ix, copies = order[s:s + cfg.batch_size, 0], order[s:s + cfg.batch_size, 1]
        if len(ix) < 2:
            continue
        b = batches(ix, aug, copies)
        opt.zero_grad()
        loss = _loss(net(b.images, b.features, b.muscle), b.target, b.classes, binary)
        loss.backward()
        opt.step()
        total += loss.item() * len(ix)
        count += len(ix)
    return total / max(count, 1)


def _stop_loss(net: BmdNet, batches: _Batches, stop: np.ndarray, binary: bool) -> float:
    """Mean loss on the early-stopping vertebrae ``stop`` (eval mode, no augmentation)."""
    net.eval()
    with torch.no_grad():
        stop_total = 0.0
        for s in range(0, len(stop), 64):
            b = batches(stop[s:s + 64])
            stop_total += float(_loss(net(b.images, b.features, b.muscle), b.target, b.classes, binary)) * len(b.images)
    return stop_total / max(len(stop), 1)


@dataclass(frozen=True)
class _Resumed:
    """Where an interrupted run stopped: its loss history, the next epoch and its best epoch so far."""

    history: list[dict]
    start: int
    best: _Best


def _resume(checkpoint: Path, net: BmdNet, opt: torch.optim.Optimizer, cfg: TrainConfig,
            device: torch.device) -> _Resumed:
    """Load an interrupted run's state into ``net`` and ``opt``; return where it stopped.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        The checkpoint was written with other settings than ``cfg``.
    """
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    changed = resume_mismatch(state.get("config"), cfg)
    if changed:
        raise ModelSettingsError(f"the interrupted run used other settings ({', '.join(changed)}); resume it with "
                                 "the same options, or start again in another `out`")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    return _Resumed(history=state["history"], start=state["epoch"] + 1,
                    best=_Best(state["best_loss"], state["best_epoch"], state["best_state"]))


def train_member(samples: Samples, fit: np.ndarray, stop: np.ndarray, cfg: TrainConfig, target: str, member: int = 0,
                 checkpoint: Path | None = None, progress: Callable[[dict], None] | None = None) -> TrainedMember:
    """Train one network on the ``fit`` vertebrae, early-stopping on the ``stop`` vertebrae.

    Parameters
    ----------
    samples : Samples
    fit, stop : numpy.ndarray
        Indices of the training and the early-stopping vertebrae.
    cfg : TrainConfig
    target : str
        ``bmd_mg_cm3``, ``t_score`` or another per-patient column (``tbs``).
    member : int
        Fold number (enters the seeds).
    checkpoint : Path, optional
        File for the resumable state, written after every epoch; training
        resumes from it when it exists.
    progress : callable, optional
        Called after every epoch with ``{"member", "epoch", "epochs", "train_loss", "stop_loss", "best_epoch"}``.

    Returns
    -------
    TrainedMember
        The network (weights of the best early-stopping epoch, eval mode), its normaliser and the loss history.

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        ``checkpoint`` was written with other settings than ``cfg``, or
        ``cfg.muscle`` and the samples hold no muscle crops (a :class:`ValueError` too).
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(_epoch_seed(cfg.seed, member, -1))
    binary = cfg.task == "binary"
    norm = fit_normaliser(samples, fit, target, binary_threshold(cfg, target) if binary else None)
    net = build_net(cfg, samples.features.shape[1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = _Batches(samples, norm, cfg, target, device)
    if cfg.muscle and samples.muscle is None:
        raise ModelSettingsError("`muscle`: the samples hold no muscle crops")
    run = _Resumed(history=[], start=0, best=_Best())
    if checkpoint is not None and checkpoint.is_file():
        run = _resume(checkpoint, net, opt, cfg, device)
    history, best = run.history, run.best
    for epoch in range(run.start, cfg.epochs):
        if epoch - best.epoch > cfg.patience and best.epoch >= 0:
            break
        es = _epoch_seed(cfg.seed, member, epoch)
        torch.manual_seed(es)
        train_loss = _fit_epoch(net, opt, batches, fit, cfg, es, binary)
        rec = {"epoch": epoch, "train_loss": train_loss, "stop_loss": _stop_loss(net, batches, stop, binary)}
        history.append(rec)
        if rec["stop_loss"] < best.loss:
            best = _Best(rec["stop_loss"], epoch, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        if checkpoint is not None:
            _save_torch(checkpoint, {"model": net.state_dict(), "optim": opt.state_dict(), "epoch": epoch,
                                     "history": history, "best_loss": best.loss, "best_epoch": best.epoch,
                                     "best_state": best.state, "config": asdict(cfg)})
        if progress:
            progress({**rec, "member": member, "epoch": epoch + 1, "epochs": cfg.epochs, "best_epoch": best.epoch + 1})
    net.load_state_dict(best.state)
    return TrainedMember(net=net.eval(), normaliser=norm, history=history)


def _save_torch(path: Path, obj) -> None:
    from ctbmd.io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(obj, p))
