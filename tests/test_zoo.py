"""Named weights: publishing with a model card, resolution, the CLIs' defaults, card checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from refusion import zoo
from refusion.checkpoint import read_checkpoint, save_checkpoint
from refusion.cli.fuse import main as fuse_main
from refusion.cli.main import main as refusion_main
from refusion.errors import UserError
from refusion.models import (
    FusionConfig,
    FusionNet,
    ProposalConfig,
    ProposalNet,
    ReconstructionConfig,
    ReconstructionNet,
)

TINY = FusionConfig(dim=8, blocks=1, heads=2)
FACTS = {
    "data": "generated test pairs",
    "split": "train 3 / test 1",
    "recipe": "refusion/configs/tasks/ivif.yaml",
    "wall_time_s": 1.5,
    "machine": "pytest",
    "test_metrics": {"TNO": {"EN": 6.5, "SD": 40.25, "SSIM": 0.7}},
}


def _ckpt(path: Path, *, task: str = "ivif", loss: str = "learned", fusion_cfg=TINY,
          double: bool = False) -> Path:
    nets = {"fusion": FusionNet(fusion_cfg),
            "reconstruction": ReconstructionNet(ReconstructionConfig(width=4))}
    if loss == "learned":
        nets["proposal"] = ProposalNet(ProposalConfig(width=4))
    if double:
        nets = {k: v.double() for k, v in nets.items()}
    return save_checkpoint(path, nets, task=task, step=5,
                           extra={"ablation": {"loss": loss, "fusion": "direct"}, "seed": 0})


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch) -> Path:
    """A weights folder holding ``ivif`` (learnt, from a float64 run) and ``ivif-fixed``."""
    folder = tmp_path / "zoo"
    zoo.publish_weights(_ckpt(tmp_path / "run.safetensors", double=True), "ivif", folder, FACTS)
    zoo.publish_weights(_ckpt(tmp_path / "fixed.safetensors", loss="fixed"), "ivif-fixed",
                        folder, FACTS)
    monkeypatch.setenv(zoo.ENV_DIR, str(folder))
    # only this folder: the weights the package ships would change names and defaults
    monkeypatch.setattr(zoo, "_package_dir", lambda: None)
    return folder


def _info(name: str) -> zoo.WeightsInfo:
    info = zoo.find_weights(name)
    assert info is not None
    return info


# --- publishing -------------------------------------------------------------------------------
def test_publish_writes_weights_and_card(zoo_dir, tmp_path):
    assert sorted(p.name for p in zoo_dir.iterdir()) == [
        "ivif-fixed.json", "ivif-fixed.safetensors", "ivif.json", "ivif.safetensors"]  # no temps
    card = json.loads((zoo_dir / "ivif.json").read_text())
    for key in (*zoo.REQUIRED_FACTS, "steps", "architecture", "sha256", "size_bytes",
                "project_version", "task", "variant"):
        assert key in card
    assert card["task"] == "ivif" and card["variant"] == "learnt" and card["steps"] == 5
    assert card["test_metrics"] == FACTS["test_metrics"]
    assert card["sha256"] == zoo.sha256_file(zoo_dir / "ivif.safetensors")
    assert card["size_bytes"] == (zoo_dir / "ivif.safetensors").stat().st_size < 200_000
    ckpt = read_checkpoint(zoo_dir / "ivif.safetensors")
    assert card["architecture"] == ckpt.configs
    assert card["architecture"]["fusion"] == TINY.to_dict()
    assert set(ckpt.tensors) == {"fusion", "proposal", "reconstruction"}  # P and R kept
    assert {t.dtype for ts in ckpt.tensors.values() for t in ts.values()} == {torch.float32}
    fixed = json.loads((zoo_dir / "ivif-fixed.json").read_text())
    assert fixed["variant"] == "fixed" and fixed["networks"] == ["fusion", "reconstruction"]


def test_publish_refuses_bad_names_and_facts(tmp_path):
    fixed = _ckpt(tmp_path / "fixed.safetensors", loss="fixed")
    with pytest.raises(UserError, match="reserved for the learnt ivif"):
        zoo.publish_weights(fixed, "ivif", tmp_path / "z", FACTS)
    with pytest.raises(UserError, match="missing machine, test_metrics"):
        zoo.publish_weights(fixed, "ivif-fixed", tmp_path / "z",
                            {k: v for k, v in FACTS.items()
                             if k not in ("machine", "test_metrics")})
    with pytest.raises(UserError, match="lower-case"):
        zoo.publish_weights(fixed, "../evil", tmp_path / "z", FACTS)
    with pytest.raises(UserError, match="facts say 9 steps"):
        zoo.publish_weights(fixed, "ivif-fixed", tmp_path / "z", {**FACTS, "steps": 9})
    assert not (tmp_path / "z").exists() or not any((tmp_path / "z").iterdir())


# --- listing and resolution -------------------------------------------------------------------
def test_list_and_resolve(zoo_dir, tmp_path):
    names = [(w.name, w.task, w.variant) for w in zoo.list_weights()]
    assert ("ivif", "ivif", "learnt") in names and ("ivif-fixed", "ivif", "fixed") in names
    assert names.index(("ivif", "ivif", "learnt")) < names.index(("ivif-fixed", "ivif", "fixed"))
    assert zoo.resolve_weights("ivif", None) == str(zoo_dir / "ivif.safetensors")
    assert zoo.resolve_weights("ivif-fixed", "ivif") == str(zoo_dir / "ivif-fixed.safetensors")
    assert zoo.resolve_weights(None, "ivif") == str(zoo_dir / "ivif.safetensors")
    assert zoo.resolve_weights("", None) == str(zoo_dir / "ivif.safetensors")  # ivif default
    own = _ckpt(tmp_path / "own.safetensors")
    assert zoo.resolve_weights(str(own), "mfif") == str(own)  # a path is left alone
    missing = str(tmp_path / "missing.onnx")
    assert zoo.resolve_weights(missing, None) == missing  # the loader names missing files
    assert zoo.shipped_name(zoo_dir / "ivif.safetensors") == "ivif"
    assert zoo.shipped_name(own) is None


def test_unknown_name_and_missing_default_are_one_line(zoo_dir):
    with pytest.raises(UserError) as exc:
        zoo.resolve_weights("ivf", "ivif")
    msg = str(exc.value)
    assert "--weights ivf: no such file and no shipped weights of that name" in msg
    assert "available: ivif, ivif-fixed" in msg and "\n" not in msg
    with pytest.raises(UserError, match=r"no shipped weights for task 'mfif'.*refusion weights"):
        zoo.resolve_weights(None, "mfif")


def test_a_run_folder_points_to_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match=r"is a folder \(give a checkpoint file\)"):
        zoo.resolve_weights(str(run), "ivif")
    (run / "final.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as exc:
        zoo.resolve_weights(str(run), "ivif")
    assert str(exc.value) == (f"--weights {run} is a folder: give a checkpoint in it, e.g. "
                              f"{run / 'final.safetensors'}")


def test_env_folders_shadow_in_order(zoo_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    zoo.publish_weights(_ckpt(tmp_path / "o.safetensors", task="ivif"), "ivif", other,
                        {**FACTS, "machine": "other"})
    monkeypatch.setenv(zoo.ENV_DIR, f"{other}{zoo.os.pathsep}{zoo_dir}")
    assert _info("ivif").card["machine"] == "other"
    assert _info("ivif-fixed").path.parent == zoo_dir
    monkeypatch.setenv(zoo.ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="is not a folder"):
        zoo.list_weights()


# --- card checks ------------------------------------------------------------------------------
def test_card_matches_tensors(zoo_dir):
    for w in zoo.list_weights():
        assert zoo.check_card(w) == [], w.name


def test_edited_architecture_fails_the_check(zoo_dir):
    card_path = zoo_dir / "ivif.json"
    card = json.loads(card_path.read_text())
    card["architecture"]["fusion"]["dim"] = 16
    card_path.write_text(json.dumps(card))
    problems = zoo.check_card(_info("ivif"))
    assert any("architecture differs" in p for p in problems)
    assert any("does not fit the model" in p for p in problems)  # dim 16 cannot hold dim 8


def test_swapped_tensors_fail_the_check(zoo_dir, tmp_path):
    other = _ckpt(tmp_path / "big.safetensors", fusion_cfg=FusionConfig(dim=12, blocks=1, heads=2))
    (zoo_dir / "ivif.safetensors").write_bytes(other.read_bytes())
    problems = zoo.check_card(_info("ivif"))
    assert any("sha256" in p for p in problems)
    assert any("architecture differs" in p for p in problems)
    assert any("does not fit the model" in p for p in problems)


def test_missing_card_is_reported(zoo_dir):
    (zoo_dir / "ivif-fixed.json").unlink()
    assert "model card missing" in zoo.check_card(_info("ivif-fixed"))[0]


def test_shipped_weights_check():
    """What ships in refusion/weights matches its cards, loads and fuses; the task names stay
    the defaults (``ivif-fast`` is learnt too but must not shadow ``ivif``)."""
    from refusion.checkpoint import load_fusion_model

    shipped = {w.name: w for w in zoo.list_weights() if w.source == "package"}
    tasks = ("ivif", "mif", "mfif", "meif")
    assert set(tasks) | {f"{t}-fixed" for t in tasks} <= set(shipped)
    x = torch.rand(1, 2, 24, 40)
    for w in shipped.values():
        assert zoo.check_card(w) == [], w.name
        assert w.task in tasks
        net = load_fusion_model(w.path, "cpu")[0].eval()
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 1, 24, 40) and torch.isfinite(y).all(), w.name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, w.name
    for t in tasks:
        assert zoo.default_weights(t).name == t


# --- command line -----------------------------------------------------------------------------
def test_fuse_by_name_and_by_default(zoo_dir, pair_files, tmp_path, capsys):
    torch.set_num_threads(1)
    a, b = pair_files
    opts = ["--backend", "torch", "--device", "cpu", "-q"]
    named, default = tmp_path / "named.png", tmp_path / "default.png"
    assert fuse_main([str(a), str(b), "-o", str(named), "--weights", "ivif", *opts]) == 0
    assert "weights ivif" in capsys.readouterr().err
    assert fuse_main([str(a), str(b), "-o", str(default), *opts]) == 0  # --task ivif default
    assert "weights ivif" in capsys.readouterr().err
    x, y = cv2.imread(str(named)), cv2.imread(str(default))
    assert x is not None and x.shape == y.shape and (x == y).all()
    with pytest.raises(SystemExit) as exc:
        fuse_main([str(a), str(b), "-o", str(tmp_path / "m.png"), "--task", "mif", *opts])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no shipped weights for task 'mif'" in err
    with pytest.raises(SystemExit):
        fuse_main([str(a), str(b), "-o", str(tmp_path / "m.png"), "--weights", "ivif",
                   "--task", "mfif", *opts])
    assert "trained for 'ivif'" in capsys.readouterr().err


def test_refusion_weights_lists_and_checks(zoo_dir, capsys):
    assert refusion_main(["weights"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "task", "variant"]
    row = next(line for line in out if line.startswith("ivif "))
    assert "learnt" in row and "TNO: EN 6.5 SD 40.25 SSIM 0.7" in row
    assert refusion_main(["weights", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"ivif", "ivif-fixed"} <= {w["name"] for w in listed}
    assert refusion_main(["weights", "ivif-fixed"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == "fixed"
    assert refusion_main(["weights", "--check"]) == 0
    assert "model cards match" in capsys.readouterr().err
    card = json.loads((zoo_dir / "ivif.json").read_text())
    card["steps"] = 6
    (zoo_dir / "ivif.json").write_text(json.dumps(card))
    assert refusion_main(["weights", "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refusion weights: ivif: card steps 6, checkpoint 5"]


def test_refusion_weights_subprocess_one_line_error(zoo_dir):
    r = subprocess.run([sys.executable, "-m", "refusion.cli.main", "weights", "nope"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    # a fresh process also sees the package's own weights, listed after the folder's
    assert "no shipped weights named 'nope' (available: ivif, " in r.stderr
    assert "ivif-fixed" in r.stderr


def test_export_default_weights_of_task(zoo_dir, tmp_path, capsys):
    from refusion.export import read_onnx_metadata

    from refusion.cli.export import main as export_main

    torch.set_num_threads(1)
    out = tmp_path / "ivif.onnx"
    assert export_main(["--task", "ivif", "-o", str(out), "--no-check"]) == 0
    meta = read_onnx_metadata(out)
    assert meta["task"] == "ivif" and meta["weights_name"] == "ivif"
    assert "weights ivif" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["ivif", "--weights", "ivif", "-o", str(out)])
    assert "not both" in capsys.readouterr().err
