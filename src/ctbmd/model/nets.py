"""Networks: a MONAI image backbone plus a head that also sees the scan features.

Backbones (``arch``), all from ``monai.networks.nets``:

* ``densenet121`` (default): DenseNet-121 (Huang et al., CVPR 2017,
  doi 10.1109/CVPR.2017.243), the network of Peng et al. 2024 and of the
  chest-CT DenseNet study;
* ``densenet_small``: MONAI's DenseNet with 16 initial features, growth rate 8
  and blocks (2, 4, 4), about 0.1 M parameters instead of 11 M; it trains about
  10x faster on a CPU and is what ``benchmarks/dl_cohort.py`` uses;
* ``resnet18`` and ``resnet50``: ResNets (He et al., CVPR 2016,
  doi 10.1109/CVPR.2016.90), as in the ResNet-50 sagittal-slice study.

Input modes (``dims``): ``3d`` feeds the whole crop ``(3, s, s, s)``; ``2d``
the central axial slice of each channel ``(3, s, s)`` (Yasaka et al. 2020 work
on axial slices); ``2.5d`` the 5 central axial slices of each channel stacked as
15 channels ``(15, s, s)``; ``sagittal`` the mid-sagittal slice of each channel
``(3, s, s)`` (axes P, S: the vertebral body in profile, as the ResNet-50 of the
JCAT 2023 study read it, seed 002); ``sagittal3`` the 3 central sagittal slices
of each channel stacked as 9 channels ``(9, s, s)``. The crop is centred on the
trabecular ROI, so its central sagittal slice is the body's midline.

With ``muscle=True`` (``ctbmd train --muscle``, the Huang 2025 protocol) a second
backbone of the same ``arch``, always 2-D, reads the axial muscle crop
``(2, 64, 64)`` (:mod:`ctbmd.model.crops`), and its 32-value embedding joins
the body's before the head: two images of one level, as Huang et al. fed the
vertebral body and the skeletal muscle.

The head concatenates the backbone's 32-value embedding with the standardised
scan features (:data:`ctbmd.model.crops.FEATURES`) and maps them through a
64-unit hidden layer to one regression output (plus 3 class logits with
``n_classes=3``). Its last layer starts at zero, so an untrained network
predicts exactly the baseline (see :mod:`ctbmd.model.train`).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from ctbmd.model.errors import ModelSettingsError

#: Backbones (see the module docstring).
Arch = Literal["densenet121", "densenet_small", "resnet18", "resnet50"]
ARCHS: tuple[Arch, ...] = get_args(Arch)
#: Input modes (see the module docstring).
Dims = Literal["3d", "2d", "2.5d", "sagittal", "sagittal3"]
DIMS: tuple[Dims, ...] = get_args(Dims)
EMBEDDING = 32
#: Channels of the muscle crop (HU, muscle mask).
MUSCLE_CHANNELS = 2
SLICES_25D = 5
SLICES_SAGITTAL3 = 3
#: Channels per crop channel that each 2-D mode stacks.
STACKED = {"2d": 1, "2.5d": SLICES_25D, "sagittal": 1, "sagittal3": SLICES_SAGITTAL3}


def to_input(images: torch.Tensor, dims: Dims) -> torch.Tensor:
    """Crops ``(n, c, L, P, S)`` -> the network input of mode ``dims`` (see the module docstring)."""
    if dims == "3d":
        return images
    if dims in ("sagittal", "sagittal3"):
        mid = images.shape[2] // 2
        if dims == "sagittal":
            return images[:, :, mid]  # (n, c, P, S)
        half = SLICES_SAGITTAL3 // 2
        sl = images[:, :, mid - half: mid + half + 1]  # (n, c, 3, P, S)
        return sl.reshape(images.shape[0], -1, images.shape[3], images.shape[4])
    mid = images.shape[-1] // 2
    if dims == "2d":
        return images[..., mid]
    half = SLICES_25D // 2
    sl = images[..., mid - half: mid + half + 1]  # (n, c, L, P, 5)
    return sl.permute(0, 1, 4, 2, 3).reshape(images.shape[0], -1, images.shape[2], images.shape[3])


def _backbone(arch: Arch, dims: Dims, in_channels: int) -> nn.Module:
    from monai.networks import nets

    spatial = 3 if dims == "3d" else 2
    ch = in_channels * STACKED.get(dims, 1)
    if arch == "densenet121":
        return nets.DenseNet121(spatial_dims=spatial, in_channels=ch, out_channels=EMBEDDING)
    if arch == "densenet_small":
        return nets.DenseNet(spatial_dims=spatial, in_channels=ch, out_channels=EMBEDDING, init_features=16,
                             growth_rate=8, block_config=(2, 4, 4))
    if arch in ("resnet18", "resnet50"):
        return getattr(nets, arch)(spatial_dims=spatial, n_input_channels=ch, num_classes=EMBEDDING)
    raise ModelSettingsError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


class BmdNet(nn.Module):
    """Image backbone + feature head.

    Parameters
    ----------
    arch : Arch
        One of :data:`ARCHS`.
    dims : Dims
        One of :data:`DIMS`.
    in_channels : int
        Channels of a crop (3).
    n_features : int
        Length of the feature vector.
    n_classes : int
        0 for regression only, 3 for an extra ACR/WHO class head.
    muscle : bool
        Add the 2-D muscle backbone (2 input channels).

    Raises
    ------
    ctbmd.model.errors.ModelSettingsError
        For an unknown ``arch`` or ``dims`` (a :class:`ValueError` too).
    """

    def __init__(self, arch: Arch, dims: Dims, in_channels: int, n_features: int, n_classes: int = 0,
                 muscle: bool = False):
        super().__init__()
        if dims not in DIMS:
            raise ModelSettingsError(f"unknown dims {dims!r}; choose one of {', '.join(DIMS)}")
        self.dims = dims
        self.backbone = _backbone(arch, dims, in_channels)
        self.muscle_backbone = _backbone(arch, "2d", MUSCLE_CHANNELS) if muscle else None
        width = EMBEDDING * (2 if muscle else 1) + n_features
        self.head = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(64, 1 + n_classes))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, images: torch.Tensor, features: torch.Tensor, muscle: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` ``(n, c, L, P, S)``, ``features`` ``(n, f)``, ``muscle`` ``(n, 2, 64, 64)`` (axes
        vertebra, channel, L, P; needed when the net has a muscle backbone) -> ``(n, 1 + n_classes)``;
        column 0 is the normalised regression output, the rest class logits.

        Raises
        ------
        ctbmd.model.errors.ModelSettingsError
            A muscle net called without ``muscle`` (a :class:`ValueError` too).
        """
        z = [self.backbone(to_input(images, self.dims))]
        if self.muscle_backbone is not None:
            if muscle is None:
                raise ModelSettingsError("this network reads a muscle crop: pass muscle=(n, 2, 64, 64)")
            z.append(self.muscle_backbone(muscle))
        return self.head(torch.cat(z + [features], dim=1))
