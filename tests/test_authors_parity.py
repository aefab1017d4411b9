"""Our port reproduces the authors' published outputs (needs ../shared/reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

from refusion.checkpoint import load_fusion_model


@pytest.mark.parametrize("name", ["tno07", "00710N"])
def test_reproduces_reference_output(name):
    ref_dir = shared_path("reference")
    model, ck = load_fusion_model(ref_dir / "ReFusion_IVIF.pth")
    assert ck.source == "authors"
    x = torch.from_numpy(np.load(ref_dir / f"ivif_{name}_input.npy"))
    expected = np.load(ref_dir / f"ivif_{name}_raw.npy")
    with torch.no_grad():
        y = model(x)[0, 0].numpy()
    assert np.abs(y - expected).max() <= 1e-5


def test_duplicated_weights_are_checked(tmp_path):
    ref = shared_path("reference", "ReFusion_IVIF.pth")
    state = torch.load(ref, map_location="cpu", weights_only=True)
    state["FM.qkv1.conv.weight"] = state["FM.qkv1.conv.weight"] + 1
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    from refusion.checkpoint import read_checkpoint
    from refusion.errors import CheckpointError

    with pytest.raises(CheckpointError, match="differs"):
        read_checkpoint(bad)
