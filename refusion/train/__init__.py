"""The meta-learning trainer of ReFusion (Algorithm 1): ``refusion-train``.

Public API::

    from refusion.train import Trainer, build_config
    cfg = build_config("mfif", overrides=["data.root=pairs/", "schedule.epochs=1"])
    Trainer(cfg, "runs/mfif").fit()

See ``docs/training.md``.
"""

from refusion.train.config import TrainConfig, build_config
from refusion.train.meta import Batch, fusion_step_losses, inner_update, meta_step
from refusion.train.trainer import Trainer, TrainingDiverged, TrainResult, load_run_config

__all__ = [
    "Batch",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_config",
    "fusion_step_losses",
    "inner_update",
    "load_run_config",
    "meta_step",
]
