"""Shipped named weights: ``<name>.safetensors`` plus its model card ``<name>.json``.

Data only; see :mod:`refusion.zoo` (listing, resolution, publishing, card checks) and
``docs/weights.md``.
"""
