"""kernels_bench/eager_point.py (issue 21.4's eager flash_ce point) runs end to end on a CPU:
the GPU rows are left out, the table prints and the CSV is written atomically."""

from __future__ import annotations

import csv

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; the GPU run is the lead's")
def test_eager_point_cpu_smoke(tmp_path, capsys):
    from kernels_bench import eager_point

    assert eager_point.main(["--n", "12", "--v", "50", "--d", "8", "--iters", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| flash_ce eager fwd+bwd |" in out and "attention math fwd+bwd" in out
    rows = list(csv.DictReader((tmp_path / "eager_point.csv").open()))
    assert [r["what"] for r in rows] == ["flash_ce eager fwd+bwd", "attention math fwd+bwd"]
    assert all(float(r["ms"]) > 0 and r["N"] == "12" for r in rows)


def test_eager_point_refuses_bad_arguments(tmp_path, capsys):
    from kernels_bench import eager_point

    assert eager_point.main(["--n", "0", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "x").exists()
