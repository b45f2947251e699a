"""experiments/output.py: the Markdown table and the environment record every results file shares."""

from __future__ import annotations

import torch

from experiments.output import environment, markdown_table


def test_markdown_table_aligns_one_or_every_column():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert markdown_table(["a", "b"], [], align="r") == "| a | b |\n|---:|---:|"
    assert markdown_table(["a", "b"], [["x", "3"]], align="lr").splitlines()[1] == "|---|---:|"


def test_environment_is_the_run_record_with_only_the_fields_given():
    cpu = torch.device("cpu")
    run = environment(cpu, dtype="float32", seed=3)
    assert {"device", "torch", "triton", "cut_cross_entropy", "python"} <= set(run)
    assert (run["dtype"], run["seed"]) == ("float32", 3)
    sweep = environment(cpu, cce_autotune="")
    assert "dtype" not in sweep and "seed" not in sweep and sweep["cce_autotune"] == ""
