"""core.env.cap_gpu_memory (``train.gpu_memory_gib``): the fraction it asks PyTorch for, its
refusals, and run.py's one line for a bad value (the cap itself needs CUDA: faked here)."""

from __future__ import annotations

import json

import pytest
import torch

from core import env
from experiments import run
from tests.test_run_cli import tiny  # noqa: F401  (the fixture: fast quickstart bindings)


def test_the_cap_is_the_fraction_of_the_card_and_never_above_one(monkeypatch):
    asked = []
    props = type("Props", (), {"total_memory": 80 * 2**30})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device: asked.append((f, device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    env.cap_gpu_memory(torch.device("cuda:1"), 20)
    env.cap_gpu_memory(torch.device("cuda:1"), 500)  # more than the card: the whole card
    env.cap_gpu_memory(torch.device("cuda"), 40)  # no index: the current device (PyTorch wants one)
    env.cap_gpu_memory(torch.device("cuda:1"), None)  # no cap: nothing asked
    env.cap_gpu_memory(torch.device("cpu"), 20)  # nothing to cap on a CPU
    assert asked == [(0.25, 1), (1.0, 1), (0.5, 3)]


@pytest.mark.parametrize("bad", [0, -1.0, "8", True, float("inf"), float("nan")])
def test_a_bad_cap_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="train.gpu_memory_gib must be a number of GiB > 0"):
        env.cap_gpu_memory(torch.device("cpu"), bad)


def test_run_py_refuses_a_bad_cap_in_one_line_and_records_none_on_a_cpu(tiny, tmp_path, capsys):
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(tmp_path / "bad"), *tiny,
                     "--gin_bindings", "train.gpu_memory_gib = -2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "train.gpu_memory_gib must be a number of GiB > 0" in err[0]
    assert not (tmp_path / "bad").exists()
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(tmp_path / "ok"), *tiny,
                     "--gin_bindings", "train.gpu_memory_gib = 8", "--gin_bindings", "train.epochs = 1"]) == 0
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["settings"]["parallel"]["gpu_memory_gib"] is None  # a CPU: no cap applied


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_cap_turns_a_larger_allocation_into_out_of_memory():
    """In a child process (the cap holds for the whole process): under a 1 GiB cap a 0.5 GiB
    tensor fits and a 2 GiB one raises out of memory."""
    import subprocess
    import sys

    from tests.child_env import child_env

    code = ("import torch\nfrom core.env import cap_gpu_memory\n"
            "dev = torch.device('cuda')\ncap_gpu_memory(dev, 1)\n"
            "a = torch.empty(2**27, device=dev)\n"  # 0.5 GiB
            "try:\n    torch.empty(2**29, device=dev)\nexcept torch.OutOfMemoryError:\n    print('capped')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "capped", out.stderr[-2000:]
