"""refusion-eval: pairing by stem across formats, tables, per-image JSON, user errors."""

from __future__ import annotations

import csv
import io
import json
import math

import cv2
import numpy as np
import pytest

from refusion.cli.eval import main
from refusion.metrics import EvalResult, compute_suite, evaluate_folders, read_grey

METRICS = "EN,SD,MSE,Qabf"


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("ir", "vi", "good", "bad")}
    for d in dirs.values():
        d.mkdir()
    for i in range(3):
        a = rng.integers(0, 256, (24, 20), dtype=np.uint8)
        b = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        yb = cv2.cvtColor(b, cv2.COLOR_BGR2YCrCb)[..., 0]
        good = ((a.astype(int) + yb) // 2).astype(np.uint8)
        cv2.imwrite(str(dirs["ir"] / f"{i:02d}.png"), a)
        cv2.imwrite(str(dirs["vi"] / f"{i:02d}.bmp"), b)  # other format, same stem
        cv2.imwrite(str(dirs["good"] / f"{i:02d}.png"), good)
        cv2.imwrite(str(dirs["bad"] / f"{i:02d}.png"), rng.integers(0, 256, (24, 20), np.uint8))
    cv2.imwrite(str(dirs["ir"] / "extra.png"), a)  # no partner
    (dirs["bad"] / "02.png").unlink()  # a missing fused image
    return dirs


def test_python_api_pairs_and_values(folders):
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], folders["bad"]],
                           metrics=METRICS.split(","), workers=1)
    assert set(res.values["good"]) == {"00", "01", "02"}
    assert set(res.values["bad"]) == {"00", "01"}
    assert any("extra.png" in m for m in res.missing)
    assert any("bad" in m and "'02'" in m for m in res.missing)
    a = read_grey(folders["ir"] / "01.png")
    b = read_grey(folders["vi"] / "01.bmp")
    f = read_grey(folders["good"] / "01.png")
    assert res.values["good"]["01"] == compute_suite(a, b, f, METRICS.split(","))


def test_markdown_bolds_best_per_column(folders):
    rng = np.random.default_rng(1)  # every method scored on the same images
    cv2.imwrite(str(folders["bad"] / "02.png"), rng.integers(0, 256, (24, 20), np.uint8))
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], folders["bad"]],
                           metrics=["Qabf", "MSE"], workers=1)
    md = res.to_markdown()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    summ = res.summary()
    best_q = max(("good", "bad"), key=lambda k: summ[k]["Qabf"]["mean"])
    best_mse = min(("good", "bad"), key=lambda k: summ[k]["MSE"]["mean"])
    for col, best in ((2, best_q), (3, best_mse)):  # exactly the best cell of each column
        bold = {k for k in ("good", "bad") if "**" in rows[k].split("|")[col]}
        assert bold == {best}
    assert f"{summ['good']['Qabf']['mean']:.4f}" in rows["good"]


def test_no_best_is_marked_over_different_images(folders):
    # "bad" lacks 02, and its 01 is flat, where CC is undefined: its CC mean is over one image
    cv2.imwrite(str(folders["bad"] / "01.png"), np.full((24, 20), 90, np.uint8))
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], folders["bad"]],
                           metrics=["Qabf", "CC"], workers=1)
    assert any("01.png" in n and "CC" in n for n in res.notes)
    md = res.to_markdown()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "**" not in md and not res.comparable("Qabf") and not res.comparable("CC")
    assert "(n=1)" in rows["bad"].split("|")[3] and "(n=" not in rows["good"]
    assert "No best marked for Qabf, CC" in md and "Fused images per method: good 3, bad 2" in md
    row = next(csv.DictReader(io.StringIO(res.to_csv())))
    assert row["method"] == "good" and row["CC_n"] == "3" and row["n_images"] == "3"
    assert [r["CC_n"] for r in csv.DictReader(io.StringIO(res.to_csv()))] == ["3", "1"]


def test_cli_json_csv_round_trip(folders, tmp_path, capsys):
    per = tmp_path / "per_image.json"
    rc = main(["--a", str(folders["ir"]), "--b", str(folders["vi"]),
               "--fused", str(folders["good"]), "--fused", str(folders["bad"]),
               "--metrics", METRICS, "--format", "json", "--per-image", str(per),
               "--workers", "2"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "extra.png" in err
    table = json.loads(out)
    saved = json.loads(per.read_text())
    assert table == saved
    res = EvalResult.from_json(per.read_text())
    assert res.to_json() == per.read_text()
    ref = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], folders["bad"]],
                           metrics=METRICS.split(","), workers=1)
    assert res.values == ref.values
    rc = main(["--a", str(folders["ir"]), "--b", str(folders["vi"]),
               "--fused", str(folders["good"]), "--metrics", METRICS, "--format", "csv",
               "--workers", "1"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["method"] == "good" and rows[0]["n_images"] == "3"
    assert math.isclose(float(rows[0]["EN_mean"]), ref.summary()["good"]["EN"]["mean"])


def test_cli_convention_changes_values(folders, capsys):
    args = ["--a", str(folders["ir"]), "--b", str(folders["vi"]), "--fused",
            str(folders["good"]), "--metrics", "MSE", "--format", "json", "--workers", "1"]
    main(args)
    plain = json.loads(capsys.readouterr().out)
    main(args + ["--convention", "tang"])
    tang = json.loads(capsys.readouterr().out)
    assert tang["conventions"] == {"MSE": "tang"}
    p = plain["methods"]["good"]["summary"]["MSE"]["mean"]
    t = tang["methods"]["good"]["summary"]["MSE"]["mean"]
    assert t == pytest.approx(p / 65025)


def test_single_files_form_one_triplet_with_the_folder_values(folders, capsys):
    ir, vi, good = folders["ir"] / "01.png", folders["vi"] / "01.bmp", folders["good"] / "01.png"
    assert main(["--a", str(ir), "--b", str(vi), "--fused", str(good), "--metrics", METRICS,
                 "--format", "json", "--workers", "1"]) == 0
    single = json.loads(capsys.readouterr().out)["methods"]["01"]
    per_folder = evaluate_folders(folders["ir"], folders["vi"], folders["good"],
                                  metrics=METRICS.split(","), workers=1)
    for m in METRICS.split(","):
        assert single["summary"][m]["mean"] == pytest.approx(per_folder.values["good"]["01"][m])
    with pytest.raises(SystemExit):
        main(["--a", str(ir), "--b", str(folders["vi"]), "--fused", str(good)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{ir} is a file" in err[0] and "all as folders" in err[0]


@pytest.mark.parametrize("extra,needle", [
    (["--metrics", "EN,NOPE"], "NOPE"),
    (["--convention", "bogus"], "bogus"),
    (["--output", __file__ + "/table.md"], "cannot write " + __file__ + "/table.md"),
])
def test_cli_user_errors_one_line(folders, capsys, extra, needle):
    with pytest.raises(SystemExit) as exc:
        main(["--a", str(folders["ir"]), "--b", str(folders["vi"]),
              "--fused", str(folders["good"])] + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "error:" in err[0]


def test_cli_missing_folder_and_size_mismatch(folders, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--a", str(tmp_path / "nope"), "--b", str(folders["vi"]),
              "--fused", str(folders["good"])])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err
    cv2.imwrite(str(folders["good"] / "00.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(SystemExit) as exc:
        main(["--a", str(folders["ir"]), "--b", str(folders["vi"]),
              "--fused", str(folders["good"]), "--metrics", "EN", "--workers", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "size mismatch" in err and "00.png" in err


def test_cli_unreadable_image(folders, capsys):
    (folders["good"] / "01.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exc:
        main(["--a", str(folders["ir"]), "--b", str(folders["vi"]),
              "--fused", str(folders["good"]), "--metrics", "EN", "--workers", "1"])
    assert exc.value.code == 2 and "01.png" in capsys.readouterr().err


def test_real_tno_triplet_if_available():
    from pathlib import Path

    shared = Path(__file__).resolve().parents[1].parent / "shared"
    ir = shared / "data" / "ivif" / "TNO" / "ir"
    if not ir.is_dir():
        pytest.skip(f"{ir} not present (the shared data folder ships beside the repo in CI)")
    files = sorted(ir.iterdir())[:1]
    vi = shared / "data" / "ivif" / "TNO" / "vi"
    a = read_grey(files[0])
    b = read_grey(next(vi.glob(files[0].stem + ".*")))
    vals = compute_suite(a, b, np.round((a + b) / 2))
    assert all(math.isfinite(v) for v in vals.values())
    assert 0 < vals["Qabf"] < 1 and vals["EN"] > 0


def _run(folders, *extra, fused=("good",)):
    args = ["--a", str(folders["ir"]), "--b", str(folders["vi"]), "--workers", "1"]
    for f in fused:
        args += ["--fused", str(folders[f]) if f in folders else f]
    return main(args + list(extra))


def test_float_files_slightly_below_zero_are_on_the_unit_scale(folders, tmp_path):
    # a network's float output undershoots 0 a little: still 0..1 data, scaled by 255, and
    # the clipped values are reported with the file, not silently turned into a dark image
    out, ref = tmp_path / "float", tmp_path / "ref"
    out.mkdir()
    ref.mkdir()
    for i in range(3):
        g = cv2.imread(str(folders["good"] / f"{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        f = g.astype(np.float32) / 255
        f[0, 0] = -0.002
        g[0, 0] = 0  # what the clipped float file holds, as 8 bits
        cv2.imwrite(str(out / f"{i:02d}.tiff"), f)
        cv2.imwrite(str(ref / f"{i:02d}.png"), g)
    res = evaluate_folders(folders["ir"], folders["vi"], [ref, out],
                           metrics=["EN", "SD"], workers=1)
    for stem in ("00", "01", "02"):
        for m in ("EN", "SD"):
            assert res.values["float"][stem][m] == pytest.approx(
                res.values["ref"][stem][m], rel=1e-9)
    assert any("00.tiff" in n and "clipped" in n for n in res.read_notes)
    assert not res.notes  # nothing is undefined


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_pixel_data_is_one_line_naming_the_file(folders, tmp_path, capsys, workers):
    nan = tmp_path / "nan"
    nan.mkdir()
    for i in range(3):
        f = np.full((24, 20), 0.5, np.float32)
        f[3, 4] = np.nan
        cv2.imwrite(str(nan / f"{i:02d}.tiff"), f)
    with pytest.raises(SystemExit) as exc:
        _run(folders, "--metrics", "EN", "--workers", workers, fused=[str(nan)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "contains NaN or Inf" in err[0]
    assert ".tiff" in err[0]
    signed = tmp_path / "signed"
    signed.mkdir()
    for i in range(3):
        cv2.imwrite(str(signed / f"{i:02d}.tiff"), np.full((24, 20), 100, np.int16))
    with pytest.raises(SystemExit):
        _run(folders, "--metrics", "EN", fused=[str(signed)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported pixel type int16" in err[0] and "00.tiff" in err[0]


def test_a_narrow_16bit_source_is_noted(folders, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        ir = cv2.imread(str(folders["ir"] / f"{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(raw / f"{i:02d}.png"), (ir.astype(np.uint16) * 8 + 7000))
    res = evaluate_folders(raw, folders["vi"], [folders["good"], folders["bad"]],
                           metrics=["EN"], workers=1)
    hits = [n for n in res.read_notes if "00.png: a 16-bit image using only levels" in n]
    assert len(hits) == 1  # once, though two methods were scored against it


def test_ties_are_all_bold_and_outputs_say_what_was_scored(folders, tmp_path, capsys):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(folders["good"], twin)
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], twin],
                           metrics=["EN", "SD"], workers=1)
    md = res.to_markdown()
    rows = [ln for ln in md.splitlines() if ln.startswith("| good") or ln.startswith("| twin")]
    assert len(rows) == 2 and all(r.count("**") == 4 for r in rows)  # both bold, both columns
    assert (f"Sources: A = {folders['ir']}, B = {folders['vi']}; 3 image pairs scored."
            in md)
    assert _run(folders, "--metrics", "EN,en,SD", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["a"] == str(folders["ir"]) and rows[0]["b"] == str(folders["vi"])
    assert rows[0]["fused"] == str(folders["good"])
    assert rows[0]["conventions"] == "EN=cddfuse;SD=cddfuse"
    assert [k for k in rows[0] if k.endswith("_mean")] == ["EN_mean", "SD_mean"]


def test_notes_name_the_method(folders, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        cv2.imwrite(str(flat / f"{i:02d}.png"), np.full((24, 20), 7, np.uint8))
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["good"], flat],
                           metrics=["CC"], workers=1)
    assert res.notes and all(n.startswith("flat: ") for n in res.notes)


@pytest.mark.parametrize(("args", "needle"), [
    (["--metrics", ","], "--metrics names no metric"),
    (["--metrics", "EN", "--fused", "{good}"], "is given twice"),
    (["--metrics", "EN", "--fused", "{nope}"], "no such file or folder: {nope}"),
    # a convention that changes nothing must not be accepted (the table would claim it)
    (["--metrics", "EN", "--convention", "SF.vifb"], "is for SF, which is not scored"),
    (["--metrics", "EN,SD", "--convention", "liu"], "applies to none of the scored metrics"),
    (["--metrics", "EN", "--format", "json", "--output", "{tmp}/t.csv"],
     "--format json contradicts --output"),
])
def test_more_one_line_errors(folders, tmp_path, capsys, args, needle):
    subst = {"good": str(folders["good"]), "nope": str(tmp_path / "nope.png"), "tmp": tmp_path}
    args = [a.format(**subst) for a in args]
    with pytest.raises(SystemExit) as exc:
        _run(folders, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and needle.format(**subst) in err[0]


def test_a_missing_single_file_is_named(folders, tmp_path, capsys):
    ir, vi = folders["ir"] / "01.png", folders["vi"] / "01.bmp"
    with pytest.raises(SystemExit):
        main(["--a", str(ir), "--b", str(vi), "--fused", str(tmp_path / "nope.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no such file or folder: {tmp_path / 'nope.png'}" in err[0]


def test_outputs_never_overwrite_an_image_or_each_other(folders, tmp_path, capsys):
    src = folders["ir"] / "00.png"
    before = src.read_bytes()
    with pytest.raises(SystemExit):
        _run(folders, "--metrics", "EN", "--output", str(src))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--output {src} would overwrite the input --a {src}" in err[0]
    assert src.read_bytes() == before
    same = tmp_path / "t.json"
    with pytest.raises(SystemExit):
        _run(folders, "--metrics", "EN", "--output", str(same), "--per-image", str(same))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--per-image" in err[0] and "--output" in err[0], err


@pytest.mark.parametrize(("name", "first"), [("t.csv", "method,"), ("t.json", "{"),
                                             ("t.md", "| Method"), ("t.txt", "| Method")])
def test_the_output_format_follows_the_extension(folders, tmp_path, name, first):
    out = tmp_path / name
    assert _run(folders, "--metrics", "EN", "--output", str(out)) == 0
    assert out.read_text().lstrip().startswith(first), out.read_text()[:80]
