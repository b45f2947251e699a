"""tools/attack.py's verdicts on synthetic outcomes (the suite itself runs long: it is a command).

A broken classifier (one that forgets to look for tracebacks, timeouts and changed digests) must
fail the same checks, so they are not vacuous.
"""

from __future__ import annotations

import pytest

from tools import attack
from tools.attack import Check, Outcome, classify, tree_change, worst

TRACE = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
         "KeyError: 'Unable to synchronously open object (message not aligned)'\n")


def cases(classify_fn):
    """(check, verdict it must get) on outcomes made up here."""
    return [
        (Check(Outcome("c", 1, TRACE), "error"), "traceback"),
        (Check(Outcome("c", -11, ""), "error"), "traceback"),
        (Check(Outcome("c", 139, "h5py errors\n" * 48), "error"), "traceback"),
        (Check(Outcome("c", None, "", timed_out=True, seconds=60), "clean"), "hang"),
        (Check(Outcome("c", 2, "error: bad gin config: train.epochs must be an integer >= 1, got 'abc'\n"), "error"), "ok"),
        (Check(Outcome("c", 1, "2026-12-02 12:00:00 INFO core.training.loop: tiny: 150 users\n"
                               "error: epoch 1: training loss is nan\n"), "error"), "ok"),
        (Check(Outcome("c", 2, "usage: prepare_data.py [-h] --format\n    [--raw RAW]\n"
                               "prepare_data.py: error: argument --format: invalid choice: 'x'\n"), "error"), "ok"),
        (Check(Outcome("c", 0, ""), "error"), "unexpected"),
        (Check(Outcome("c", 1, "error: one\nerror: two\n"), "error"), "unexpected"),
        (Check(Outcome("c", 1, "some warning\nerror: one\n"), "error"), "unexpected"),
        (Check(Outcome("c", 2, "error: --resume: nothing to train\n"), "error",
               change=tree_change({"config.gin": "a"}, {"config.gin": "b"})), "silent change"),
        (Check(Outcome("c", 0, ""), "clean", change="byte 8 reads back different data"), "silent change"),
        (Check(Outcome("c", 0, ""), "clean"), "ok"),
        (Check(Outcome("c", 0, ""), "ok", problem="config.gin lost cce.filter_eps = None"), "unexpected"),
        (Check(Outcome("c", 1, "error: refused\n"), "ok"), "unexpected"),
    ]


def broken_classify(check):
    """A classifier that trusts exit codes only: misses tracebacks, hangs and changed digests."""
    out = check.outcome
    if check.expect == "error":
        return ("ok" if out.rc not in (0, None) else "unexpected"), ""
    return ("ok" if out.rc == 0 else "unexpected"), ""


def mismatches(classify_fn):
    return [(c.outcome.stderr[:40], c.expect, want, classify_fn(c)[0])
            for c, want in cases(classify_fn) if classify_fn(c)[0] != want]


def test_the_classifier_flags_tracebacks_hangs_silent_changes_and_accepts_one_error_line():
    assert mismatches(classify) == []


def test_a_broken_classifier_fails_the_same_checks():
    wrong = mismatches(broken_classify)
    assert {want for _, _, want, _ in wrong} >= {"traceback", "hang", "silent change"}


def test_digests_and_the_worst_of_several_commands(tmp_path):
    (tmp_path / "a").write_text("1")
    before = attack.tree_digest(tmp_path)
    assert tree_change(before, attack.tree_digest(tmp_path)) is None
    (tmp_path / "a").write_text("2")
    (tmp_path / ".lock").write_text("pid")  # the lock's pid is not a claim of the run
    assert tree_change(before, attack.tree_digest(tmp_path)) == "changed: a"
    verdict, why, check = worst([Check(Outcome("ok", 1, "error: x\n"), "clean"),
                                 Check(Outcome("hung", None, timed_out=True), "clean")])
    assert verdict == "hang" and check.outcome.command == "hung" and why.startswith("2 commands")


@pytest.mark.parametrize("expect", sorted(attack.EXPECTS))
def test_every_expectation_is_known(expect):
    assert classify(Check(Outcome("c", 0, ""), expect))[0] in ("ok", "unexpected")


def test_the_case_list_has_unique_ids_and_covers_both_issues():
    ids = [c.id for c in attack.CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 98
    groups = {c.group for c in attack.CASES}
    assert {f"23.{k}" for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)} <= groups
    assert any(g.startswith("15 ") for g in groups)
