"""Loading the authors' published ReFusion checkpoints into :class:`FusionNet`.

Their files are plain state dicts in which every convolution weight appears twice, as
``<layer>.weight`` and ``<layer>.conv.weight`` (same values), and LayerNorm parameters sit under
``<norm>.body``. This module renames their keys to ours and checks the duplicates agree.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from refusion.errors import CheckpointError

# (their pattern, our replacement), applied in order to each key.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^project_in_1\.", "stem_a."),
    (r"^project_in_2\.", "stem_b."),
    (r"^encoder1\.", "encoder_a."),
    (r"^encoder2\.", "encoder_b."),
    (r"^project_out_0\.", "head_conv1."),
    (r"^project_out_1\.", "head_conv2."),
    (r"\.body\.", "."),
    (r"\.qkv_dwconv\.", ".qkv_dw."),
    (r"\.attn\.project_out\.", ".attn.proj."),
    (r"\.ffn\.project_in\.", ".ffn.proj_in."),
    (r"\.ffn\.dwconv\.", ".ffn.dw."),
    (r"\.ffn\.project_out\.", ".ffn.proj_out."),
    (r"^FM\.temperature1$", "afm.temperature_a"),
    (r"^FM\.temperature2$", "afm.temperature_b"),
    (r"^FM\.qkv1_dwconv\.", "afm.qkv_a_dw."),
    (r"^FM\.qkv2_dwconv\.", "afm.qkv_b_dw."),
    (r"^FM\.qkv1\.", "afm.qkv_a."),
    (r"^FM\.qkv2\.", "afm.qkv_b."),
    (r"^FM\.project_mid1\.", "afm.mid_a."),
    (r"^FM\.project_mid2\.", "afm.mid_b."),
    (r"^FM\.project_E_d\.", "afm.gate_dw."),
    (r"^FM\.project_E\.", "afm.gate."),
    (r"^FM\.project_E1_d\.", "afm.value_a_dw."),
    (r"^FM\.project_E1\.", "afm.value_a."),
    (r"^FM\.project_E2_d\.", "afm.value_b_dw."),
    (r"^FM\.project_E2\.", "afm.value_b."),
    (r"^FM\.project_out1\.", "afm.out_a."),
    (r"^FM\.project_out2\.", "afm.out_b."),
)


def looks_like_authors_state_dict(state: dict[str, Tensor]) -> bool:
    """Heuristic: the authors' files have ``project_in_1`` and ``FM.`` keys."""
    return any(k.startswith("project_in_1.") for k in state) and any(
        k.startswith("FM.") for k in state
    )


def convert_authors_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an authors' state dict onto :class:`FusionNet` parameter names.

    Raises:
        CheckpointError: if a duplicated ``.conv.weight`` disagrees with its twin.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".conv.weight"):
            twin = key[: -len(".conv.weight")] + ".weight"
            if twin in state and not torch.equal(state[twin], value):
                raise CheckpointError(f"authors' checkpoint: {key} differs from {twin}")
            if twin in state:
                continue
            key = twin
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out
