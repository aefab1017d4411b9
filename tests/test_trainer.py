"""The training loop: resume determinism, NaN stop, Ctrl-C, atomic checkpoints, P learning,
ablations, CLI."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.checkpoint import read_checkpoint
from refusion.errors import UserError
from refusion.train import Trainer, TrainingDiverged, build_config, meta
from refusion.train.ablation import DecisionFusionNet
from refusion.train.synthetic import make_pairs, write_pairs
from refusion.train.trainer import latest_checkpoint

TINY = [
    "schedule.epochs=2", "schedule.meta_steps=2", "schedule.fusion_steps=3", "schedule.patch=16",
    "schedule.batch=2", "fusion.dim=4", "fusion.blocks=1", "fusion.heads=2",
    "fusion.afm_expansion=1", "proposal.width=4", "reconstruction.width=4",
    "log.every=1", "log.panel_every=4", "log.checkpoint_every=3", "log.progress=false",
    "log.tensorboard=false",
    "optim.lr_proposal=1e-2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mf_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mf")
    write_pairs(make_pairs("mfif", ["camera", "coins"], 2, 0, side=48), root, "mfif")
    return root


def _cfg(root: Path, *extra: str):
    return build_config("mfif", None, [f"data.root={root}", *TINY, *extra])


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in trainer.networks.items()
            for k, v in m.state_dict().items()}


def test_resume_is_bit_identical(mf_data, tmp_path):
    full = Trainer(_cfg(mf_data), tmp_path / "full", quiet=True)
    full.fit()
    assert full.step == 10
    part = Trainer(_cfg(mf_data, "schedule.max_steps=5"), tmp_path / "part", quiet=True)
    part.fit()
    assert part.step == 5
    resumed = Trainer(_cfg(mf_data), tmp_path / "part", resume=True, quiet=True)
    assert resumed.step == 5
    resumed.fit()
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(10))  # no duplicated rows
    assert (tmp_path / "part" / "final.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "full" / "panels").iterdir())


def test_warmup_schedule_prepends_fusion_steps_as_epoch_0():
    from refusion.errors import UserError
    from refusion.train.config import StepSchedule, total_steps

    plain, warm = StepSchedule(2, 5), StepSchedule(2, 5, warmup=3)
    assert [plain(s) for s in range(10)] == [True, True, False, False, False] * 2
    assert [warm(s) for s in range(13)] == [False] * 3 + [True, True, False, False, False] * 2
    assert [warm.epoch(s) for s in range(13)] == [0] * 3 + [1] * 5 + [2] * 5
    assert [plain.epoch(s) for s in range(10)] == [1] * 5 + [2] * 5  # from 1, as the paper
    assert [s for s in range(13) if warm.epoch_ends(s)] == [2, 7, 12]
    assert [s for s in range(10) if plain.epoch_ends(s)] == [4, 9]
    cfg = _cfg(Path("."), "schedule.warmup_steps=3")
    assert StepSchedule.of(cfg) == StepSchedule(2, 5, 3)
    assert total_steps(cfg) == 3 + 2 * 5
    with pytest.raises(UserError, match="schedule.warmup_steps"):
        _cfg(Path("."), "schedule.warmup_steps=-1")


def test_warmup_trains_f_alone_then_runs_algorithm_1(mf_data, tmp_path):
    """``schedule.warmup_steps=W``: W steps that train F with the fixed loss while P and R keep
    their initialisation (as in the first meta block of Algorithm 1), then the epochs as
    usual, R included. For F and P this is exactly a fusion-only run of W steps with R frozen,
    resumed with meta steps and R trained."""
    from refusion.train.trainer import load_run_config

    def nets(t: Trainer, name: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in _weights(t).items() if k.startswith(name + ".")}

    one = Trainer(_cfg(mf_data, "schedule.warmup_steps=5", "schedule.epochs=1",
                       "schedule.max_steps=5"), tmp_path / "one", quiet=True)
    start = _weights(one)
    one.fit()
    after_warmup = _weights(one)
    for name, same in (("fusion", False), ("proposal", True), ("reconstruction", True)):
        equal = [torch.equal(start[k], v) for k, v in nets(one, name).items()]
        assert all(equal) if same else not all(equal), name
    one = Trainer(load_run_config(tmp_path / "one", ["schedule.max_steps=0"]), tmp_path / "one",
                  resume=True, quiet=True)
    one.fit()
    assert one.step == 5 + 5
    for name in ("fusion", "proposal", "reconstruction"):  # the epoch trains all three
        assert not all(torch.equal(after_warmup[k], v) for k, v in nets(one, name).items()), name

    # by hand, the warm-up must last one epoch of the resumed schedule (2 meta + 3 fusion)
    by_hand = Trainer(_cfg(mf_data, "schedule.epochs=1", "schedule.meta_steps=0",
                           "schedule.fusion_steps=5", "optim.lr_reconstruction=0"),
                      tmp_path / "hand", quiet=True)
    by_hand.fit()
    cfg2 = load_run_config(tmp_path / "hand", ["schedule.epochs=2", "schedule.meta_steps=2",
                                               "schedule.fusion_steps=3",
                                               "optim.lr_reconstruction=1e-4"])
    resumed = Trainer(cfg2, tmp_path / "hand", resume=True, quiet=True)
    resumed.fit()
    assert resumed.step == 10
    for name in ("fusion", "proposal"):  # R differs: Adam at rate 0 still kept its moments
        a, b = nets(one, name), nets(resumed, name)
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_resume_applies_new_learning_rates(mf_data, tmp_path):
    part = Trainer(_cfg(mf_data, "schedule.max_steps=5"), tmp_path / "run", quiet=True)
    part.fit()
    frozen = ("optim.lr_fusion=0", "optim.lr_reconstruction=0", "optim.lr_proposal=0")
    resumed = Trainer(_cfg(mf_data, *frozen), tmp_path / "run", resume=True, quiet=True)
    before = _weights(resumed)
    resumed.fit()
    after = _weights(resumed)
    assert resumed.step == 10
    for k in before:  # Adam with learning rate 0 moves nothing
        assert torch.equal(before[k], after[k]), k
    from refusion.train.trainer import load_run_config

    assert load_run_config(tmp_path / "run").optim.lr_proposal == 0.0


def test_p_changes_and_checkpoints_are_complete(mf_data, tmp_path):
    tr = Trainer(_cfg(mf_data), tmp_path / "run", quiet=True)
    before = {k: v.clone() for k, v in tr.proposal.state_dict().items()}
    tr.fit()
    after = tr.proposal.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    step, w, s = latest_checkpoint(tmp_path / "run")
    assert step == 10
    ck = read_checkpoint(w)
    assert set(ck.tensors) == {"fusion", "proposal", "reconstruction"}
    state = torch.load(s, weights_only=True)
    assert state["step"] == 10 and set(state["optim"]) == {"fusion", "proposal", "reconstruction"}
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []
    assert len(list((tmp_path / "run" / "checkpoints").glob("step_*.safetensors"))) == 2  # keep


def test_failed_checkpoint_write_keeps_the_previous_one(mf_data, tmp_path, monkeypatch):
    tr = Trainer(_cfg(mf_data), tmp_path / "run", quiet=True)
    real_save = torch.save

    def flaky(obj, f, *a, **k):
        if obj["step"] >= 6:
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr("refusion.train.trainer.torch.save", flaky)
    with pytest.raises(OSError):
        tr.fit()
    step, w, s = latest_checkpoint(tmp_path / "run")
    assert step == 3 and w.is_file() and s.is_file()
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(mf_data, tmp_path, monkeypatch):
    real = meta.fusion_step_losses

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        if tr.step >= 7:
            out.fusion.total.data.fill_(math.nan)
        return out

    monkeypatch.setattr(meta, "fusion_step_losses", poisoned)
    tr = Trainer(_cfg(mf_data), tmp_path / "run", quiet=True)
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 7.*step_00000006"):
        tr.fit()
    step, w, _ = latest_checkpoint(tmp_path / "run")
    assert step == 6
    for v in read_checkpoint(w).tensors["fusion"].values():
        assert torch.isfinite(v).all()


def test_sigint_saves_a_checkpoint_then_stops(mf_data, tmp_path, sigint_default):
    def on_step(trainer, row):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler only sets a flag

    tr = Trainer(_cfg(mf_data), tmp_path / "run", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(on_step)
    assert latest_checkpoint(tmp_path / "run")[0] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    resumed = Trainer(_cfg(mf_data), tmp_path / "run", resume=True, quiet=True)
    assert resumed.fit().step == 10


def test_fixed_loss_ablation_has_no_p(mf_data, tmp_path):
    tr = Trainer(_cfg(mf_data, "ablation.loss=fixed"), tmp_path / "run", quiet=True)
    assert tr.proposal is None
    phases = []
    tr.fit(lambda t, row: phases.append(row))
    assert {r["phase"] for r in phases} == {"fusion"} and len(phases) == 6
    assert all(r["w_a"] == 0.5 and r["v_a"] == 0.5 for r in phases)
    ck = read_checkpoint(latest_checkpoint(tmp_path / "run")[1])
    assert "proposal" not in ck.tensors
    assert ck.extra["ablation"]["loss"] == "fixed"


def test_decision_fusion_is_a_convex_combination():
    from refusion.models import FusionConfig

    net = DecisionFusionNet(FusionConfig(dim=4, blocks=1, heads=2))
    a, b = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    x = torch.cat([a, b], 1)
    w = net.decision(x)
    f = net(x)
    torch.testing.assert_close(f, w * a + (1 - w) * b)
    assert ((f >= torch.minimum(a, b) - 1e-6) & (f <= torch.maximum(a, b) + 1e-6)).all()


def test_decision_ablation_trains(mf_data, tmp_path):
    tr = Trainer(_cfg(mf_data, "ablation.fusion=decision", "schedule.max_steps=4"),
                 tmp_path / "run", quiet=True)
    assert isinstance(tr.fusion, DecisionFusionNet)
    before = {k: v.clone() for k, v in tr.fusion.state_dict().items()}
    res = tr.fit()
    assert res.step == 4
    assert any(not torch.equal(before[k], v) for k, v in tr.fusion.state_dict().items())
    from refusion.checkpoint import load_fusion_model

    model, _ = load_fusion_model(res.checkpoint)  # the checkpoint knows it is a decision map
    assert isinstance(model, DecisionFusionNet)


def test_cli_trains_and_resumes(mf_data, tmp_path, capsys):
    from refusion.cli.train import main

    out = tmp_path / "cli"
    args = ["--task", "mfif", "--data", str(mf_data), "--out", str(out), *TINY,
            "schedule.max_steps=3"]
    assert main(args) == 0
    assert main(["--resume", str(out), "schedule.max_steps=4"]) == 0
    assert latest_checkpoint(out)[0] == 4
    with pytest.raises(SystemExit) as exc:
        main(["--task", "mfif", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "data folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("module, prog", [("refusion.cli.train", "refusion-train"),
                                          ("refusion.train", "refusion-train")])
def test_cli_error_names_the_command_under_python_m(module, prog, tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", module, "--task", "mfif", "--data",
                          str(tmp_path / "missing")], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"{prog}: error: data folder not found: {tmp_path / 'missing'}"]


def test_opencv_log_lines_do_not_precede_a_data_error(tmp_path):
    # OpenCV is first imported with the data, after the command silenced what it could
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), data, "mfif")
    shutil.copy(next((data / "B").iterdir()), data / "B" / "bad.png")
    (data / "A" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "refusion.cli.train", "--task", "mfif", "--data",
                        str(data), "--out", str(tmp_path / "run"), "data.on_error=fail",
                        "log.progress=false"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.png" in lines[0], lines


def test_a_mistyped_val_fails_before_the_training_pairs_are_decoded(tmp_path):
    data = tmp_path / "data"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=32), data, "mfif")
    for side in ("A", "B"):  # decoding would stop on this pair first (data.on_error=fail)
        (data / side / "zz.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"validation data \(--val, data.val\): data folder "
                       "not found"):
        Trainer(_cfg(data, f"data.val={tmp_path / 'vall'}", "data.on_error=fail"),
                tmp_path / "run", quiet=True)


def test_a_data_error_leaves_no_run_folder(tmp_path):
    (tmp_path / "data" / "A").mkdir(parents=True)  # A without B: no pairs
    run = tmp_path / "runs" / "r"
    with pytest.raises(UserError, match="no paired folders"):
        Trainer(_cfg(tmp_path / "data"), run, quiet=True)
    assert not run.exists() and not run.parent.exists()


def test_an_unwritable_run_folder_is_one_line(mf_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for run, needle in ((blocker, f"cannot write into {blocker} \\(--out\\): it is a file"),
                        (blocker / "run", f"cannot make {blocker / 'run'} \\(--out\\): "
                                          f"{blocker} is a file")):
        with pytest.raises(UserError, match=needle):
            Trainer(_cfg(mf_data), run, quiet=True)
    assert blocker.read_text() == "x"


def test_cli_print_config_shows_the_paper_defaults(capsys):
    from refusion.cli.train import main

    assert main(["--task", "ivif", "--print-config"]) == 0
    text = capsys.readouterr().out
    for s in ("epochs: 50", "meta_steps: 600", "fusion_steps: 1622", "batch: 4", "patch: 128"):
        assert s in text


def test_unknown_override_is_one_line_error(capsys):
    from refusion.cli.train import main

    with pytest.raises(SystemExit):
        main(["--task", "ivif", "schedule.epoch=3", "--print-config"])
    assert "unknown config key 'schedule.epoch'" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("schedule: [3\n", "is not valid YAML: line 2, column 1: expected ',' or ']'"),
    ("a:\n\tb: 1\n", "is not valid YAML: line 2, column 1: found character '\\t'"),
    ("- 1\n", "must hold a mapping at the top level"),
    (b"\xff\xfe", "is not UTF-8 text"),
    ("schedule:\n  epochs: 2\n  epochs: 3\n",
     "is not valid YAML: line 3, column 3: key 'epochs' is given twice"),
])
def test_bad_config_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    from refusion.cli.train import main

    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit):
        main(["--task", "ivif", "--config", str(path), "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config file {path} {message}" in err[0], err


@pytest.mark.parametrize("name", ["cpu", "mfif-cpu", "mfif-cpu.yaml",
                                  "refusion/configs/recipes/mfif-cpu.yaml"])
def test_config_takes_a_shipped_recipe_by_name_from_anywhere(tmp_path, monkeypatch, capsys,
                                                            name):
    # the docs' source-tree path works from an installed package too (any working directory)
    import yaml

    from refusion.cli.train import main
    from refusion.config import read_yaml_mapping
    from refusion.train.config import recipe_file

    monkeypatch.chdir(tmp_path)
    assert main(["--task", "mfif", "--config", name, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    shipped = read_yaml_mapping(recipe_file("mfif", "cpu"))
    assert printed["schedule"]["meta_steps"] == shipped["schedule"]["meta_steps"]
    assert printed["optim"]["lr_fusion"] == shipped["optim"]["lr_fusion"]
    for missing in ("nosuch", "experiments/cpu.yaml", "/nonexistent/tiny.yaml", "./cpu"):
        # a mistyped path of one's own file never falls back to a shipped recipe
        with pytest.raises(SystemExit):
            main(["--task", "mfif", "--config", missing, "--print-config"])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--config {missing}: no such file" in err[0], err
        assert "tiny" in err[0]
    with pytest.raises(SystemExit):
        main(["--task", "mfif", "--config", str(tmp_path), "--print-config"])
    assert f"--config {tmp_path} is a folder, not a YAML file" in capsys.readouterr().err


def test_resume_with_a_broken_saved_config_is_one_line(tmp_path, capsys):
    from refusion.cli.train import main

    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path)])
    assert f"{tmp_path / 'config.yaml'} is empty" in capsys.readouterr().err

    (tmp_path / "config.yaml").write_text("schedule: {batch: 4\n")
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config file {tmp_path / 'config.yaml'} is not valid YAML" in err[0]


@pytest.mark.parametrize("state, needle", [
    (b"garbage", "not a torch file, or damaged"),
    ({"step": 2, "evil": math.gcd}, "names the Python object math.gcd, which only a full unp"),
    ([1, 2], "is not a refusion-train training state"),
    ({"step": 2, "optim": {}, "rng": {}}, "holds no usable fusion optimiser state"),
])
def test_a_damaged_training_state_is_one_line(mf_data, tmp_path, state, needle):
    run = tmp_path / "run"
    Trainer(_cfg(mf_data, "schedule.max_steps=2", "log.checkpoint_every=2"), run,
            quiet=True).fit()
    step, _, path = latest_checkpoint(run)
    assert step == 2
    if isinstance(state, bytes):
        path.write_bytes(state)
    else:
        torch.save(state, path)  # a function object: only a full unpickler would load it
    with pytest.raises(UserError, match=needle) as exc:
        Trainer(_cfg(mf_data), run, resume=True, quiet=True)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_validation_writes_best_checkpoint(mf_data, tmp_path):
    tr = Trainer(_cfg(mf_data, f"data.val={mf_data}", "val.metrics=[EN,SF,Qabf]"),
                 tmp_path / "run", quiet=True)
    res = tr.fit()
    assert res.best is not None and res.best["metric"] == "Qabf"
    assert (tmp_path / "run" / "best.safetensors").is_file()
    lines = (tmp_path / "run" / "validation.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,EN,SF,Qabf" and len(lines) == 3
    assert np.isfinite([float(x) for x in lines[1].split(",")[2:]]).all()


@pytest.mark.parametrize("override, needle", [
    ("fusion.heads=0", "'fusion.heads' must be >= 1, got 0"),
    ("fusion.dim=0", "'fusion.dim' must be >= 1"),
    ("fusion.heads=3", "'fusion.heads' (3) must divide fusion.dim (4)"),
    ("fusion.ffn_expansion=0", "'fusion.ffn_expansion' must be a number > 0"),
    ("proposal.width=0", "'proposal.width' must be >= 1"),
    ("reconstruction.dilations=[0]", "'reconstruction.dilations' must be a non-empty list"),
    ("optim.lr_fusion=-1", "'optim.lr_fusion' must be a finite number >= 0, got -1.0"),
    ("optim.lr_fusion=.nan", "'optim.lr_fusion' must be a finite number >= 0, got nan"),
    ("optim.betas=[0.9]", "'optim.betas' expects 2 values, got [0.9]"),
    ("optim.betas=[1.5,0.9]", "'optim.betas[0]' must be in [0, 1), got 1.5"),
    ("optim.weight_decay=-1", "'optim.weight_decay' must be a finite number >= 0"),
    ("meta.inner_lr_fusion=-1", "'meta.inner_lr_fusion' must be a finite number >= 0"),
    ("meta.fd_epsilon=0", "'meta.fd_epsilon' must be a finite number > 0"),
    ("data.workers=-1", "'data.workers' must be >= 0"),
    ("seed=-1", "'seed' must be an integer from 0 to 2**63 - 1"),
    ("seed=99999999999999999999999", "'seed' must be an integer from 0 to 2**63 - 1"),
    ("data.split_seed=-1", "'data.split_seed' must be an integer"),
    ("device=foo", "'device' must be auto, cpu, cuda or cuda:N, got 'foo'"),
    ("threads=-4", "'threads' must be >= 0"),
    ("threads=100000", "'threads' must be at most 4x the"),
    ("schedule.max_steps=-3", "'schedule.max_steps' must be >= 0"),
    ("schedule.epochs=true", "'schedule.epochs' expects int, got True"),
    ("log.keep=0", "'log.keep' must be >= 1, got 0"),
    ("val.max_pairs=-1", "'val.max_pairs' must be >= 1"),
    ("val.max_side=0", "'val.max_side' must be >= 16"),
    ("val.metrics=[FOO]", "'val.metrics': unknown metric 'FOO'"),
    ("val.best=SD", "'val.best' (SD) must be one of val.metrics (EN, Qabf)"),
])
def test_bad_settings_are_refused_before_any_work(mf_data, override, needle):
    with pytest.raises(UserError) as exc:
        _cfg(mf_data, "val.metrics=[EN,Qabf]", override)
    assert needle in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


def test_val_best_is_matched_whatever_its_case(mf_data, tmp_path):
    tr = Trainer(_cfg(mf_data, f"data.val={mf_data}", "val.metrics=[EN,Qabf]", "val.best=qabf"),
                 tmp_path / "run", quiet=True)
    assert tr.fit().best["metric"] == "Qabf" and (tmp_path / "run" / "best.safetensors").is_file()


def _steps(run: Path) -> list[int]:
    return [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]


def test_resume_after_a_crash_logs_every_step_once(mf_data, tmp_path):
    # a crash after checkpoint 6 (steps 6.. already logged, then killed): rows 6.. are redone
    run = tmp_path / "run"
    Trainer(_cfg(mf_data, "log.keep=5"), run, quiet=True).fit()
    assert _steps(run) == list(range(10))
    (run / "checkpoints" / "latest").write_text("6\n")  # as if killed before checkpoint 9
    Trainer(_cfg(mf_data, "log.keep=5"), run, resume=True, quiet=True).fit()
    assert _steps(run) == list(range(10))


def test_resume_with_new_validation_settings(mf_data, tmp_path):
    run = tmp_path / "run"
    val = [f"data.val={mf_data}", "schedule.max_steps=5"]
    Trainer(_cfg(mf_data, *val, "val.metrics=[EN,MSE]", "val.best=MSE"), run, quiet=True).fit()
    tr = Trainer(_cfg(mf_data, *val, "val.metrics=[EN,SF]", "val.best=SF",
                      "schedule.max_steps=0"), run, resume=True, quiet=True)
    assert tr.best is None  # MSE's best value means nothing for SF
    res = tr.fit()
    assert res.best["metric"] == "SF" and res.best["step"] == 10
    import csv

    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert list(rows[0]) == ["step", "epoch", "EN", "MSE", "SF"]  # one header for all rows
    assert [r["step"] for r in rows] == ["5", "10"] and [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["MSE"] and not rows[0]["SF"] and rows[1]["SF"] and not rows[1]["MSE"]
    from refusion.checkpoint import read_checkpoint

    # a checkpoint records the epoch its last step belongs to; panels are drawn and named like
    # checkpoints, by the steps finished: every log.panel_every=4 steps and after the last
    # (5 was the last of the first sitting, max_steps=5)
    ck = read_checkpoint(run / "final.safetensors")
    assert ck.step == 10 and ck.extra["epoch"] == 2
    assert sorted(p.name for p in (run / "panels").iterdir()) == [
        "step_00000004.png", "step_00000005.png", "step_00000008.png", "step_00000010.png"]


def test_new_validation_metrics_when_no_validation_row_survives_the_resume(mf_data, tmp_path):
    # killed after the validation at 5 but with checkpoint 3 the newest: the file keeps only its
    # header, and the resumed run adds a metric
    import csv

    run = tmp_path / "run"
    val = [f"data.val={mf_data}", "log.keep=5"]
    Trainer(_cfg(mf_data, *val, "val.metrics=[EN,SD]", "val.best=SD"), run, quiet=True).fit()
    (run / "checkpoints" / "latest").write_text("3\n")
    cfg = _cfg(mf_data, *val, "val.metrics=[EN,SD,SF]", "val.best=SF")
    Trainer(cfg, run, resume=True, quiet=True).fit()
    (run / "checkpoints" / "latest").write_text("3\n")  # and once more: the file still reads
    Trainer(cfg, run, resume=True, quiet=True).fit()
    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert [r["step"] for r in rows] == ["5", "10"] and None not in rows[0]
    assert list(rows[0]) == ["step", "epoch", "EN", "SD", "SF"] and rows[1]["SF"]


def test_a_run_resumes_from_any_working_directory(mf_data, tmp_path, monkeypatch):
    import yaml

    from refusion.cli.train import main

    monkeypatch.chdir(mf_data.parent)
    args = ["--task", "mfif", "--data", mf_data.name, "--out", str(tmp_path / "run"), *TINY,
            "schedule.max_steps=4"]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(mf_data)  # absolute, not as typed
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", str(tmp_path / "run"), "schedule.max_steps=6"]) == 0


def test_resume_refuses_options_it_would_ignore_and_says_when_done(mf_data, tmp_path, capsys):
    from refusion.cli.train import main

    run = str(tmp_path / "run")
    assert main(["--task", "mfif", "--data", str(mf_data), "--out", run, *TINY]) == 0
    capsys.readouterr()
    for extra in (["--out", str(tmp_path / "other")], ["--task", "ivif"],
                  ["--config", "tiny"]):
        with pytest.raises(SystemExit):
            main(["--resume", run, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be given with --resume" in err[0], err
    assert not (tmp_path / "other").exists()
    assert main(["--resume", run]) == 0
    assert f"already complete at step 10 ({Path(run) / 'final.safetensors'})" in \
        capsys.readouterr().err
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(SystemExit):
        main(["--resume", run, "schedule.max_steps=4"])
    assert "past the 4 steps" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # not rewritten
    # keys that define what the run's checkpoints hold cannot change on resume
    for extra in (["schedule.epochs=3", "ablation.loss=fixed"], ["fusion.dim=8"],
                  ["task=ivif"], ["proposal.width=8"], ["ablation.fusion=decision"]):
        with pytest.raises(SystemExit):
            main(["--resume", run, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot change when a run is resumed" in err[0], err
        assert extra[-1].split("=")[0] in err[0]
    # a complete run trains nothing more, so its config.yaml keeps describing it
    assert main(["--resume", run, "optim.lr_fusion=5e-4"]) == 0
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_task_in_a_config_file_or_override_must_match(tmp_path, capsys):
    from refusion.cli.train import main

    with pytest.raises(SystemExit):
        main(["--task", "mfif", "--print-config", "task=ivif"])
    assert "config key 'task' is 'ivif' but --task is 'mfif'" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: ivif\n")
    with pytest.raises(SystemExit):
        main(["--task", "mfif", "--config", str(cfg), "--print-config"])
    assert "config key 'task' is 'ivif'" in capsys.readouterr().err
    cfg.write_text("task: mfif\n")
    assert main(["--task", "mfif", "--config", str(cfg), "--print-config"]) == 0
    from refusion.train.config import config_from_dict

    with pytest.raises(UserError, match="config key 'task' must be one of"):
        config_from_dict({"task": "bogus"})  # a hand-edited config.yaml of a run


def test_yaml_null_is_unset_for_text_keys_and_refused_for_numbers(capsys):
    from refusion.cli.train import main

    assert main(["--task", "mfif", "--print-config", "data.val=null"]) == 0
    assert "val: ''" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--task", "mfif", "--print-config", "schedule.epochs=null"])
    assert "config key 'schedule.epochs' expects int, got null" in capsys.readouterr().err


def test_a_pair_no_metric_can_score_is_left_out_of_the_means(mf_data, tmp_path):
    import warnings

    import cv2

    val = tmp_path / "val"
    write_pairs(make_pairs("mfif", ["camera"], 1, 0, side=48), val, "mfif")
    for side in ("A", "B"):  # a 1x1 pair: SF, AG, SSIM, Qabf are undefined on it
        cv2.imwrite(str(val / side / "tiny.png"), np.full((1, 1), 128, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # summarised in the note, not one warning per pair
        tr = Trainer(_cfg(mf_data, f"data.val={val}", "val.metrics=[EN,SF]", "val.best=SF",
                          "schedule.max_steps=5"), tmp_path / "run", quiet=True)
        notes = []
        tr._note = notes.append
        res = tr.fit()
    assert tr.val_left_out == {"SF": 1}
    assert res.best["metric"] == "SF" and math.isfinite(res.best["value"])
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert any("left out: SF on 1 of 2 pairs" in n for n in notes), notes


def test_csv_line_endings_stay_one_kind_across_a_resume(mf_data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(mf_data, "schedule.max_steps=4"), run, quiet=True).fit()
    Trainer(_cfg(mf_data), run, resume=True, quiet=True).fit()
    assert b"\r\n" not in (run / "metrics.csv").read_bytes()


def test_data_options_conflict_and_overrides_mix_with_options(mf_data, capsys):
    from refusion.cli.train import main

    with pytest.raises(SystemExit):
        main(["--task", "mfif", "--data", str(mf_data), "--a", str(mf_data), "--print-config"])
    assert "either as --data DIR or as --a DIR --b DIR" in capsys.readouterr().err
    assert main(["--task", "mfif", "schedule.epochs=3", "--data", str(mf_data),
                 "schedule.batch=2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "batch: 2" in out


def test_a_failed_first_attempt_leaves_nothing_in_the_rerun(mf_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_fusion_step", _nan_fusion_step)
    with pytest.raises(TrainingDiverged, match="start again with the same --out"):
        Trainer(_cfg(mf_data, "schedule.meta_steps=0"), run, quiet=True).fit()
    assert _steps(run) == []  # nothing logged for the failed step itself
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text() + "0,0,meta\n")
    monkeypatch.undo()
    Trainer(_cfg(mf_data, "schedule.max_steps=3"), run, quiet=True).fit()
    assert _steps(run) == [0, 1, 2]  # the earlier attempt's rows are gone


def _nan_fusion_step(self, batch):
    self._guard(False, "fusion")


def test_a_stop_during_the_last_step_still_ends_with_final(mf_data, tmp_path, capsys):
    from refusion.cli.train import main

    run = tmp_path / "run"
    tr = Trainer(_cfg(mf_data), run, quiet=True)

    def stop_at_the_end(trainer, row):
        if trainer.step == trainer.total:
            trainer.request_stop()

    with pytest.raises(KeyboardInterrupt):
        tr.fit(on_step=stop_at_the_end)
    final = run / "final.safetensors"
    assert read_checkpoint(final).step == 10
    final.unlink()  # as an older version left it: resuming the complete run writes it
    assert main(["--resume", str(run)]) == 0
    assert read_checkpoint(final).step == 10
    assert "already complete at step 10" in capsys.readouterr().err


def test_ctrl_c_from_a_terminal_with_loader_workers_is_handled_once(mf_data, tmp_path):
    # a terminal's Ctrl-C reaches the whole process group, DataLoader workers included: only
    # the training process may answer it (once), and the run must still save and stop
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "refusion.train", "--task", "mfif", "--data", str(mf_data),
           "--out", str(run), *TINY, "schedule.epochs=400", "data.workers=2",
           "log.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").is_file() or len(_steps(run)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.count("interrupt: finishing this step") == 1, err
    assert latest_checkpoint(run) is not None  # the Ctrl-C checkpoint
