"""What refusion-train does with what a user hands it: run folders that hold something
already, folder names YAML would change, data given twice, odd files, damaged training states.
Each test fails on the behaviour the audit of 2026-12-03 found."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refusion.errors import UserError
from refusion.train import Trainer, build_config
from refusion.train.synthetic import make_pairs, write_pairs
from refusion.train.trainer import RUN_MARKER, latest_checkpoint, load_run_config

TINY = [
    "schedule.epochs=1", "schedule.meta_steps=1", "schedule.fusion_steps=2",
    "schedule.patch=16", "schedule.batch=2", "fusion.dim=4", "fusion.blocks=1",
    "fusion.heads=2", "fusion.afm_expansion=1", "proposal.width=4", "reconstruction.width=4",
    "log.progress=false", "log.tensorboard=false", "log.panel_every=1000",
]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(make_pairs("mfif", ["camera", "coins"], 2, 0, side=40), root, "mfif")
    return root


def _cfg(root: Path, *extra: str):
    return build_config("mfif", None, [f"data.root={root}", *TINY, *extra])


def _cli(*argv: str) -> int:
    from refusion.cli.train import main

    try:
        return main(list(argv))
    except SystemExit as exc:  # a user error: one line on stderr, exit status 2
        return int(exc.code)


# ------------------------------------------------------------------ run folders
def test_a_new_run_never_writes_over_files_it_did_not_make(data, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.yaml").write_text("mine\n")
    (proj / "metrics.csv").write_text("x\n")
    with pytest.raises(UserError, match=r"proj \(--out\) holds files that a run would "
                                        r"overwrite \(config.yaml, metrics.csv\)"):
        Trainer(_cfg(data), proj, quiet=True)
    assert (proj / "config.yaml").read_text() == "mine\n"
    assert (proj / "metrics.csv").read_text() == "x\n"


def test_a_finished_run_without_checkpoints_keeps_its_results(data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(data), run, quiet=True).fit()
    final = (run / "final.safetensors").read_bytes()
    for p in (run / "checkpoints").iterdir():  # removed to save space
        p.unlink()
    with pytest.raises(UserError, match="holds the final result of an earlier run"):
        Trainer(_cfg(data, "seed=5"), run, quiet=True)
    assert (run / "final.safetensors").read_bytes() == final


def test_a_run_that_failed_before_its_first_checkpoint_may_start_over(data, tmp_path):
    run = tmp_path / "run"
    first = Trainer(_cfg(data, "log.checkpoint_every=1000"), run, quiet=True)
    assert (run / RUN_MARKER).is_file() and (run / "config.yaml").is_file()
    assert latest_checkpoint(run) is None  # it failed here, before any step
    again = Trainer(_cfg(data, "seed=3"), run, quiet=True)
    again.fit()
    assert load_run_config(run).seed == 3 and first.run_dir == again.run_dir


def test_an_attempt_that_validated_before_failing_may_start_over(data, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_cfg(data, "log.checkpoint_every=1000"), run, quiet=True)
    (run / "best.safetensors").write_bytes(b"the failed attempt's best")
    again = Trainer(_cfg(data, "log.checkpoint_every=1000"), run)
    assert not (run / "best.safetensors").exists()
    assert "started over" in capsys.readouterr().err
    again.fit()  # and it can finish


def test_a_damaged_latest_is_said_on_every_process(data, tmp_path, monkeypatch):
    """The main process's refusal must reach the collective that tells the others (a raise
    before it left them waiting in the all-reduce until gloo failed)."""
    from refusion.train import distributed as D

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("7\n")
    flags = []
    real = D.any_flag
    monkeypatch.setattr(D, "any_flag", lambda flag, *a: flags.append(flag) or real(flag, *a))
    with pytest.raises(UserError, match="names step 7 but its files are missing"):
        Trainer(_cfg(data), run, quiet=True)
    assert flags == [True]


def test_default_run_folders_of_one_second_are_two_folders(tmp_path, monkeypatch):
    from refusion.cli import train as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261203-000000")
    one, two = cli._new_run_folder("ivif"), cli._new_run_folder("ivif")
    assert one == str(Path("runs", "ivif-20261203-000000"))
    assert two == one + "-2" and Path(two).is_dir()


def test_a_data_error_leaves_no_default_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert _cli("--task", "ivif", "--data", "empty", "--config", "tiny") == 2
    assert "no paired folders" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("name", ["0010", "yes", "my data #1", "null"])
def test_folder_options_are_taken_as_given(name, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert _cli("--task", "ivif", "--data", name, "--val", name, "--print-config") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["root"] == name and cfg["data"]["val"] == name


@pytest.mark.parametrize("extra", [("--data", "d", "data.root=e"), ("--seed", "1", "seed=2"),
                                   ("--data", "d", "data.a=/x", "data.b=/y")])
def test_one_setting_given_twice_is_refused(extra, capsys):
    assert _cli("--task", "ivif", *extra, "--print-config") == 2
    assert "given both as an option" in capsys.readouterr().err


def test_data_on_the_command_line_replaces_the_config_files_pair_folders(tmp_path, capsys):
    import yaml

    conf = tmp_path / "ab.yaml"
    conf.write_text("data: {a: /x/ir, b: /x/vi}\n")
    assert _cli("--task", "ivif", "--config", str(conf), "--data", "d", "--print-config") == 0
    d = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (d["root"], d["a"], d["b"]) == ("d", "", "")
    assert _cli("--task", "ivif", "--data", "d", "--a", "x", "--b", "y", "--print-config") == 2
    assert _cli("--task", "ivif", "--config", str(conf), "data.root=d", "--print-config") == 2
    assert "the training data is given twice" in capsys.readouterr().err


def test_the_same_folder_for_both_sources_is_refused(data, capsys):
    a = data / "A"
    assert _cli("--task", "mfif", "--a", str(a), "--b", str(a) + "/", "--print-config") == 2
    assert "data.a and data.b (--a, --b) are the same folder" in capsys.readouterr().err


# ------------------------------------------------------------------ files
def _png_declaring(path: Path, width: int, height: int) -> None:
    """A valid 8x8 PNG whose header then claims ``width`` x ``height`` (CRC fixed)."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    raw = bytearray(buf.tobytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[ihdr:ihdr + 17])) & 0xFFFFFFFF
    raw[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(raw))


def test_an_image_declaring_too_many_pixels_is_named(tmp_path):
    from refusion.imaging import read_image

    big = tmp_path / "huge.png"
    _png_declaring(big, 200_000, 200_000)
    with pytest.raises(UserError, match=f"cannot decode image: {big}"):
        read_image(big)


def test_every_skipped_file_is_named(tmp_path, capsys):
    from refusion.train.data import check_and_load, discover_pairs

    root = tmp_path / "d"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), root, "mfif")
    for i in range(8):  # more than the five the report used to show
        (root / "A" / f"bad{i}.png").write_bytes(b"not a png")
        cv2.imwrite(str(root / "B" / f"bad{i}.png"), np.zeros((32, 32), np.uint8))
    good = check_and_load(discover_pairs(root), "skip")
    err = capsys.readouterr().err
    assert len(good) == 1 and "skipped 8" in err
    assert all(f"bad{i}.png" in err for i in range(8)), err
    with pytest.raises(UserError) as info:  # fatal: one line, all of them
        check_and_load(discover_pairs(root), "fail")
    assert "\n" not in str(info.value) and all(f"bad{i}.png" in str(info.value)
                                               for i in range(8))


def test_sixteen_bit_sources_are_mapped_as_at_inference(tmp_path):
    from refusion.imaging import prepare_pair
    from refusion.train.data import load_luma

    rng = np.random.default_rng(0)
    img = rng.integers(2000, 4000, (40, 48)).astype(np.uint16)
    path = tmp_path / "ir.png"
    cv2.imwrite(str(path), img)
    y = load_luma(path)
    prepared = prepare_pair(img, img)
    np.testing.assert_allclose(y, prepared.a, atol=1e-6)
    assert y.min() < 0.05 and y.max() > 0.95  # not the 0.03..0.06 of a plain /257


@pytest.mark.parametrize(("make", "needle"), [
    (lambda d: [(d / n).touch() for n in ("a.mp4", "b.mp4")], r"2 \.mp4 file\(s\).*refusion-video"),
    (lambda d: (d / "day").mkdir(), r"subfolders day \(images are read from the folder itself"),
])
def test_a_folder_without_images_says_what_it_holds(tmp_path, capsys, make, needle):
    from refusion.train.data import check_and_load, discover_pairs

    for side in ("ir", "vi"):
        (tmp_path / side).mkdir()
        make(tmp_path / side)
    with pytest.raises(UserError, match="no usable training pairs"):
        check_and_load(discover_pairs(tmp_path), "skip")
    assert len(__import__("re").findall(needle, capsys.readouterr().err)) == 2


# ------------------------------------------------------------------ resume
def _run_with_checkpoints(data: Path, run: Path, *extra: str) -> None:
    Trainer(_cfg(data, "schedule.fusion_steps=5", "log.checkpoint_every=2", "log.keep=1",
                 *extra), run, quiet=True).fit()


def test_pruning_keeps_the_checkpoint_latest_names(data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(data, "schedule.fusion_steps=5", "log.checkpoint_every=2", "log.keep=1",
                 "schedule.max_steps=2"), run, quiet=True).fit()
    ckpts = run / "checkpoints"
    # an attempt that wrote step 8's files and stopped before moving `latest`
    for suffix in (".safetensors", ".state.pt"):
        (ckpts / f"step_00000008{suffix}").write_bytes((ckpts / f"step_00000002{suffix}")
                                                       .read_bytes())
    tr = Trainer(load_run_config(run, ["schedule.max_steps=4"]), run, resume=True, quiet=True)
    tr.fit()
    step, weights, _ = latest_checkpoint(run)
    assert step == 4 and weights.is_file()  # used to be deleted in favour of step 8
    assert not (ckpts / "step_00000002.safetensors").exists()
    Trainer(load_run_config(run), run, resume=True, quiet=True).fit()  # resumes from it


def test_resume_refuses_a_checkpoint_of_another_task_or_step(data, tmp_path):
    from refusion.checkpoint import read_checkpoint, save_checkpoint

    run = tmp_path / "run"
    _run_with_checkpoints(data, run, "schedule.max_steps=2")
    _, weights, _ = latest_checkpoint(run)
    ck = read_checkpoint(weights)
    nets = {}
    tr = Trainer(load_run_config(run), run, resume=True, quiet=True)
    for name, module in tr.networks.items():
        module.load_state_dict(ck.tensors[name])
        nets[name] = module
    save_checkpoint(weights, nets, task="mif", step=2, extra={})
    with pytest.raises(UserError, match="is a mif checkpoint of step 2, but .* is a mfif run"):
        Trainer(load_run_config(run), run, resume=True, quiet=True)
    save_checkpoint(weights, nets, task="mfif", step=1, extra={})  # another step's weights
    with pytest.raises(UserError, match="is a mfif checkpoint of step 1, but .* at step 2"):
        Trainer(load_run_config(run), run, resume=True, quiet=True)


@pytest.mark.parametrize("damage", ["rng", "adam_shape", "adam_step"])
def test_a_damaged_training_state_is_one_line(data, tmp_path, damage):
    run = tmp_path / "run"
    _run_with_checkpoints(data, run, "schedule.max_steps=2")
    _, _, state = latest_checkpoint(run)
    blob = torch.load(state, weights_only=True)
    if damage == "rng":
        blob["rng"] = {"torch": torch.zeros(3)}
        needle = "no usable random generator state"
    elif damage == "adam_shape":
        st = blob["optim"]["fusion"]["state"]
        st[next(iter(st))]["exp_avg"] = torch.zeros(7, 3)
        needle = "no usable fusion optimiser state .*exp_avg of shape \\(7, 3\\)"
    else:
        st = blob["optim"]["reconstruction"]["state"]
        st[next(iter(st))]["step"] = torch.zeros(3)
        needle = "no usable reconstruction optimiser state .*step count of shape \\(3,\\)"
    torch.save(blob, state)
    with pytest.raises(UserError, match=needle) as info:
        Trainer(load_run_config(run), run, resume=True, quiet=True)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ validation
def test_validation_subset_spans_the_folder_and_is_said(tmp_path, capsys):
    root, val = tmp_path / "train", tmp_path / "val"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), root, "mfif")
    for ds, photo in (("one", "camera"), ("two", "coins")):
        write_pairs(make_pairs("mfif", [photo], 4, 1, side=32), val / ds, "mfif")
    tr = Trainer(_cfg(root, f"data.val={val}", "val.max_pairs=4"), tmp_path / "run")
    names = [p.name for p in tr.val_pairs]
    assert len(names) == 4 and {n.split("/")[0] for n in names} == {"one", "two"}, names
    assert "validating on 4 of the 8 validation pairs" in capsys.readouterr().err


# ------------------------------------------------------------------ memory
def test_uncached_pairs_train_exactly_as_cached_ones(data, tmp_path):
    from refusion.train.data import FilePair

    cached = Trainer(_cfg(data), tmp_path / "cached", quiet=True)
    cached.fit()
    lazy = Trainer(_cfg(data, "data.cache=false"), tmp_path / "lazy", quiet=True)
    assert all(isinstance(p, FilePair) for p in lazy.pairs)  # file names, no arrays
    lazy.fit()
    for name, module in cached.networks.items():
        for k, v in module.state_dict().items():
            assert torch.equal(v, lazy.networks[name].state_dict()[k]), (name, k)


def test_a_file_gone_after_the_check_is_named(tmp_path):
    from refusion.train.data import check_and_load, discover_pairs

    root = tmp_path / "d"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), root, "mfif")
    (pair,) = check_and_load(discover_pairs(root), "skip", keep=False)
    pair.path_a.unlink()
    with pytest.raises(UserError, match="image not found: .*readable when training started"):
        pair.a  # noqa: B018 - the access decodes


def test_a_file_gone_in_a_worker_is_one_line(data, tmp_path):
    root = tmp_path / "d"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), root, "mfif")
    tr = Trainer(_cfg(root, "data.cache=false", "data.workers=1"), tmp_path / "run", quiet=True)
    for p in (root / "A").iterdir():
        p.unlink()
    with pytest.raises(UserError) as info:
        tr.fit()
    msg = str(info.value)
    assert msg.startswith("image not found") and "\n" not in msg, msg
    assert "readable when training started" in msg


def test_a_folder_that_cannot_be_listed_is_said(tmp_path, monkeypatch):
    from refusion.train import data as dmod

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dmod.Path, "iterdir", refuse)
    assert dmod._no_images_text(tmp_path) == "holds no images that can be read (Permission denied)"


def test_a_large_cache_is_said(data, tmp_path, monkeypatch, capsys):
    from refusion.train import trainer as tr

    monkeypatch.setattr(tr, "CACHE_NOTE_BYTES", 0)
    Trainer(_cfg(data), tmp_path / "run")
    assert "GiB of memory (in each process); data.cache=false" in capsys.readouterr().err
