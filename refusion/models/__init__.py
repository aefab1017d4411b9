"""The three ReFusion networks: fusion module F, loss proposal module P, reconstruction R."""

from refusion.models.fusion import (
    AdaptiveFusionModule,
    FusionConfig,
    FusionNet,
    count_parameters,
    macs_per_pixel,
)
from refusion.models.proposal import LossWeights, ProposalConfig, ProposalNet, fixed_weights
from refusion.models.reconstruction import ReconstructionConfig, ReconstructionNet

__all__ = [
    "AdaptiveFusionModule",
    "FusionConfig",
    "FusionNet",
    "LossWeights",
    "ProposalConfig",
    "ProposalNet",
    "ReconstructionConfig",
    "ReconstructionNet",
    "count_parameters",
    "fixed_weights",
    "macs_per_pixel",
]
