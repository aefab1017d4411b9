"""Table 4 ablations: the decision-map fusion network (configuration II).

The fixed-loss ablation (configuration I) needs no module: the trainer builds no P and uses
:func:`refusion.models.fixed_weights` (W = V = 1/2 everywhere) and skips the meta steps.
"""

from __future__ import annotations

from torch import Tensor

from refusion.models import FusionNet


class DecisionFusionNet(FusionNet):
    """F predicting a per-pixel decision map: ``I_f = W_a I_a + (1 - W_a) I_b``.

    Same layers and parameter names as :class:`FusionNet` (its sigmoid output is ``W_a``), so
    the checkpoint format is unchanged; the trainer records ``ablation.fusion = decision`` in the
    checkpoint's ``extra``.

    Shape:
        - Input: :math:`(B, 2, H, W)`; output: :math:`(B, 1, H, W)`
    """

    def decision(self, x: Tensor) -> Tensor:
        """The weight map ``W_a`` in (0, 1), :math:`(B, 1, H, W)`."""
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        w = self.decision(x)
        return w * x[:, :1] + (1.0 - w) * x[:, 1:]
