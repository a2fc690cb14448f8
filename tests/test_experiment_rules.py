"""The rules that decide the experiments' verdicts (issue 21, point 7): the t quantiles and the
decision rule on seed results with a planted effect (agree, disagree, none, and the edges), the
fingerprint lock that catches a rule edited without a history entry, EXPERIMENTS.md against the
stored results, and a direction check at quick budget whose answer is known by construction
(sqrt-dk: unscaled scores at d_k = 1024 have lower row entropy), which a swap of the arm labels
turns into a disagreement."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from pathlib import Path

import pytest

from attnlab.cli.main import main
from attnlab.errors import ConfigError
from attnlab.experiments import experiments, get_experiment, run_experiment
from attnlab.experiments.report import DOCS, PAGE, build_page, page_diff
from attnlab.experiments.rules import (
    Arm,
    Comparison,
    Interval,
    Metric,
    Reference,
    Rule,
    canonical,
    classify,
    combine,
    decide,
    decide_one,
    fingerprint,
    fingerprint_of,
    read_lock,
    samples,
    seeds_to_decide,
    t_quantile,
    welch_interval,
)

ROOT = Path(__file__).resolve().parents[1]
M = Metric("score", "higher")


def cmp(expect: str = ">", margin: float = 0.0, b=None) -> Comparison:
    return Comparison(M, Arm("A", ("a",)), b or Arm("B", ("b",)), expect, margin)


def verdict(a, b, expect=">", margin=0.0) -> str:
    return decide_one(cmp(expect, margin), {"a": a, "b": b}).verdict


# --- Student's t -------------------------------------------------------------------------------------

@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423),
                                   (120, 1.9799), (math.inf, 1.9600)])
def test_t_quantile_matches_the_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)


def test_t_quantile_matches_scipy_at_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1.3, 2.5, 4.41, 17.9, 1e3):
        for p in (0.6, 0.8, 0.95, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)


def test_welch_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [3.1, 2.9, 3.4, 3.0], [2.2, 2.8, 2.0]
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    iv = welch_interval(a, b)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-8)
    one = stats.ttest_1samp(a, 2.5).confidence_interval(0.95)
    assert (welch_interval(a, 2.5).low + 2.5, welch_interval(a, 2.5).high + 2.5) == pytest.approx((one.low, one.high))


# --- the decision rule on planted effects -----------------------------------------------------------

def planted(effect: float, n: int, seed: int, sd: float = 1.0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    return [rng.gauss(effect, sd) for _ in range(n)], [rng.gauss(0.0, sd) for _ in range(n)]


def test_planted_effect_in_the_papers_direction_agrees():
    a, b = planted(3.0, 5, seed=1)
    assert verdict(a, b, ">") == "agrees"
    assert verdict(b, a, "<") == "agrees"


def test_planted_effect_against_the_paper_disagrees():
    a, b = planted(3.0, 5, seed=2)
    assert verdict(a, b, "<") == "disagrees"
    assert verdict(b, a, ">") == "disagrees"


def test_no_effect_is_inconclusive_and_says_how_many_seeds():
    a, b = [1.0, 1.2, 0.8], [0.95, 1.1, 0.85]
    out = decide_one(cmp(">"), {"a": a, "b": b})
    assert out.verdict == "inconclusive" and out.interval.low < 0 < out.interval.high
    n = out.seeds_needed
    assert n and n > 3  # more seeds than it had
    assert decide(Rule("c", "s", "f", (cmp(">"),)), {"a": a, "b": b}).reason().startswith(f"≈{n} seeds per arm")


def test_seeds_to_decide_gives_the_power_it_promises():
    """At the estimated n, a planted effect of 1 sd is found (the rule agrees) about 80% of the time."""
    n = seeds_to_decide(1.0, [1.0, 1.0], ">")
    nu = 2 * (n - 1)
    z = t_quantile(0.975, nu) + t_quantile(0.8, nu)
    assert n >= z * z * 2 and n - 1 < (t_quantile(0.975, nu - 2) + t_quantile(0.8, nu - 2)) ** 2 * 2
    found = sum(verdict(*planted(1.0, n, seed=s), ">") == "agrees" for s in range(400)) / 400
    assert 0.75 <= found <= 0.9
    assert seeds_to_decide(0.0, [1.0, 1.0], ">") is None  # no effect: no number of seeds decides it


def test_one_seed_is_inconclusive_whatever_the_gap():
    out = decide_one(cmp(">"), {"a": [100.0], "b": [0.0]})
    assert out.verdict == "inconclusive" and out.interval is None and out.seeds_needed is None
    assert "spread is unknown" in out.note


def test_zero_spread_decides_on_the_means():
    assert verdict([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], ">") == "agrees"
    assert verdict([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], "<") == "disagrees"
    same = decide_one(cmp(">"), {"a": [1.0, 1.0], "b": [1.0, 1.0]})
    assert same.verdict == "inconclusive" and same.interval.low == same.interval.high == 0.0
    assert same.seeds_needed is None


def test_an_interval_touching_zero_is_inconclusive():
    assert classify(Interval(0.5, 0.0, 1.0, 3.0), ">") == "inconclusive"
    assert classify(Interval(-0.5, -1.0, 0.0, 3.0), ">") == "inconclusive"
    assert classify(Interval(-0.5, -1.0, 0.0, 3.0), "<") == "inconclusive"
    assert classify(Interval(0.5, 1e-12, 1.0, 3.0), ">") == "agrees"


def test_equal_within_a_margin():
    assert verdict([1.0, 1.01, 0.99], [1.0, 1.0, 1.0], "=", 0.1) == "agrees"
    assert verdict([2.0, 2.01, 1.99], [1.0, 1.0, 1.0], "=", 0.1) == "disagrees"
    assert verdict([1.0, 1.2, 0.8], [1.0, 1.0, 1.0], "=", 0.1) == "inconclusive"
    ref = Comparison(M, Arm("A", ("a",)), Reference("2", 2.0), "=", 0.25)
    assert decide_one(ref, {"a": [2.05, 2.1, 2.0]}).verdict == "agrees"
    assert decide_one(ref, {"a": [1.5, 1.55, 1.45]}).verdict == "disagrees"


def test_comparisons_combine_as_stated():
    assert combine("all", ["agrees", "agrees"]) == "agrees"
    assert combine("all", ["agrees", "inconclusive"]) == "inconclusive"
    assert combine("all", ["agrees", "disagrees", "inconclusive"]) == "disagrees"
    assert combine("any", ["inconclusive", "agrees"]) == "agrees"
    assert combine("any", ["disagrees", "inconclusive"]) == "inconclusive"
    assert combine("any", ["disagrees", "disagrees"]) == "disagrees"


def test_samples_follow_the_arm_path():
    data = {"init": {"x/8": [{"e": 1.0}, {"e": 2.0}]}, "acc": {"rnn": [[0.1, 0.2], [0.3, None]]}, "s": "inf"}
    assert samples(data, ("init", "x/8", "*", "e")) == [1.0, 2.0]
    assert samples(data, ("acc", "rnn", 0)) == [0.1, 0.2]
    last = samples(data, ("acc", "rnn", -1))
    assert last[0] == 0.3 and math.isnan(last[1])
    assert samples(data, ("acc", "gru")) is None and samples(data, ("acc", "rnn", 5)) is None
    out = decide_one(cmp(">"), {"a": [2.0, 2.1, None], "b": [1.0, 1.1, 0.9]})
    assert out.verdict == "agrees" and "non-finite" in out.note
    assert decide_one(cmp(">"), {"a": [1.0, 2.0]}).note == "not measured in these results"


def test_a_rule_is_checked_when_declared():
    with pytest.raises(ConfigError, match="expect"):
        cmp("bigger")
    with pytest.raises(ConfigError, match="margin"):
        cmp(">", 0.1)
    with pytest.raises(ConfigError, match="better"):
        Metric("m", "up")
    with pytest.raises(ConfigError, match="combine"):
        Rule("c", "s", "f", (cmp(),), combine="most")


# --- the lock: a rule edited without a history entry -------------------------------------------------

def lock_problems(exps, lock: dict[str, list[str]]) -> list[str]:
    """What is wrong between the experiments' rules, their histories and rules.lock.json."""
    problems = []
    for name, exp in exps.items():
        if exp.rule is None:
            if name in lock:
                problems.append(f"{name} is in rules.lock.json but has no rule")
            continue
        fp, chain = fingerprint(exp.rule), lock.get(name, [])
        recorded = {h.fingerprint for h in exp.history if h.fingerprint}
        if not chain:
            problems.append(f"{name}: add \"{name}\": [\"{fp}\"] to rules.lock.json")
        elif chain[-1] != fp:
            problems.append(f"{name}: its rule changed (lock {chain[-1]}, now {fp}): add a RuleChange with fingerprint "
                            f"{chain[-1]}, the old rule and its verdict to its history, then append \"{fp}\" to its "
                            "list in rules.lock.json")
        problems += [f"{name}: earlier rule {old} has no history entry" for old in chain[:-1] if old not in recorded]
        problems += [f"{name}: history entry {h.fingerprint} does not hash to its rule" for h in exp.history
                     if h.fingerprint and fingerprint_of(h.rule) != h.fingerprint]
    return problems


def test_every_rule_matches_its_lock():
    assert lock_problems(experiments(), read_lock()) == []


def test_a_rule_edited_without_history_is_caught():
    exp = get_experiment("sqrt-dk")
    edited = dataclasses.replace(exp, rule=dataclasses.replace(exp.rule, comparisons=exp.rule.comparisons[:2]))
    lock = read_lock()
    assert any("its rule changed" in p for p in lock_problems({"sqrt-dk": edited}, lock))
    # the change recorded: a history entry with the old rule, and the new fingerprint appended to the lock
    from attnlab.experiments.rules import RuleChange

    change = RuleChange(fingerprint(exp.rule), canonical(exp.rule), "inconclusive", "dropped the LM", "2026-12-07")
    recorded = dataclasses.replace(edited, history=exp.history + (change,))
    assert lock_problems({"sqrt-dk": recorded}, {"sqrt-dk": [*lock["sqrt-dk"], fingerprint(edited.rule)]}) == []
    assert lock_problems({"sqrt-dk": edited}, {"sqrt-dk": [*lock["sqrt-dk"], fingerprint(edited.rule)]}) != []


# --- EXPERIMENTS.md against the stored results -------------------------------------------------------

def test_page_matches_the_stored_results():
    diff = page_diff(ROOT)
    assert not diff, f"{PAGE} differs from docs/experiments (run 'attnlab experiment report'):\n{diff[:3000]}"


def test_report_check_command(capsys):
    assert main(["experiment", "report", "--check"]) == 0
    assert "matches the stored results" in capsys.readouterr().out


@pytest.fixture
def docs_copy(tmp_path) -> Path:
    shutil.copytree(ROOT / DOCS, tmp_path / DOCS, ignore=shutil.ignore_patterns("*.png"))
    return tmp_path


def test_a_changed_stored_number_changes_the_page(docs_copy):
    f = docs_copy / DOCS / "sqrt-dk" / "results.json"
    res = json.loads(f.read_text())
    assert "**agrees" in next(line for line in build_page(docs_copy).splitlines() if line.startswith("| [`sqrt-dk`]"))
    res["data"]["val_bpc"]["unscaled"] = res["data"]["val_bpc"]["scaled"]  # unscaled as good as scaled: no longer agrees
    f.write_text(json.dumps(res))
    with pytest.raises(ConfigError, match="stored the verdict 'agrees' under the current rule"):
        build_page(docs_copy)  # a number edited by hand under the verdict it gave is refused
    res["decision"]["verdict"] = "inconclusive"  # as a rerun with these numbers would have stored it
    f.write_text(json.dumps(res))
    page = build_page(docs_copy)
    assert page != (ROOT / PAGE).read_text()
    row = next(line for line in page.splitlines() if line.startswith("| [`sqrt-dk`]"))
    assert "**inconclusive" in row


def test_a_stored_run_under_an_unrecorded_rule_is_refused(docs_copy):
    f = docs_copy / DOCS / "sqrt-dk" / "results.json"
    res = json.loads(f.read_text())
    res["rule"] = {"fingerprint": "0123456789abcdef"}
    f.write_text(json.dumps(res))
    with pytest.raises(ConfigError, match="neither the current rule"):
        build_page(docs_copy)


# --- a direction known by construction, at quick budget ----------------------------------------------

@pytest.fixture(scope="module")
def sqrt_dk_quick(tmp_path_factory, request) -> dict:
    """sqrt-dk at quick budget with 3 seeds (the init statistics need a spread to decide)."""
    from conftest import data_dir

    if not data_dir().is_dir():
        pytest.skip(f"shared data not found at {data_dir()}")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNLAB_DATA", str(data_dir()))
    try:
        return run_experiment(get_experiment("sqrt-dk"), "quick", seeds=3, out=tmp_path_factory.mktemp("sqrt-dk"),
                              progress=False)
    finally:
        mp.undo()


def test_unscaled_scores_have_lower_entropy_and_the_rule_agrees(sqrt_dk_quick):
    init = sqrt_dk_quick["data"]["init"]
    assert all(u["entropy"] < s["entropy"] for s, u in zip(init["scaled/1024"], init["unscaled/1024"]))
    entropy, grad = sqrt_dk_quick["decision"]["outcomes"][:2]
    assert entropy["verdict"] == grad["verdict"] == "agrees"
    assert sqrt_dk_quick["rule"]["fingerprint"] == fingerprint(get_experiment("sqrt-dk").rule)


def test_swapping_the_arm_labels_flips_the_verdict(sqrt_dk_quick):
    rule = get_experiment("sqrt-dk").rule
    data = json.loads(json.dumps(sqrt_dk_quick["data"]))
    init = data["init"]
    for d in (16, 64, 256, 1024):  # what a label swap in the experiment would store
        init[f"scaled/{d}"], init[f"unscaled/{d}"] = init[f"unscaled/{d}"], init[f"scaled/{d}"]
    data["val_bpc"] = {"scaled": data["val_bpc"]["unscaled"], "unscaled": data["val_bpc"]["scaled"]}
    swapped = decide(rule, data)
    assert [o.verdict for o in swapped.outcomes[:2]] == ["disagrees", "disagrees"] and swapped.verdict == "disagrees"
    # the same swap in the rule's arms
    flipped = tuple(dataclasses.replace(c, a=c.b, b=c.a) for c in rule.comparisons)
    assert decide(dataclasses.replace(rule, comparisons=flipped), sqrt_dk_quick["data"]).verdict == "disagrees"
