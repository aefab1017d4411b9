"""bench/report.py: speed-ups, the machine that measured them, and its one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402


def _entry(config: str, size: str, minimum: float, **describe: str) -> dict:
    return {"stats": {"min": minimum, "mean": minimum * 1.1},
            "extra_info": {"config": config, "size": size,
                           "describe": {"device": "cpu", "threads": "2", **describe}}}


def _doc(entries: list[dict], node: str = "bench-host", cpu: str = "Test CPU 9000",
         libraries: bool = True) -> dict:
    machine_info = {"node": node, "python_version": "3.11.7",
                    "cpu": {"brand_raw": cpu, "count": 2}}
    if libraries:
        machine_info["refusion"] = {"cpu": cpu, "torch": "9.9.9", "onnxruntime": "1.2.3"}
    return {"machine_info": machine_info, "datetime": "2026-12-03T06:00:00",
            "commit_info": {"id": "0123456789abcdef", "dirty": False}, "benchmarks": entries}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_speed_ups_and_the_measuring_machine(tmp_path):
    js = _write(tmp_path / "a.json", _doc([
        _entry("onnxruntime", "256x256", 0.1), _entry("eager-baseline", "256x256", 0.4),
        _entry("eager-baseline", "480x640", 1.2), _entry("onnxruntime", "480x640", 0.3)]))
    out = tmp_path / "bench.md"
    assert report.main(["--json", str(js), "--out", str(out)]) == 0
    md = out.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| eager-baseline |")
            or ln.startswith("| onnxruntime |")]
    assert rows[0].startswith("| eager-baseline | 400 ms")  # the baseline row comes first
    assert "100 ms (mean 110), **4.00x**" in rows[1] and "**4.00x**" in rows[1].split("|")[3]
    # the machine is the one recorded in the JSON, not the one making the report
    assert "- torch: 9.9.9" in md and "- host: bench-host" in md and "- commit: 0123456789ab" in md
    assert "| onnxruntime | cpu | 2 |" in md  # how each configuration ran
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_files_from_two_machines_are_flagged(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _doc([_entry("eager-baseline", "256x256", 0.4)]))
    b = _write(tmp_path / "b.json", _doc([_entry("onnxruntime", "256x256", 0.1)],
                                         node="elsewhere", libraries=False))
    out = tmp_path / "bench.md"
    assert report.main(["--json", str(a), str(b), "--out", str(out)]) == 0
    assert "was measured on another machine (elsewhere" in capsys.readouterr().err
    assert "**Warning:**" in out.read_text()


def test_a_video_only_file_has_no_empty_latency_table(tmp_path):
    video = {"benchmarks": [{"stats": {"min": 1.0, "mean": 1.0}, "extra_info": {
        "end_to_end_fps": 0.9, "model_only_fps": 1.0, "ratio": 0.9, "source": "clip",
        "backend": "onnxruntime", "device": "cpu", "frames": 8, "decode_ms": 1.0,
        "infer_ms": 900.0, "encode_ms": 2.0}}]}
    out = tmp_path / "bench.md"
    assert report.main(["--json", str(_write(tmp_path / "v.json", video)), "--out",
                        str(out)]) == 0
    md = out.read_text()
    assert "\n|---|\n" not in md and "| backend |  |" not in md  # no empty latency table
    assert "![latency" not in md and "**90.0%**" in md
    assert not (tmp_path / "bench.png").exists()


@pytest.mark.parametrize(("case", "needle"), [
    ("missing", "cannot read"), ("empty", "is not a pytest-benchmark JSON"),
    ("png-out", "the report is a .md file")])
def test_one_line_errors(tmp_path, case, needle):
    good = _write(tmp_path / "a.json", _doc([_entry("eager-baseline", "256x256", 0.4)]))
    (tmp_path / "empty.json").write_text("")
    js = {"missing": tmp_path / "nope.json", "empty": tmp_path / "empty.json"}.get(case, good)
    out = tmp_path / ("bench.png" if case == "png-out" else "bench.md")
    with pytest.raises(SystemExit) as exc:
        report.main(["--json", str(js), "--out", str(out)])
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()
