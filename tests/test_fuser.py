"""`refusion.engine.Fuser`: numpy pairs in, the images refusion-fuse writes out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from refusion.engine import Fuser

from refusion.checkpoint import load_fusion_model, save_checkpoint
from refusion.cli.fuse import main as fuse_main
from refusion.errors import UserError
from refusion.imaging import compose, prepare_pair, to_display255
from refusion.models import FusionConfig, FusionNet


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, blocks=1, heads=2))},
                           task="ivif")


def _by_hand(ckpt, a, b, gray=False):
    """The fused image the network gives for one pair, without the Fuser."""
    model, _ = load_fusion_model(ckpt)
    pp = prepare_pair(a, b)
    x = torch.from_numpy(np.stack([pp.a, pp.b]))[None]
    with torch.inference_mode():
        y = model(x)[0, 0].numpy()
    return compose(y, None if gray else pp.chroma)


def test_one_pair_is_the_network_through_the_shared_colour_path(ckpt, photo_pair):
    ir, vis_colour = photo_pair
    with Fuser(ckpt, backend="torch", device="cpu") as fuse:
        got = fuse(ir, vis_colour)
        grey = Fuser(ckpt, backend="torch", device="cpu", gray=True)(ir, vis_colour)
        # a torch.device is taken as its text (it used to be an AttributeError)
        same = Fuser(ckpt, backend="torch", device=torch.device("cpu"))(ir, vis_colour)
    assert np.array_equal(same, got)
    assert got.dtype == np.uint8 and got.shape == vis_colour.shape
    assert np.abs(got.astype(int) - _by_hand(ckpt, ir, vis_colour).astype(int)).max() <= 1
    assert grey.shape == ir.shape
    assert np.abs(grey.astype(int) - _by_hand(ckpt, ir, vis_colour, gray=True)).max() <= 1


def test_many_keeps_order_across_sizes_and_batches(ckpt, photo_pair):
    ir, vis = photo_pair
    sizes = [(48, 64), (40, 56), (48, 64), (48, 64), (40, 56)]
    pairs = [(cv2.resize(ir, (w, h)), cv2.resize(np.roll(vis, 7 * i, axis=1), (w, h)))
             for i, (h, w) in enumerate(sizes)]
    with Fuser(ckpt, backend="torch", device="cpu") as fuse:
        together = fuse.many(pairs, batch_size=2)
        alone = [fuse(a, b) for a, b in pairs]
    assert [t.shape for t in together] == [(h, w, 3) for h, w in sizes]
    for t, s in zip(together, alone):
        assert np.abs(t.astype(int) - s.astype(int)).max() <= 1  # batching changes nothing


def test_the_file_command_writes_what_the_fuser_returns(ckpt, pair_files, tmp_path):
    a, b = pair_files
    out = tmp_path / "f.png"
    assert fuse_main([str(a), str(b), "-o", str(out), "--weights", str(ckpt),
                      "--backend", "torch", "-q"]) == 0
    ia, ib = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (a, b))
    with Fuser(ckpt, backend="torch", device="cpu") as fuse:
        np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), fuse(ia, ib))


def test_16bit_sources_and_minmax(ckpt, photo_pair):
    ir, vis = photo_pair
    ir16 = 3000 + 8 * ir.astype(np.uint16)
    with Fuser(ckpt, backend="torch", device="cpu") as fuse:
        # mapped by its own robust percentiles, never truncated to a byte
        np.testing.assert_array_equal(fuse(ir16, vis), fuse(to_display255(ir16), vis))
        assert np.abs(fuse(ir16, vis).astype(int) - fuse(ir, vis)).mean() < 8
    stretched = Fuser(ckpt, backend="torch", device="cpu", normalize="minmax", gray=True)(ir, vis)
    assert stretched.min() == 0 and stretched.max() == 255


def test_errors_name_the_problem(ckpt, photo_pair):
    ir, vis = photo_pair
    with pytest.raises(UserError, match="trained for 'ivif', not 'mfif'"):
        Fuser(ckpt, task="mfif")
    with pytest.raises(UserError, match="normalize must be"):
        Fuser(ckpt, normalize="stretch")
    fuse = Fuser(ckpt, backend="torch", device="cpu")
    with pytest.raises(UserError, match="size mismatch: pair 0 a is 64x48, pair 0 b"):
        fuse(cv2.resize(ir, (64, 48)), vis)
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        fuse.many([(ir, vis)], batch_size=0)
    with pytest.raises(UserError, match="no such file and no shipped weights"):
        Fuser("no-such-weights")
    with pytest.raises(UserError, match="--weights not found: .*nope.safetensors"):
        Fuser(ckpt.parent / "nope.safetensors")  # at construction, not at the first pair


def test_a_fuser_is_lazy_and_closes_twice(ckpt, photo_pair):
    fuse = Fuser(ckpt, backend="torch", device="cpu")
    assert fuse._backend is None  # nothing created, nothing exported, until it fuses
    fuse.close()
    ir, vis = photo_pair
    assert fuse(ir, vis).shape == vis.shape and fuse.backend.is_active
    fuse.close()
    fuse.close()
    assert not fuse.backend.is_active


@pytest.mark.parametrize(("image", "needle"), [
    (np.full((8, 8), np.nan, np.float32), "pair 0 a contains NaN or Inf"),
    (np.zeros((8, 8), np.int32), "pixel type int32 is not supported"),
    (np.zeros((8, 8), bool), "pixel type bool is not supported"),
    (np.zeros((8, 8, 2), np.uint8), "expected an (H, W) or (H, W, 3) BGR image, got shape (8, 8"),
    (np.zeros((3, 8, 8), np.uint8), "got shape (3, 8, 8)"),
    (np.zeros((0, 0), np.uint8), "empty image (0, 0)"),
    ([[1, 2], [3, 4]], "expected a numpy image, got list"),
])
def test_arrays_get_the_checks_files_get(ckpt, image, needle):
    fuse = Fuser(ckpt, backend="torch", device="cpu")
    with pytest.raises(UserError) as exc:
        fuse(image, np.zeros((8, 8), np.uint8))
    assert needle in str(exc.value)


def test_array_forms_that_files_also_come_in(ckpt, photo_pair):
    ir, vis = photo_pair
    fuse = Fuser(ckpt, backend="torch", device="cpu", gray=True)
    want = fuse(ir, vis[..., 1])
    assert np.array_equal(fuse(ir[..., None], vis[..., 1]), want)  # (H, W, 1) squeezed
    big_endian = (ir.astype(np.uint16) * 257).astype(">u2")  # byte order converted
    assert np.array_equal(fuse(big_endian, vis[..., 1]),
                          fuse((ir.astype(np.uint16) * 257), vis[..., 1]))
    with pytest.warns(UserWarning, match="float values within 0..1"):
        fuse(ir.astype(np.float32) / 255.0, vis[..., 1])
    # beyond 0..255 is clipped, as in files
    assert np.array_equal(fuse(np.full(ir.shape, 1e4, np.float32), vis[..., 1]),
                          fuse(np.full(ir.shape, 255, np.uint8), vis[..., 1]))


def test_a_flat_16bit_frame_is_not_black():
    flat = np.full((16, 16), 3000, np.uint16)
    assert np.allclose(to_display255(flat), 3000 / 257)


def test_a_module_and_many_threads(photo_pair):
    import threading

    torch.manual_seed(0)
    net = FusionNet(FusionConfig(dim=4, blocks=1, heads=2, afm_expansion=1))
    fuse = Fuser(net, backend="torch", device="cpu")
    ir, vis = photo_pair
    want = fuse(ir, vis)
    fuse.close()
    fuse._backend = None
    import refusion.engine.fuser as fuser_module

    made, create = [], fuser_module.create_backend
    fuser_module.create_backend = lambda *a, **k: made.append(1) or create(*a, **k)
    try:
        out = [None] * 4

        def run(i):
            out[i] = fuse(ir, vis)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fuser_module.create_backend = create
    assert made == [1] and all(np.array_equal(o, want) for o in out)
    fuse.close()
    assert not fuse.backend.is_active


def test_shipped_weights_by_task():
    fuse = Fuser(task="mfif", backend="torch", device="cpu")
    assert fuse.label == "mfif"
    a = np.zeros((32, 40), np.uint8)
    assert fuse(a, a + 128).shape == (32, 40)
