"""experiments/bench/study.py: plans, skip / move-aside / retry logic, budget and deadline, failure
records (fake commands via ``python -c``), one real tiny run.py run, and bench_epoch's OOM row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from experiments import run
from experiments.bench import bench_epoch, study

ROOT = Path(__file__).resolve().parents[1]


def fake(name: str, folder: Path, *, code: str = "", exit_code: int = 0, kind: str = "run",
         expect=None) -> study.Step:
    """A step running ``python -c``: ``code`` first, then metrics.json (exit 0) or an error line."""
    script = "\n".join([
        "import json, sys, time, pathlib",
        f"out = pathlib.Path({str(folder)!r}); out.mkdir(parents=True, exist_ok=True)",
        "(out / 'argv.json').write_text(json.dumps(sys.argv[1:]))",
        code,
        "print('training...', file=sys.stderr)",
        f"if {exit_code}: print('error: out of device memory in epoch 1', file=sys.stderr); sys.exit({exit_code})",
        "(out / 'metrics.json').write_text(json.dumps({'test': {'NDCG@10': 0.25}}))",
        "(out / 'checkpoint.pt').write_text('x'); (out / 'best.pt').write_text('x')",
    ])
    return study.Step(name, ("-c", script), kind, expect)


def quiet(**kwargs) -> tuple[dict, list[str]]:
    lines = []
    return study.run_study(say=lines.append, **kwargs), lines


# --- plans --------------------------------------------------------------------------------


def test_real_plan_runs_seed_zero_of_every_config_first(tmp_path: Path):
    steps = study.build_plan(["real"], out=tmp_path, seeds=[0, 1])
    names = [s.name for s in steps]
    assert len(names) == 16 and len(set(names)) == 16
    assert names[:8] == [f"{d}_{loss}_s0" for d in ("beauty5core", "ml100k")
                         for loss in ("ce", "cce", "cce_exact", "flash_ce")]
    assert all(n.endswith("_s1") for n in names[8:])
    step = steps[names.index("beauty5core_cce_exact_s1")]
    args = run._parse_args(list(step.argv[1:]))  # run.py accepts what the plan passes
    assert args.gin == ["gin/beauty5core_cce_exact.gin"] and args.out == str(tmp_path / step.name)
    assert args.gin_bindings == ["train.seed = 1"]
    assert all((ROOT / s.argv[2]).is_file() for s in steps)


def test_synthetic_plan_binds_epochs_and_the_extra_bindings(tmp_path: Path):
    steps = study.build_plan(["synthetic"], out=tmp_path, seeds=[3, 4], epochs=2,
                             binds=["train.compile = True"])
    assert [s.name for s in steps] == [f"{d}_{loss}_s3" for d in ("ml20m_like", "beauty_like")
                                       for loss in ("ce", "cce", "cce_exact", "flash_ce")]
    assert all((ROOT / s.argv[2]).is_file() for s in steps)  # the cce_exact files exist too
    args = run._parse_args(list(steps[2].argv[1:]))
    assert args.gin_bindings == ["train.seed = 3", "train.epochs = 2", "train.eval_every = 2",
                                 "train.compile = True"]  # the user's binding last: it wins


def test_scaling_plan_is_one_bench_process_per_preset_and_loss(tmp_path: Path):
    steps = study.build_plan(["scaling"], out=tmp_path, seeds=[0], scaling_users=1000)
    assert [s.name for s in steps] == [f"scaling/items-{n}_{loss}" for n in ("1m", "4m", "10m")
                                       for loss in ("cce", "ce")]
    args = bench_epoch._parse_args(list(steps[1].argv[1:]))  # bench_epoch accepts the flags
    assert (args.gin, args.variants) == (["gin/items_1m_ce.gin"], ["static"])
    assert all((ROOT / s.argv[2]).is_file() for s in steps)  # the configs training runs
    assert (args.epochs, args.warmup_steps) == (1, 20)
    assert args.gin_bindings == ["dataset.synthetic_overrides = {'n_users': 1000}"]
    assert args.out == str(tmp_path / "scaling" / "items-1m_ce") and steps[1].expect == ("items-1m", "ce")


def test_sampled_plan_binds_the_sampled_loss_on_the_ce_configs(tmp_path: Path):
    import gin

    from core.losses import loss_name, sampled_ce

    steps = study.build_plan(["sampled"], out=tmp_path, seeds=[0, 1], epochs=2)
    names = [s.name for s in steps]
    variants = [f"sampled_ce_{k}_{sampler}" for k in (256, 3000) for sampler in ("uniform", "popularity")]
    assert names == ([f"{d}_{v}_s{seed}" for seed in (0, 1) for d in ("beauty5core", "ml100k") for v in variants]
                     + [f"{d}_{v}_s0" for d in ("ml20m_like", "beauty_like") for v in variants])
    for step in (steps[names.index("ml100k_sampled_ce_256_popularity_s1")],
                 steps[names.index("beauty_like_sampled_ce_3000_uniform_s0")]):
        args = run._parse_args(list(step.argv[1:]))
        assert (ROOT / args.gin[0]).is_file() and args.gin[0].endswith("_ce.gin")
        gin.clear_config()
        try:  # the bindings parse, and the run's loss is named as the run
            gin.parse_config_files_and_bindings([str(ROOT / args.gin[0])], args.gin_bindings)
            assert loss_name(sampled_ce) in step.name
            assert gin.query_parameter("train.loss_fn").selector == "sampled_ce"
        finally:
            gin.clear_config()
    synthetic = run._parse_args(list(steps[-1].argv[1:])).gin_bindings
    assert synthetic[:3] == ["train.seed = 0", "train.epochs = 2", "train.eval_every = 2"]


@pytest.mark.parametrize("argv, message", [(["nope"], "unknown plan nope"),
                                           (["real", "--seeds", ""], "--seeds needs"),
                                           (["real", "--only", "zzz*"], "matches no run"),
                                           (["real", "--bind", "train.seed"], "--bind wants")])
def test_bad_arguments_are_one_error_line_and_write_nothing(tmp_path: Path, capsys, argv, message):
    out = tmp_path / "study"
    assert study.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not out.exists()


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path, capsys):
    out = tmp_path / "study"
    (out / "ml100k_ce_s0").mkdir(parents=True)  # a partial folder: reported, not moved
    assert study.main(["real", "--seeds", "0", "--only", "ml100k_*", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("would run") == 5 and "partial folder would be moved aside" in text
    assert sorted(p.name for p in out.iterdir()) == ["ml100k_ce_s0"]


# --- running ------------------------------------------------------------------------------


def test_complete_runs_are_skipped_and_partial_ones_moved_aside(tmp_path: Path):
    out = tmp_path / "study"
    (out / "a").mkdir(parents=True)
    (out / "a" / "metrics.json").write_text("{}")  # complete: must not run (it would overwrite argv.json)
    (out / "b").mkdir()
    (out / "b" / "log.txt").write_text("crashed")  # partial
    (out / "b.failed-1").mkdir()  # an older crash: the next free number is 2
    steps = [fake("a", out / "a"), fake("b", out / "b")]
    outcomes, lines = quiet(steps=steps, out=out, drop_checkpoints=True)
    assert outcomes == {"a": "complete", "b": "done"}
    assert not (out / "a" / "argv.json").exists()
    assert (out / "b.failed-2" / "log.txt").read_text() == "crashed"
    assert sorted(p.name for p in (out / "b").iterdir()) == ["argv.json", "metrics.json"]  # checkpoints dropped
    record = json.loads((out / "study.json").read_text())["runs"]["b"]
    assert record["status"] == "done" and record["moved_aside"] == ["b.failed-2"]
    assert record["result"] == "test NDCG@10 0.2500"
    assert any("b: done" in line for line in lines)


def test_failure_is_recorded_moved_aside_and_not_retried_by_default(tmp_path: Path):
    out = tmp_path / "study"
    steps = [fake("oom", out / "oom", exit_code=1), fake("next", out / "next")]
    outcomes, lines = quiet(steps=steps, out=out)
    assert outcomes == {"oom": "failed", "next": "done"}  # the plan went on
    record = json.loads((out / "study.json").read_text())["runs"]["oom"]
    assert record["status"] == "failed" and record["returncode"] == 1
    assert record["tail"][-1] == "error: out of device memory in epoch 1"
    assert not (out / "oom").exists() and (out / "oom.failed-1").is_dir()
    assert "FAILED" in lines[0] and "out of device memory" in lines[0]

    again, _ = quiet(steps=steps, out=out)
    assert again == {"oom": "failed before", "next": "complete"}
    retried, _ = quiet(steps=[fake("oom", out / "oom")], out=out, retry_failed=True)
    assert retried == {"oom": "done"}
    assert json.loads((out / "study.json").read_text())["runs"]["oom"]["attempts"] == 2


def step_clock(out: Path, seconds: float):
    """A clock that reads no wall time: ``seconds`` per step started under ``out`` (each fake step
    writes an argv.json first), so budget tests cannot depend on the machine's speed."""
    return lambda: seconds * sum(1 for _ in out.rglob("argv.json"))


def test_budget_stops_new_runs_and_records_them(tmp_path: Path):
    out = tmp_path / "study"
    steps = [fake(n, out / n) for n in ("first", "second", "third")]
    outcomes, _lines = quiet(steps=steps, out=out, budget_s=0.3, clock=step_clock(out, 0.6))
    assert outcomes == {"first": "done", "second": "not run", "third": "not run"}
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert runs["second"]["status"] == "not run" and "budget" in runs["second"]["reason"]
    assert not (out / "second").exists()
    later, _ = quiet(steps=steps, out=out)  # a later call runs what is left
    assert later == {"first": "complete", "second": "done", "third": "done"}


def test_deadline_kills_a_run_which_a_later_call_retries(tmp_path: Path):
    out = tmp_path / "study"
    slow = fake("slow_s0", out / "slow_s0", code="time.sleep(30)")
    outcomes, _ = quiet(steps=[slow], out=out, deadline_s=1.5)
    assert outcomes == {"slow_s0": "timed out"}
    assert (out / "slow_s0.failed-1").is_dir() and not (out / "slow_s0").exists()
    assert quiet(steps=[fake("slow_s0", out / "slow_s0")], out=out)[0] == {"slow_s0": "done"}


def test_deadline_skips_a_run_its_config_says_cannot_fit(tmp_path: Path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"runs": {"beauty_ce_s0": {"status": "done", "seconds": 300}}}))
    outcomes, lines = quiet(steps=[fake("beauty_ce_s1", out / "beauty_ce_s1"), fake("ml_ce_s1", out / "ml_ce_s1")],
                            out=out, deadline_s=100)
    assert outcomes == {"beauty_ce_s1": "not run", "ml_ce_s1": "done"}  # the smaller one still ran
    assert "earlier run took 300 s" in lines[0]


def test_bench_steps_get_the_remaining_budget_and_need_their_row(tmp_path: Path):
    out = tmp_path / "study"
    rows = "[{'dataset': 'items-1m', 'loss': 'cce', 'error': None}]"
    code = f"(out / 'results.json').write_text(json.dumps({{'env': {{}}, 'rows': {rows}}})); sys.exit(0)"
    good = fake("scaling/items-1m_cce", out / "scaling" / "items-1m_cce", code=code, kind="bench",
                expect=("items-1m", "cce"))
    wrong = fake("scaling/items-1m_ce", out / "scaling" / "items-1m_ce", code=code, kind="bench",
                 expect=("items-1m", "ce"))
    outcomes, _lines = quiet(steps=[wrong, good], out=out, budget_s=500, clock=step_clock(out, 7.0))
    assert outcomes == {"scaling/items-1m_cce": "done", "scaling/items-1m_ce": "incomplete"}
    argv = json.loads((out / "scaling" / "items-1m_ce.failed-1" / "argv.json").read_text())
    assert argv[:2] == ["--budget-s", "500"]
    argv = json.loads((out / "scaling" / "items-1m_cce" / "argv.json").read_text())
    assert argv[:2] == ["--budget-s", "493"]  # 7 s went to the first step
    assert (out / "scaling" / "items-1m_ce.failed-1").is_dir()


def test_a_real_tiny_run_through_run_py(tmp_path: Path, capsys):
    """The plan's command line works end to end; metrics.json carries finished_utc."""
    out = tmp_path / "study"
    bindings = ["dataset.name = 'tiny150'", "dataset.synthetic_preset = 'tiny'",
                "dataset.synthetic_overrides = {'n_users': 150}", f"dataset.cache_dir = '{tmp_path / 'cache'}'",
                "train.epochs = 1", "train.batch_size = 64", "train.device = 'cpu'"]
    step = study._run_step("quick_s0", "gin/quickstart.gin", ["train.seed = 0"], bindings, out)
    outcomes, _lines = quiet(steps=[step], out=out, drop_checkpoints=True)
    assert outcomes == {"quick_s0": "done"}, (out / "_logs" / "quick_s0.log").read_text()
    metrics = json.loads((out / "quick_s0" / "metrics.json").read_text())
    assert metrics["dataset"]["n_users"] == 150 and metrics["env"]["seed"] == 0
    assert metrics["finished_utc"].endswith("Z") and len(metrics["finished_utc"]) == 20
    assert not (out / "quick_s0" / "best.pt").exists()


def test_bench_epoch_turns_an_out_of_memory_run_into_a_row(tmp_path: Path, monkeypatch, capsys):
    """What the scaling plan relies on: CE out of memory is a row with its error, not a crash."""
    def fake_bench_one(config, *, variant, args, ctx=None):
        loss = bench_epoch.loss_name(bench_epoch.bound_config().loss_fn)
        if loss == "ce":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 61.04 GiB")
        return {"dataset": config.name, "loss": loss, "variant": variant, "epoch_s": 1.0, "error": None,
                "n_items": int(config.data.n_items)}

    monkeypatch.setattr(bench_epoch, "bench_one", fake_bench_one)
    out = tmp_path / "bench"
    cce = tmp_path / "tiny_cce.gin"
    cce.write_text("include 'gin/quickstart.gin'\ninclude 'gin/loss/cce.gin'\n")
    bindings = ["dataset.synthetic_overrides = {'n_users': 150}", f"dataset.cache_dir = '{tmp_path / 'cache'}'",
                "train.device = 'cpu'"]
    status = bench_epoch.main(["--gin", str(cce), "--gin", "gin/quickstart.gin", "--variants", "static",
                               *[a for b in bindings for a in ("--gin_bindings", b)], "--out", str(out)])
    assert status == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[1]["loss"] == "ce" and rows[1]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    for loss in ("cce", "ce"):
        assert study.is_complete(study.Step("x", (), "bench", ("tiny", loss)), out)


def test_command_line_exit_status(tmp_path: Path):
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench" / "study.py"), "real", "--seeds", "0",
                           "--out", str(tmp_path / "s"), "--dry-run"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 0 and "study: 8 would run" in done.stdout, done.stderr
