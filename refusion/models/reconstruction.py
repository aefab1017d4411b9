"""Reconstruction module R: recovers both sources from the fused image.

The paper specifies R's role, not its layers. Our choice: two independent branches (one per
source, since the two sources lose different content in the fusion), each a 3x3 conv
``1 -> width``, two 3x3 convs at dilations 1 and 2, and a 3x3 conv ``width -> 1`` with a sigmoid,
LeakyReLU between (4,945 parameters per branch at width 16). It is deliberately small: a
weak R can only reconstruct what F kept, which is what makes the reconstruction loss a useful
signal for P in the outer step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn


@dataclass
class ReconstructionConfig:
    """Width and dilations of each branch of R."""

    width: int = 16
    dilations: tuple[int, ...] = (1, 2)

    def to_dict(self) -> dict:
        return {**asdict(self), "dilations": list(self.dilations)}


def _branch(cfg: ReconstructionConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, cfg.width, 3, padding=1), nn.LeakyReLU(0.1)]
    for d in cfg.dilations:
        layers += [nn.Conv2d(cfg.width, cfg.width, 3, padding=d, dilation=d), nn.LeakyReLU(0.1)]
    layers += [nn.Conv2d(cfg.width, 1, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


class ReconstructionNet(nn.Module):
    """Reconstruction module R.

    Shape:
        - Input: fused :math:`(B, 1, H, W)`
        - Output: ``(rec_a, rec_b)``, each :math:`(B, 1, H, W)` in (0, 1)
    """

    def __init__(self, config: ReconstructionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ReconstructionConfig()
        self.branch_a = _branch(config)
        self.branch_b = _branch(config)

    def forward(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        return self.branch_a(fused), self.branch_b(fused)
