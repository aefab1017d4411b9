"""What an exported model says about itself: ONNX metadata properties and the plan sidecar.

Every ``.onnx`` written by :func:`refusion.export.export_onnx` carries these string properties
(``ModelProto.metadata_props``), so a runtime can check what it loads without the checkpoint:

============================  =================================================================
key                           value
============================  =================================================================
``task``                      ``ivif``, ``mif``, ``mfif``, ``meif`` or empty when unknown
``input_name``                ``sources``
``output_name``               ``fused``
``layout``                    ``NCHW``
``input_order``               which source is channel 0 and which is channel 1
``scaling``                   ``unit``: input and output are luma in [0, 1]
``scaling_doc``               the same in words (how to go from and to 8-bit values)
``precision``                 ``fp32`` or ``fp16`` (FP16 graphs still take and return float32)
``fp32_islands``              FP16 graphs only: JSON list of the node names kept in FP32
``model_config``              JSON of :class:`~refusion.models.fusion.FusionConfig`
``refusion_version``          the project version that exported the graph
``source_checkpoint``         file name of the checkpoint (empty for an in-memory model)
``source_checkpoint_sha256``  SHA-256 of that file (empty for an in-memory model)
``source_format``             ``refusion`` (ours), ``authors`` (their ``.pth``) or ``module``
``opset``                     the default-domain opset of the graph
``weights_name``              shipped weights only: their name (``ivif``, ``mfif-fixed``...)
============================  =================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from refusion.utils.hashing import sha256_file

INPUT_NAME = "sources"
OUTPUT_NAME = "fused"
LAYOUT = "NCHW"
INPUT_ORDER = (
    "channel 0 = source a (infrared, CT/PET/SPECT, near focus, under-exposed); "
    "channel 1 = source b (visible, MRI, far focus, over-exposed)"
)
SCALING = "unit"
SCALING_DOC = (
    "input: float32 luma in [0, 1] (8-bit value / 255); output: float32 fused luma in [0, 1] "
    "(the network's sigmoid), multiply by 255 for 8-bit output (or rescale min-max per image "
    "as the authors' script does)"
)
JSON_KEYS = ("model_config", "fp32_islands")

#: Keys every exported graph has (``fp32_islands`` only in FP16 graphs).
REQUIRED_KEYS = (
    "task",
    "input_name",
    "output_name",
    "layout",
    "input_order",
    "scaling",
    "scaling_doc",
    "precision",
    "model_config",
    "refusion_version",
    "source_checkpoint",
    "source_checkpoint_sha256",
    "source_format",
    "opset",
)


def build_metadata(
    *,
    task: str | None,
    model_config: dict,
    precision: str,
    opset: int,
    source_checkpoint: str | os.PathLike | None = None,
    source_format: str = "module",
    extra: dict | None = None,
) -> dict[str, str]:
    """The metadata properties of an exported graph (all values are strings).

    ``extra`` entries are added as given (stringified; dicts and lists as JSON) and may not
    overwrite the standard keys, so a runtime can always trust them.
    """
    from refusion import __version__

    ckpt = Path(source_checkpoint) if source_checkpoint else None
    meta = {
        "task": task or "",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": LAYOUT,
        "input_order": INPUT_ORDER,
        "scaling": SCALING,
        "scaling_doc": SCALING_DOC,
        "precision": precision,
        "model_config": json.dumps(model_config, sort_keys=True),
        "refusion_version": __version__,
        "source_checkpoint": ckpt.name if ckpt else "",
        "source_checkpoint_sha256": sha256_file(ckpt) if ckpt else "",
        "source_format": source_format,
        "opset": str(int(opset)),
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"metadata key {key!r} is reserved by the exporter")
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return meta


def set_metadata(model, meta: dict[str, str]) -> None:
    """Replace the metadata properties of an ``onnx.ModelProto`` with ``meta`` (sorted)."""
    del model.metadata_props[:]
    for key in sorted(meta):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, meta[key]


def metadata_of(model) -> dict:
    """Metadata properties of an ``onnx.ModelProto``; JSON-valued keys come back decoded."""
    out: dict = {p.key: p.value for p in model.metadata_props}
    for key in JSON_KEYS:
        if key in out:
            # A foreign graph may hold plain strings there: leave them as they are.
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """Read the metadata properties of an ``.onnx`` file without loading its weights.

    Returns:
        ``{key: value}``; ``model_config`` and ``fp32_islands`` are decoded from JSON, every
        other value is a string (see the module docstring for the keys).

    Raises:
        UserError: the file is missing or is not an ONNX model.
    """
    import onnx

    from refusion.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise UserError(f"{p} is not a readable ONNX model ({exc})") from None
    return metadata_of(model)
