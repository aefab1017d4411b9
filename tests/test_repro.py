"""The reproduction pipeline: splits, recipes, and `refusion repro` end to end on a tiny recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from refusion.checkpoint import load_fusion_model
from refusion.errors import UserError
from refusion.repro.splits import make_split, stage
from refusion.repro.train import recipe_path
from refusion.train.ablation import DecisionFusionNet
from refusion.train.synthetic import make_pairs, write_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def _touch_pairs(folder: Path, a: str, b: str, stems: list[str]) -> None:
    img = np.zeros((8, 8), np.uint8)
    for d in (a, b):
        (folder / d).mkdir(parents=True, exist_ok=True)
        for s in stems:
            cv2.imwrite(str(folder / d / f"{s}.png"), img)


@pytest.fixture
def fake_shared(tmp_path: Path) -> Path:
    """The shared data layout with a few placeholder pairs per dataset."""
    root = tmp_path / "data"
    iv = root / "ivif"
    _touch_pairs(iv / "LLVIP", "ir", "vi", [f"0100{i:02d}" for i in range(10)])
    (iv / "LLVIP" / "split_train.txt").write_text("010000\n010001\n010002\n010003\n010004\n")
    for name, n in (("MSRS_train", 4), ("VIFB", 5), ("M3FD", 1), ("MSRS_test", 3), ("TNO", 2)):
        _touch_pairs(iv / name, "ir", "vi", [f"{name.lower()}_{i}" for i in range(n)])
    for mod in ("CT", "PET", "SPECT"):
        _touch_pairs(root / "mif" / f"Harvard_{mod}-MRI", mod, "MRI", [str(i) for i in range(20)])
    _touch_pairs(root / "mfif" / "MFIFB", "A", "B",
                 [f"lytro_{i:02d}" for i in range(1, 5)] + [f"mffw_{i:02d}" for i in range(6)])
    _touch_pairs(root / "meif" / "MEFB", "under", "over", [f"scene{i}" for i in range(10)])
    return root


def _names(pairs) -> set[str]:
    return {p.name for p in pairs}


def test_ivif_split_follows_the_rules(fake_shared):
    s = make_split("ivif", fake_shared)
    pool = _names(s.train) | _names(s.val)
    assert {n for n in pool if n.startswith("LLVIP/")} == {f"LLVIP/0100{i:02d}" for i in range(5)}
    assert _names(s.test) == ({f"MSRS_test/msrs_test_{i}" for i in range(3)}
                              | {f"TNO/tno_{i}" for i in range(2)})
    assert len(pool) == 5 + 4 + 5 + 1 and len(s.val) == 2  # 10 % of 15, rounded
    assert not (_names(s.train) & _names(s.val)) and not (pool & _names(s.test))


@pytest.mark.parametrize("task", ["mif", "mfif", "meif"])
def test_splits_are_disjoint_seeded_and_on_record(fake_shared, task, tmp_path):
    s, again, other = (make_split(task, fake_shared, seed) for seed in (0, 0, 1))
    tr, va, te = _names(s.train), _names(s.val), _names(s.test)
    assert tr and va and te and not (tr & va) and not (tr & te) and not (va & te)
    assert s.names() == again.names()
    if task == "mfif":
        assert te == {f"MFIFB/lytro_{i:02d}" for i in range(1, 5)}
    else:
        assert s.names() != other.names()  # the seed matters where the split is random
    if task == "mif":  # 15 % of each of the three folders
        assert len(te) == 3 * 3 and all(sum(n.startswith(f"Harvard_{m}") for n in te) == 3
                                        for m in ("CT", "PET", "SPECT"))
    on_record = json.loads(s.to_json())
    assert on_record["test"] == [p.name for p in s.test] and on_record["task"] == task
    staged = stage(s.train, tmp_path / "staged")
    from refusion.train.data import discover_pairs

    assert {p.name for p in discover_pairs(staged).pairs} == tr


def test_missing_dataset_is_a_user_error(fake_shared):
    import shutil

    shutil.rmtree(fake_shared / "ivif" / "TNO")
    with pytest.raises(UserError, match="TNO"):
        make_split("ivif", fake_shared)
    with pytest.raises(UserError, match="no 'mif' folder"):
        make_split("mif", fake_shared / "nowhere")


def test_unwritable_work_or_results_fail_before_training(fake_shared, tmp_path):
    from refusion.repro.run import run_repro

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for kwargs, where in (({"work": blocker}, blocker / "mfif"), ({"results": blocker}, blocker),
                          ({"publish": blocker / "w"}, blocker / "w")):
        args = {"work": tmp_path / "work", "results": tmp_path / "res", **kwargs}
        with pytest.raises(UserError, match=f"cannot write into {where}"):
            run_repro("mfif", fake_shared, recipe="tiny", quiet=True, **args)
    assert not (tmp_path / "work" / "mfif" / "learned").exists()  # nothing was trained


def test_recipes_resolve_and_load():
    from refusion.train.config import build_config

    for task in ("ivif", "mif", "mfif", "meif"):
        cpu = build_config(task, recipe_path(task, "cpu"))
        paper = build_config(task, recipe_path(task, "paper"))
        assert (paper.schedule.epochs, paper.schedule.meta_steps, paper.schedule.fusion_steps,
                paper.schedule.batch, paper.schedule.patch) == (50, 600, 1622, 4, 128)
        assert paper.optim.lr_fusion == 1e-4
        assert cpu.schedule.epochs * (cpu.schedule.meta_steps + cpu.schedule.fusion_steps) < 2000
    with pytest.raises(UserError, match="--recipe"):
        recipe_path("ivif", "nonexistent")


def test_repro_end_to_end_on_a_tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data" / "mfif" / "MFIFB"
    pairs = make_pairs("mfif", ["camera", "coins"], 3, 0, side=40)
    for i, p in enumerate(pairs):  # two of them become the "Lytro" test pairs
        p.name = f"lytro_{i + 1:02d}" if i < 2 else f"gen_{i:02d}"
    write_pairs(pairs, data, "mfif")
    from refusion.repro.run import run_repro

    work, results = tmp_path / "work", tmp_path / "results"
    res = run_repro("mfif", tmp_path / "data", recipe="tiny",
                    variants=("learned", "fixed", "decision"), work=work, results=results,
                    quiet=True, publish=tmp_path / "weights")
    page = res.page.read_text()
    for row in ("| learned |", "| fixed |", "| decision |", "| average |", "| maximum |"):
        assert row in page
    # the verdict sentence with its counts (whatever the tiny run's counts are)
    assert re.search(r"The learnt loss (beats the fixed loss \(W = V = 1/2\) on \d+ of \d+ |"
                     r"does not beat the fixed loss \(W = V = 1/2\) on any of the \d+ )", page)
    assert "**Does the learnt V follow focus?**" in page  # multi-focus pages check P's V maps
    assert "**The decision map and its loss.**" in page  # pages with a decision row measure it
    assert "For comparison, with the 'learned' run's P" in page
    assert "paper's own numbers for this task are not in the table" in page
    from refusion.repro.report import Scores, collapse_notes

    copied = Scores("mfif", ("EN",), {"m": {"p1": {"EN": 1.0}, "p2": {"EN": 1.0}}},
                    {"m": {"I_a": 0, "I_b": 2}})
    assert collapse_notes(copied) == [
        "'m' returned I_b unchanged on 2 of 2 test pairs (a collapsed model; metrics that "
        "compare F with a source, such as SCD, are then undefined): its row scores I_b itself, "
        "so a high mark there is the metrics' verdict on a copy of one source, not on a "
        "fusion."]
    copied.copies["m"]["I_b"] = 1
    assert collapse_notes(copied)[0].endswith("are then undefined).")
    values = json.loads((results / "mfif.json").read_text())["values"]
    assert set(values) == {"learned", "fixed", "decision", "average", "maximum"}
    for per_pair in values.values():
        assert set(per_pair) == {"MFIFB/lytro_01", "MFIFB/lytro_02"}
        assert all(np.isfinite(v) for row in per_pair.values() for v in row.values())
    for png in ("mfif_curves.png", "mfif_example.png"):
        img = cv2.imread(str(results / png))
        assert img is not None and img.shape[0] > 50
    # the published weights resolve by name, and their cards match their tensors
    from refusion.zoo import check_card, list_weights

    monkeypatch.setenv("REFUSION_WEIGHTS_DIR", str(tmp_path / "weights"))
    shipped = {w.name: w for w in list_weights() if w.source != "package"}
    assert {"mfif", "mfif-fixed"} <= set(shipped) and "mfif-decision" not in shipped
    for w in shipped.values():
        assert check_card(w) == []
    card = shipped["mfif"].card
    (means,) = card["test_metrics"].values()
    assert means["EN"] == pytest.approx(
        np.mean([r["EN"] for r in values["learned"].values()]), abs=1e-4)
    assert card["wall_time_s"] > 0 and card["split"].startswith("docs/results/splits/mfif.json")
    # the decision variant's checkpoint loads as the decision network
    model, _ = load_fusion_model(res.checkpoints["decision"])
    assert isinstance(model, DecisionFusionNet)
    # a second run reuses the finished runs instead of training again
    finals = {v: (work / "mfif" / v / "final.safetensors").stat().st_mtime_ns
              for v in ("learned", "fixed")}
    run_repro("mfif", tmp_path / "data", recipe="tiny", variants=("learned", "fixed"),
              work=work, results=results, quiet=True)
    assert finals == {v: (work / "mfif" / v / "final.safetensors").stat().st_mtime_ns
                      for v in ("learned", "fixed")}
    # ... but never for another request: other settings or another split
    from refusion.errors import UserError

    with pytest.raises(UserError, match=r"trained with other settings \(fusion.dim 4 -> 8"):
        run_repro("mfif", tmp_path / "data", recipe="tiny", variants=("fixed",), work=work,
                  results=results, quiet=True, overrides=["fusion.dim=8"])
    with pytest.raises(UserError, match="trained on another split"):
        run_repro("mfif", tmp_path / "data", recipe="tiny", variants=("fixed",), work=work,
                  results=results, quiet=True, seed=1)
    # an attempt that failed before its first checkpoint, in a folder made before run folders
    # were marked, is trained over (the trainer alone refuses such a folder)
    fixed = work / "mfif" / "fixed"
    import shutil

    shutil.rmtree(fixed / "checkpoints")
    for name in ("final.safetensors", ".refusion-run"):
        (fixed / name).unlink()
    run_repro("mfif", tmp_path / "data", recipe="tiny", variants=("fixed",), work=work,
              results=results, quiet=True)
    assert (fixed / "final.safetensors").is_file()


def test_only_the_cpu_recipe_writes_into_the_shipped_results_by_default():
    from refusion.cli.repro import default_results

    assert default_results("cpu", "runs/repro") == "docs/results"
    for recipe in ("tiny", "paper", "my.yaml"):
        assert default_results(recipe, "runs/repro") == str(Path("runs/repro") / "results")


def test_repro_overrides_may_follow_the_options():
    from refusion.cli.main import parse_args

    args = parse_args(["repro", "ivif", "fusion.dim=8", "--recipe", "tiny", "fusion.blocks=1"])
    assert args.recipe == "tiny"
    assert args.overrides == ["fusion.dim=8", "fusion.blocks=1"]
    with pytest.raises(SystemExit):  # anything else after the options is still an error
        parse_args(["repro", "ivif", "--recipe", "tiny", "--bogus"])


def test_the_verdict_says_a_loss_plainly():
    from refusion.repro.run import _verdict

    class _Scores:
        metrics = ["EN", "SD"]

        def __init__(self, learned):
            self.learned = learned

        def summary(self):
            return {"learned": {"EN": (self.learned, 0), "SD": (self.learned, 0)},
                    "fixed": {"EN": (5.0, 0), "SD": (5.0, 0)}, "average": {"EN": (4.0, 0),
                                                                   "SD": (6.0, 0)}}

        def defined(self, method, metric):
            return frozenset({"p1", "p2"})

    assert _verdict(_Scores(6.0)) == (
        "The learnt loss beats the fixed loss (W = V = 1/2) on 2 of 2 metrics (EN, SD). "
        "Against plain average the learnt model is ahead on 1 of 2 metrics.")
    assert _verdict(_Scores(4.5)).startswith(
        "The learnt loss does not beat the fixed loss (W = V = 1/2) on any of the 2 metrics; "
        "the fixed loss is ahead on all of them. Against plain average the learnt model is "
        "ahead on 1 of 2 metrics.")


def test_the_table_marks_no_best_over_different_pairs():
    from refusion.repro.report import Scores, markdown_table

    nan = float("nan")
    same = Scores("mfif", ("EN", "SCD"), {
        "a": {"p1": {"EN": 7.0, "SCD": 1.0}, "p2": {"EN": 7.0, "SCD": 1.2}},
        "b": {"p1": {"EN": 6.0, "SCD": 1.5}, "p2": {"EN": 6.0, "SCD": nan}},
    })
    rows = {ln.split("|")[1].strip(): ln.split("|") for ln in markdown_table(same).splitlines()}
    assert rows["a"][2].strip().startswith("**7 ")  # EN: same pairs, the best in bold
    # SCD: b's mean is over p1 only (1.5 > 1.1), so not "best": said, and no bold in the column
    assert rows["b"][3].strip() == "1.5 ± 0 (n=1)" and "**" not in rows["a"][3] + rows["b"][3]


def test_the_shared_folder_default(monkeypatch, tmp_path):
    from refusion.cli import repro as repro_cli
    from refusion.cli.main import parse_args

    monkeypatch.delenv("REFUSION_SHARED", raising=False)
    checkout = tmp_path / "project"  # a source checkout: shared/ beside it
    (checkout / "refusion" / "cli").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(repro_cli, "__file__", str(checkout / "refusion" / "cli" / "repro.py"))
    assert Path(parse_args(["repro", "mfif"]).data) == tmp_path / "shared" / "data"
    installed = tmp_path / "site-packages"  # an installed package: ../shared, as documented
    (installed / "refusion" / "cli").mkdir(parents=True)
    monkeypatch.setattr(repro_cli, "__file__", str(installed / "refusion" / "cli" / "repro.py"))
    assert Path(parse_args(["repro", "mfif"]).data) == Path("..") / "shared" / "data"
    monkeypatch.setenv("REFUSION_SHARED", str(tmp_path))
    args = parse_args(["repro", "mfif"])
    assert (Path(args.data), Path(args.reference)) == (tmp_path / "data", tmp_path / "reference")


def test_the_verdict_compares_only_means_over_the_same_pairs():
    from refusion.repro.report import Scores
    from refusion.repro.run import _verdict

    nan = float("nan")
    scores = Scores("mfif", ("EN", "SCD"), {
        "learned": {"p1": {"EN": 7.0, "SCD": 1.0}, "p2": {"EN": 7.0, "SCD": 1.2}},
        "fixed": {"p1": {"EN": 6.0, "SCD": 1.5}, "p2": {"EN": 6.0, "SCD": nan}},
    })
    assert _verdict(scores) == (
        "The learnt loss beats the fixed loss (W = V = 1/2) on 1 of 1 metrics (EN). Not "
        "compared: SCD (undefined on some test pairs for one of the two).")
