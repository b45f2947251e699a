"""experiments/tune.py: Optuna studies whose trials are run folders (CPU, the tiny preset).

A study of a few 3-epoch trials on ~120 synthetic users: it runs, continues after kill -9
without losing, duplicating or counting a trial twice, never reads the test split during the
search, records an out-of-memory trial and goes on, and its final seeds reproduce.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.child_env import child_env
import torch

from experiments import tune
from experiments.tuning import space as tune_space
from experiments.tuning.study import COUNTED, Trainer, trial_watch

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--gin", "gin/quickstart.gin", "--space", "gin/tune/tiny.gin",
         "--gin_bindings", "dataset.synthetic_overrides = {'n_users': 120}",
         "--gin_bindings", "train.max_len = 10", "--gin_bindings", "train.epochs = 2"]


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")


def _outcomes(study: optuna.Study) -> list[str | None]:
    return [t.user_attrs.get("outcome") for t in study.get_trials(deepcopy=False)]


@pytest.fixture
def data_cache(tmp_path, monkeypatch):
    """Every study here writes its synthetic data cache under tmp_path (runs from there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the search space ---------------------------------------------------------------------------


def test_space_files_parse_into_the_issue_ranges():
    space = tune_space.load_space("gin/tune/sampled_ce.gin", REPO)
    ranges = {p.binding: p for p in space.params}
    assert ranges["SASRec.dim"].values == (64, 128, 256)
    assert ranges["train.max_len"].values == (50, 100, 200)
    assert ranges["train.batch_size"].values == (128, 256, 512, 1024, 2048, 4096)
    assert ranges["train.lr"].kind == "log" and ranges["train.lr"].values == (1e-4, 5e-3)
    assert ranges["sampled_ce.n_negatives"].values == (256, 512, 1024, 2048, 4096, 8192)
    assert set(ranges["sampled_ce.sampler"].values) == {"uniform", "popularity"}
    assert "sampled_ce.n_negatives" not in {p.binding for p in tune_space.load_space("gin/tune/sasrec.gin", REPO).params}


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "gin" / "tune").glob("*.gin")))
def test_every_space_file_parses(path):
    space = tune_space.load_space(f"gin/tune/{path}", REPO)
    assert space.params and all(p.binding.split(".")[0] in ("SASRec", "train", "sampled_ce") for p in space.params)


@pytest.mark.parametrize("values, reason", [
    ({"SASRec.dim": 64, "SASRec.n_heads": 3}, "not divisible"),
    ({"sampled_ce.n_negatives": 2048}, "the catalog's 1473 items"),
    ({"sampled_ce.logq": True, "sampled_ce.sampler": "uniform"}, "uniform sampler"),
    ({"SASRec.dim": 64, "SASRec.n_heads": 4, "sampled_ce.n_negatives": 1024}, None),
    ({"sampled_ce.logq": True, "sampled_ce.sampler": "popularity"}, None),
])
def test_invalid_combinations_are_named(values, reason):
    got = tune_space.invalid_reason(values, n_items=1473)
    assert (got is None) if reason is None else (reason in got)


@pytest.mark.parametrize("text, message", [
    ("search_space.params = {'SASRec.dim': ('choice', [])}", "non-empty list"),
    ("search_space.params = {'SASRec.dim': ('grid', 1, 2)}", "expected ('choice'"),
    ("search_space.params = {'train.lr': ('log', 0.0, 1.0)}", "low > 0"),
    ("search_space.params = {'dim': ('choice', [1])}", "not a gin binding"),
    ("search_space.params = {}", "no parameters"),
    ("search_space.nonsense = 1", "bad search space"),
])
def test_a_bad_space_is_one_line_and_no_study_folder(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.gin"
    bad.write_text(text + "\n")
    out = tmp_path / "study"
    status = tune.main(["--gin", "gin/quickstart.gin", "--space", str(bad), "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


# --- a study ------------------------------------------------------------------------------------


def test_search_reads_no_test_split_then_final_does_and_its_seeds_reproduce(data_cache, monkeypatch, capsys):
    """The probe records every split the batcher is asked for; it must see no "test" during the
    search and see it in --final (so it can fail). A final run's config.gin reproduces it."""
    import core.data.batching as batching

    seen: list[str] = []
    real = batching._context_end

    def probe(seqs, users, split):
        seen.append(split)
        return real(seqs, users, split)

    monkeypatch.setattr(batching, "_context_end", probe)
    out = data_cache / "study"
    assert tune.main([*SMALL, "--trials", "3", "--out", str(out), "--heartbeat-s", "2", "--in-process"]) == 0
    assert "valid" in seen and "test" not in seen
    study = _study(out)
    assert _outcomes(study).count("complete") + _outcomes(study).count("pruned") == 3
    for t in study.trials:
        metrics = json.loads((out / t.user_attrs["run"] / "metrics.json").read_text())
        assert metrics["test"] is None and metrics["popularity_test"] is None
        assert metrics["valid"]["NDCG@10"] == pytest.approx(t.user_attrs["valid"]["NDCG@10"])
    assert (out / "summary" / "trials.csv").exists() and (out / "summary" / "history.png").exists()

    # Trials are ordinary run folders: report.py tabulates them (validation: they have no test),
    # one row per setting; recommend.py uses one.
    from experiments import recommend, report

    assert report.main([str(out / "trials"), "--out", str(data_cache / "report")]) == 1  # test unread
    assert "--split valid" in capsys.readouterr().err
    assert report.main([str(out / "trials"), "--out", str(data_cache / "report"), "--split", "valid"]) == 0
    table = (data_cache / "report" / "report.md").read_text()
    assert table.count("| tiny | ce") == 3 and "Validation-split metrics" in table
    best_run = out / max((t for t in study.trials if t.value is not None), key=lambda t: t.value).user_attrs["run"]
    assert recommend.main(["--run", str(best_run), "--all", "--k", "3", "--out", str(data_cache / "recs.csv")]) == 0
    assert (data_cache / "recs.csv").read_text().startswith("user,rank,item,score")

    assert tune.main(["--final", "--out", str(out), "--seeds", "0,1"]) == 0
    assert "test" in seen
    final = json.loads((out / "final.json").read_text())
    assert [r["config"] for r in final["rows"]] == ["default", "tuned"]
    assert final["rows"][1]["seeds"] == [0, 1] and final["mask_history"] is True
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert final["best_trial"] == best.number
    first = json.loads((out / "final" / "tuned_s0" / "metrics.json").read_text())
    assert [r["loss"] for r in final["rows"]] == ["ce", "ce"]

    # --compare: one default and one tuned row per study, each with the seed's columns.
    assert tune.main(["--compare", str(out), "--out", str(data_cache / "compare")]) == 0
    table = (data_cache / "compare" / "tuning.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| loss"))
    for column in ("HitRate@10", "NDCG@10", "Coverage@10", "Surprisal@10", "peak GiB", "epoch s"):
        assert column in header
    assert "| ce | default |" in table and f"| ce | tuned | {final['rows'][1]['HitRate@10'][0]:.4f}" in table

    # The tuned seed-0 run again, from its own config.gin through run.py: the same test metrics.
    from experiments import run

    again = data_cache / "again"
    assert run.main(["--gin", str(out / "final" / "tuned_s0" / "config.gin"), "--out", str(again)]) == 0
    assert json.loads((again / "metrics.json").read_text())["test"] == first["test"]
    capsys.readouterr()


def test_an_out_of_memory_trial_is_recorded_and_the_study_goes_on(data_cache, monkeypatch, capsys):
    real = Trainer.train
    calls = []

    def train(self, path, extra, watch=None, **kw):
        calls.append(path)
        if len(calls) == 2:  # the second trial asks for more than the device has
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has ...")
        return real(self, path, extra, watch, **kw)

    monkeypatch.setattr(Trainer, "train", train)
    out = data_cache / "study"
    assert tune.main([*SMALL, "--trials", "3", "--out", str(out), "--in-process"]) == 0
    study = _study(out)
    oom = [t for t in study.trials if t.user_attrs.get("outcome") == "oom"]
    assert len(oom) == 1 and oom[0].state == optuna.trial.TrialState.FAIL
    assert oom[0].user_attrs["oom_request_gib"] == 2.5
    assert sum(o in COUNTED for o in _outcomes(study)) == 3  # the OOM counts: it spent budget
    assert "Out of device memory (1 trials)" in (out / "summary" / "study.md").read_text()
    assert "trial 1: oom" in capsys.readouterr().out
    assert tune.main(["--status", "--out", str(out)]) == 0
    assert "3 of 3 budget trials counted (2 complete, 0 pruned, 1 out of memory" in capsys.readouterr().out


def test_a_repeated_setting_is_answered_not_retrained(data_cache, monkeypatch, capsys):
    """A space of one setting: the first trial trains, the next ones repeat it and are answered
    from it (outcome 'duplicate', not counted), so the study ends after 100 of them."""
    space = data_cache / "one.gin"
    space.write_text("search_space.params = {'SASRec.dim': ('choice', [16])}\n")
    out = data_cache / "study"
    assert tune.main([*SMALL, "--space", str(space), "--trials", "2", "--out", str(out), "--in-process"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already run" in err[0]
    study = _study(out)
    outcomes = _outcomes(study)
    assert outcomes[0] == "complete" and set(outcomes[1:]) == {"duplicate"} and len(outcomes) == 101
    assert all(t.value == study.trials[0].value for t in study.trials)
    assert len(list((out / "trials").iterdir())) == 1  # one run folder: nothing retrained


def test_a_study_whose_trials_keep_failing_stops_with_one_line(data_cache, monkeypatch, capsys):
    def broken(self, path, extra, watch=None, **kw):
        raise ValueError("a broken setup")

    monkeypatch.setattr(Trainer, "train", broken)
    out = data_cache / "study"
    assert tune.main([*SMALL, "--trials", "10", "--out", str(out), "--in-process"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 trials in a row failed" in err[0] and "a broken setup" in err[0]
    assert _outcomes(_study(out)) == ["error"] * 3


def test_a_changed_command_is_refused_with_the_setting(data_cache, capsys):
    out = data_cache / "study"
    assert tune.main([*SMALL, "--trials", "1", "--out", str(out), "--in-process"]) == 0
    capsys.readouterr()
    status = tune.main([*SMALL, "--gin_bindings", "train.lr = 0.5", "--trials", "2", "--out", str(out), "--in-process"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "gin_bindings" in err[0]
    assert len(_study(out).trials) == 1


def _running(out: Path, first: subprocess.Popen) -> list[int] | None:
    """Numbers (>= 1) of the trials RUNNING in ``out``'s study, read straight from SQLite (a
    cheap read-only query, not ``optuna.load_study``, which on a busy machine took longer than a
    2-s trial and lost the race: CI failed with the study already finished)."""
    if first.poll() is not None:
        raise AssertionError("the study ended before a trial was seen running: "
                             + first.stdout.read().decode(errors="replace")[-2000:])
    try:
        with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT number FROM trials WHERE state = 'RUNNING' AND number >= 1").fetchall()
    except sqlite3.Error:  # not created yet, or the tables not yet made
        return None
    return [number for (number,) in rows] or None


def test_kill_9_then_the_same_command_continues_without_loss_or_double_count(tmp_path):
    """Two worker processes on one SQLite file; the whole command is killed (SIGKILL) while a
    trial runs; the same command then finishes the study: 4 counted trials, the killed trial
    marked failed and not counted, every counted trial with its own folder."""
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "experiments" / "tune.py"), *SMALL, "--trials", "4",
           "--workers", "2", "--out", str(out), "--heartbeat-s", "1"]
    env = child_env()
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (killed_numbers := _running(out, first)):
            assert time.monotonic() < deadline, "timed out waiting for a running trial"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    study = _study(out)
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if t.user_attrs.get("outcome") in COUNTED]
    assert len(counted) in (4, 5)  # two workers may both start the 4th (the report uses the first 4)
    assert len({t.number for t in counted}) == len(counted)
    for number in killed_numbers:
        dead = trials[number]
        assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs.get("outcome") is None
    assert not [t for t in trials if t.state == optuna.trial.TrialState.WAITING]  # nothing queued
    assert "error" not in _outcomes(study)  # e.g. two processes on one trial's folder
    for t in counted:
        assert (out / t.user_attrs["run"] / "metrics.json").exists()
    assert "4 of 4 budget trials counted" in (out / "summary" / "study.md").read_text()


class _FakeTrial:
    def __init__(self, prune_at: int | None = None):
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.prune_at is not None and self.reported[-1][0] >= self.prune_at


def test_the_time_cap_and_the_pruner_act_only_after_a_validation():
    """A cap that struck in an epoch without a validation left the trial with no result (seed
    scale: a CE trial 'error: no validation ran'); now it waits for the next validation."""
    now = iter([0.0, 200.0, 400.0, 600.0])  # start, then one reading per validated epoch
    watch = trial_watch(_FakeTrial(), 150, clock=lambda: next(now))
    assert watch({"epoch": 1, "valid": None}) is None  # past the cap, but nothing validated yet
    assert watch({"epoch": 2, "valid": {"NDCG@10": 0.1}}) == "time cap (150 s)"
    trial = _FakeTrial(prune_at=2)
    watch = trial_watch(trial, None)
    assert watch({"epoch": 1, "valid": {"NDCG@10": 0.1}}) is None
    assert watch({"epoch": 2, "valid": {"NDCG@10": 0.1}}) == "pruned"
    assert trial.reported == [(1, 0.1), (2, 0.1)]


def test_a_new_study_tries_the_default_config_first_where_the_space_holds_it(data_cache, capsys):
    inside = ["--gin_bindings", "SASRec.dim = 32", "--gin_bindings", "train.batch_size = 64"]
    out = data_cache / "with_default"
    assert tune.main([*SMALL, *inside, "--trials", "1", "--out", str(out), "--in-process"]) == 0
    assert "trial 0: the default config" in capsys.readouterr().out
    first = _study(out).trials[0]
    assert first.params == {"SASRec.dim": 32, "SASRec.n_heads": 1, "SASRec.dropout": 0.2,
                            "train.batch_size": 64, "train.lr": 0.001}
    out = data_cache / "outside"  # quickstart's dim 64 is not one of tiny.gin's choices
    assert tune.main([*SMALL, "--trials", "1", "--out", str(out), "--in-process"]) == 0
    assert "outside the space (SASRec.dim = 64, train.batch_size = 256)" in capsys.readouterr().out
    assert _study(out).trials[0].params["SASRec.dim"] in (16, 32)


def test_a_memory_cap_that_is_not_positive_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        tune.main([*SMALL, "--gpu-memory-gib", "-1", "--out", str(tmp_path / "s")])
    assert exit_.value.code == 2 and "--gpu-memory-gib must be" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
