"""Rules stated before the run: what an experiment's paper claims, the comparisons that decide
it, and the verdict computed from the seeds, never written by hand (issue 21).

A :class:`Rule` is data declared next to an experiment's arms and handed to its
:class:`~attnlab.experiments.base.Experiment` (``rule=``). It holds the claim in the anchor's
words and where the paper makes it (table or figure), the :class:`Comparison` s that decide it
(each: a :class:`Metric` and which way is better, arm A against arm B or against a fixed
:class:`Reference`, the sign the paper expects, the paper's own numbers) and how the comparisons
combine. :func:`decide` reads each arm's per-seed values out of the experiment's ``data`` (an
:class:`Arm` names where they are) and returns a :class:`Decision`; ``write_outputs`` puts the
rule above the result and the decision into results.json, README.md and verdict.md, and
``attnlab experiment report`` does the same on EXPERIMENTS.md for the stored results.

The decision
------------
Over the seeds, with n_A and n_B values, means m_A, m_B and sample variances s_A², s_B²::

    Δ = m_A − m_B,   se² = s_A²/n_A + s_B²/n_B
    ν = se⁴ / ((s_A²/n_A)²/(n_A − 1) + (s_B²/n_B)²/(n_B − 1))        (Welch–Satterthwaite)
    95% interval:  Δ ± t(0.975, ν) · se

Against a reference value r: Δ = m_A − r, se² = s_A²/n_A, ν = n_A − 1. With zero spread the
interval is the point Δ. The paper's expected sign of Δ (``expect``) then decides:

- ``">"``: *agrees* when the interval lies above 0, *disagrees* when it lies below 0;
- ``"<"``: the mirror image;
- ``"="`` (equal within ``margin``): *agrees* when the interval lies inside (−margin, margin),
  *disagrees* when it lies wholly outside it;
- *inconclusive* otherwise: the interval reaches its boundary (an end exactly at 0 included), an
  arm has fewer than 2 finite values (the spread is unknown), or its values are not in ``data``.

For an inconclusive comparison the seeds per arm that would decide it at the observed effect and
spread follow the usual power estimate (two-sided 95%, power 80%), solved for the smallest n::

    n ≥ (t(0.975, ν) + t(0.80, ν))² · (s_A² + s_B²) / δ²,   ν = 2(n − 1)     (one arm: s_A², ν = n − 1)

where δ is the distance from Δ to the decision boundary (0 for ``>``/``<``, ±margin for ``=``); no
number is given when δ = 0 or the spread is unknown. The t quantiles are computed here (the
regularised incomplete beta function, Newton's method), without scipy.

Comparisons combine as the rule says: ``"all"`` agrees when every comparison agrees and disagrees
when any disagrees; ``"any"`` agrees when any agrees and disagrees when all disagree; otherwise the
verdict is inconclusive.

Adopting a rule in an experiment
--------------------------------
1. Put every per-seed number the rule needs into ``Result.data`` as a list in seed order, under
   keys that do not depend on the budget (``data["val_bpc"]["scaled"] = [2.91, 2.95, 2.93]``).
2. Declare ``RULE = Rule(claim=..., source=..., figure=..., comparisons=(Comparison(...), ...))``
   next to the arms; an :class:`Arm` path is a tuple of dict keys, list indices (negative from
   the end) and ``"*"`` (every item of a list), e.g. ``("init", "scaled/1024", "*", "entropy")``.
3. Pass ``rule=RULE`` to ``Experiment``. ``tests/test_experiment_rules.py`` then fails until the
   rule's fingerprint is in ``rules.lock.json`` (its message gives the line to add).
4. Keep the prose (``Result.verdict``, shown as the reading) to the numbers: the verdict words
   (agrees, disagrees, inconclusive) belong to the rule, and the tests refuse them in the reading.
5. A rule changed after a run keeps the old one: add a :class:`RuleChange` to the experiment's
   ``history`` (the old fingerprint, the old rule as canonical JSON, the verdict it gave and why
   it changed), then append the new fingerprint to the experiment's list in ``rules.lock.json``.
6. Rerun at full budget, copy the outputs to ``docs/experiments/NAME/`` and rebuild the page with
   ``attnlab experiment report`` (``--check`` compares instead of writing).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

from attnlab.errors import ConfigError

VERDICTS = ("agrees", "disagrees", "inconclusive")
EXPECT = {">": "above", "<": "below", "=": "equal to"}
COMBINE = {"all": "every comparison must agree (one that disagrees makes the verdict disagree)",
           "any": "one comparison that agrees suffices (the verdict disagrees only when all disagree)"}
MAX_SEEDS = 1000  # the power estimate stops here: "more than 1000 seeds"
LOCK = Path(__file__).with_name("rules.lock.json")


# --- Student's t ------------------------------------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_pdf(t: float, df: float) -> float:
    """The density of Student's t with ``df`` degrees of freedom."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom: Newton's method on
    :func:`t_cdf`, kept inside a bisection bracket, to 1e-12 relative."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    t = min(max(NormalDist().inv_cdf(p), lo), hi)
    while hi - lo > 1e-12 * hi:
        f = t_cdf(t, df) - p
        lo, hi = (t, hi) if f < 0 else (lo, t)
        step = t - f / t_pdf(t, df)
        if abs(step - t) <= 1e-13 * max(1.0, t):
            return step
        t = step if lo < step < hi else 0.5 * (lo + hi)
    return 0.5 * (lo + hi)


# --- the rule, as data ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """What is measured (with its unit) and which way is better: ``"higher"`` or ``"lower"``."""

    name: str
    better: str

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ConfigError(f"Metric {self.name!r}: better must be 'higher' or 'lower', not {self.better!r}")


@dataclass(frozen=True)
class Arm:
    """An arm's per-seed values: ``path`` into the experiment's ``data`` (dict keys, list indices,
    ``"*"`` for every item of a list), ending at a list with one number per seed."""

    label: str
    path: tuple


@dataclass(frozen=True)
class Reference:
    """A fixed value to set one arm against (the exponent the paper's analysis gives, say)."""

    label: str
    value: float


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against ``b`` on ``metric``; ``expect`` is the paper's sign of mean(a) − b:
    ``">"``, ``"<"``, or ``"="`` (equal within ``margin``). ``paper`` gives the paper's own numbers
    (with their table or figure), ``paper_effect`` its a − b where it has one (in its units)."""

    metric: Metric
    a: Arm
    b: Arm | Reference
    expect: str
    margin: float = 0.0
    paper: str = ""
    paper_effect: float | None = None

    def __post_init__(self) -> None:
        if self.expect not in EXPECT:
            raise ConfigError(f"Comparison {self.name}: expect must be one of {', '.join(EXPECT)}, not {self.expect!r}")
        if (self.expect == "=") != (self.margin > 0):
            raise ConfigError(f"Comparison {self.name}: a margin > 0 goes with expect '=' and only with it")

    @property
    def name(self) -> str:
        return f"{self.a.label} vs {self.b.label}"


@dataclass(frozen=True)
class Rule:
    """The hypothesis in the anchor's words (``claim``), where the paper states it (``source``:
    paper, table or figure), the paper's figure in a few words for the summary table (``figure``),
    the comparisons that decide it and how they combine (``"all"`` or ``"any"``), at a confidence
    ``level`` with the seeds-to-decide estimate at ``power``."""

    claim: str
    source: str
    figure: str
    comparisons: tuple[Comparison, ...]
    combine: str = "all"
    level: float = 0.95
    power: float = 0.80

    def __post_init__(self) -> None:
        if not self.comparisons:
            raise ConfigError("a Rule needs at least one comparison")
        if self.combine not in COMBINE:
            raise ConfigError(f"Rule combine must be one of {', '.join(COMBINE)}, not {self.combine!r}")
        if not (0.5 < self.level < 1 and 0.5 <= self.power < 1):
            raise ConfigError(f"Rule level {self.level} / power {self.power} must lie in (0.5, 1)")


@dataclass(frozen=True)
class RuleChange:
    """A rule replaced after a run: the old rule (canonical JSON, or in words when it was not yet
    data; then ``fingerprint`` is None), the verdict it gave, why it changed, and when."""

    fingerprint: str | None
    rule: str
    verdict: str
    reason: str
    date: str


def canonical(rule: Rule) -> str:
    """The rule as canonical JSON (sorted keys, no spaces): what its fingerprint hashes."""
    return json.dumps(asdict(rule), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(rule: Rule) -> str:
    """The first 16 hex digits of the SHA-256 of :func:`canonical`."""
    return fingerprint_of(canonical(rule))


def read_lock(path: Path = LOCK) -> dict[str, list[str]]:
    """rules.lock.json: experiment -> every fingerprint its rule has had, the current one last."""
    return json.loads(path.read_text())


# --- the decision -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """The difference of means and its confidence interval, with the Welch degrees of freedom."""

    diff: float
    low: float
    high: float
    df: float


@dataclass(frozen=True)
class Outcome:
    """One comparison decided: the values it read, the interval, the verdict and, when
    inconclusive, why and the seeds per arm that would decide it."""

    comparison: str
    verdict: str
    a: list[float]
    b: list[float]
    interval: Interval | None
    seeds_needed: int | None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    verdict: str
    outcomes: tuple[Outcome, ...]

    def reason(self) -> str:
        """Why an inconclusive verdict is inconclusive, and what would decide it ('' otherwise)."""
        if self.verdict != "inconclusive":
            return ""
        open_ = [o for o in self.outcomes if o.verdict == "inconclusive"]
        notes = [o.note for o in open_ if o.note]
        parts = [(f"{notes.count(note)} of {len(self.outcomes)} comparisons: " if len(self.outcomes) > 1 else "") + note
                 for note in dict.fromkeys(notes)]
        needed = [o.seeds_needed for o in open_ if o.seeds_needed]
        if needed:
            parts.append(f"≈{max(needed)} seeds per arm would decide it at the observed effect and spread")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return asdict(self)


def samples(data, path: tuple) -> list[float] | None:
    """The numbers at ``path`` in ``data`` (None where the path does not exist). Missing values
    (None, as results.json stores NaN) become NaN."""
    items = [data]
    for key in path:
        step = []
        for x in items:
            if key == "*" and isinstance(x, list):
                step += x
            elif isinstance(key, int) and isinstance(x, list) and -len(x) <= key < len(x):
                step.append(x[key])
            elif isinstance(key, str) and key != "*" and isinstance(x, dict) and key in x:
                step.append(x[key])
            else:
                return None
        items = step
    if len(items) == 1 and isinstance(items[0], list):
        items = items[0]
    if not all(v is None or isinstance(v, (int, float, str)) for v in items):
        return None
    try:
        return [float("nan") if v is None else float(v) for v in items]
    except ValueError:
        return None


def welch_interval(a: list[float], b: list[float] | float, level: float = 0.95) -> Interval | None:
    """The ``level`` interval of mean(a) − mean(b) (Welch), or of mean(a) − b for a number ``b``;
    None when an arm has fewer than 2 values."""
    arms = [a] if isinstance(b, (int, float)) else [a, b]
    if any(len(x) < 2 for x in arms):
        return None
    diff = statistics.fmean(a) - (b if isinstance(b, (int, float)) else statistics.fmean(b))
    terms = [statistics.variance(x) / len(x) for x in arms]
    se2 = sum(terms)
    if se2 == 0:
        return Interval(diff, diff, diff, math.inf)
    df = se2**2 / sum(t * t / (len(x) - 1) for t, x in zip(terms, arms))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, df)


def classify(iv: Interval, expect: str, margin: float = 0.0) -> str:
    """agrees / disagrees / inconclusive for an interval and the paper's expected sign."""
    lo, hi = iv.low, iv.high
    if expect == ">":
        return "agrees" if lo > 0 else "disagrees" if hi < 0 else "inconclusive"
    if expect == "<":
        return "agrees" if hi < 0 else "disagrees" if lo > 0 else "inconclusive"
    if -margin < lo and hi < margin:
        return "agrees"
    return "disagrees" if lo > margin or hi < -margin else "inconclusive"


def seeds_to_decide(diff: float, variances: list[float], expect: str, margin: float = 0.0, level: float = 0.95,
                    power: float = 0.80) -> int | None:
    """The smallest n per arm with n ≥ (t(level) + t(power))² · Σ variances / δ² (ν = arms·(n − 1));
    None when δ = 0 (no effect to detect) or more than MAX_SEEDS would be needed."""
    delta = abs(abs(diff) - margin) if expect == "=" else abs(diff)
    if delta == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        nu = len(variances) * (n - 1)
        z = t_quantile(0.5 + level / 2, nu) + t_quantile(power, nu)
        if n >= z * z * sum(variances) / delta**2:
            return n
    return None


def decide_one(c: Comparison, data, level: float = 0.95, power: float = 0.80) -> Outcome:
    """Read the two arms from ``data`` and decide one comparison."""
    a = samples(data, c.a.path)
    b = samples(data, c.b.path) if isinstance(c.b, Arm) else []
    if a is None or b is None:
        return Outcome(c.name, "inconclusive", [], [], None, None, "not measured in these results")
    fa, fb = [v for v in a if math.isfinite(v)], [v for v in b if math.isfinite(v)]
    dropped = len(a) + len(b) - len(fa) - len(fb)
    note = f"{dropped} non-finite value(s) (diverged runs) left out" if dropped else ""
    iv = welch_interval(fa, fb if isinstance(c.b, Arm) else c.b.value, level)
    if iv is None:
        n = min(len(fa), len(fb)) if isinstance(c.b, Arm) else len(fa)
        spread = f"{n} seed{'s' if n != 1 else ''} per arm: the spread is unknown"
        return Outcome(c.name, "inconclusive", a, b, None, None, "; ".join(filter(None, [note, spread])))
    verdict = classify(iv, c.expect, c.margin)
    needed = None
    if verdict == "inconclusive":
        variances = [statistics.variance(x) for x in ([fa, fb] if isinstance(c.b, Arm) else [fa])]
        needed = seeds_to_decide(iv.diff, variances, c.expect, c.margin, level, power)
        if needed is None:
            note = "; ".join(filter(None, [note, "no effect to decide at this spread"]))
    return Outcome(c.name, verdict, a, b, iv, needed, note)


def combine(how: str, verdicts: list[str]) -> str:
    """The rule's verdict from its comparisons' (see the module docstring)."""
    if how == "all":
        return "agrees" if all(v == "agrees" for v in verdicts) else \
            "disagrees" if "disagrees" in verdicts else "inconclusive"
    return "agrees" if "agrees" in verdicts else \
        "disagrees" if all(v == "disagrees" for v in verdicts) else "inconclusive"


def decide(rule: Rule, data) -> Decision:
    """The verdict of ``rule`` on an experiment's ``data`` (as results.json stores it)."""
    outcomes = tuple(decide_one(c, data, rule.level, rule.power) for c in rule.comparisons)
    return Decision(combine(rule.combine, [o.verdict for o in outcomes]), outcomes)


# --- rendering --------------------------------------------------------------------------------------

def _num(x: float, signed: bool = False) -> str:
    return "nan" if not math.isfinite(x) else f"{x:+.4g}" if signed else f"{x:.4g}"


def _decimals(half: float) -> int:
    """Decimals that show a half-width to 2 significant digits (4 significant digits for none)."""
    return max(0, 1 - math.floor(math.log10(half))) if half > 0 else 4


def _interval(iv: Interval) -> str:
    """'+4.216 [+4.199, +4.233]': the digits follow the interval's width."""
    k = _decimals((iv.high - iv.low) / 2) if iv.high > iv.low else 4
    return f"{iv.diff:+.{k}f} [{iv.low:+.{k}f}, {iv.high:+.{k}f}]" if iv.high > iv.low else f"{_num(iv.diff, True)} (no spread)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rule_markdown(rule: Rule) -> str:
    """The rule as it is printed above the result."""
    lines = [f"**Rule** (stated before the run; fingerprint `{fingerprint(rule)}`). {rule.source}: "
             f"“{rule.claim}”", "",
             "| comparison | metric | better | the paper expects | the paper's numbers |", "|---|---|---|---|---|"]
    for c in rule.comparisons:
        expects = f"{c.a.label} {EXPECT[c.expect]} {c.b.label}" + (f" (± {c.margin:g})" if c.expect == "=" else "")
        paper = c.paper + (f" (effect {c.paper_effect:+g})" if c.paper_effect is not None else "")
        lines.append(f"| {_cell(c.name)} | {_cell(c.metric.name)} | {c.metric.better} | {_cell(expects)} | "
                     f"{_cell(paper) or '—'} |")
    lines += ["", f"Decided by the difference of means over seeds with its {rule.level:.0%} Welch interval "
                  "(t-distribution): agrees when the interval excludes zero in the paper's direction (for “equal "
                  "to”: lies within ± the margin), disagrees when it excludes zero the other way (lies outside "
                  f"the margin), inconclusive otherwise; {COMBINE[rule.combine]}."]
    return "\n".join(lines)


def decision_line(decision: Decision) -> str:
    """The verdict word with its reason: 'inconclusive — 1 seed per arm: the spread is unknown'."""
    reason = decision.reason()
    return decision.verdict + (f" — {reason}" if reason else "")


def decision_markdown(rule: Rule, decision: Decision) -> str:
    """The computed verdict and one row per comparison."""
    lines = [f"**Verdict: {decision_line(decision)}** (computed by the rule from the per-seed values, "
             "not written by hand).", "",
             "| comparison | metric | A: mean (seeds) | B: mean (seeds) | A − B [95% interval] | verdict |",
             "|---|---|---|---|---|---|"]
    for c, o in zip(rule.comparisons, decision.outcomes):
        fa = [v for v in o.a if math.isfinite(v)]
        fb = [v for v in o.b if math.isfinite(v)]
        a = f"{_num(statistics.fmean(fa))} ({len(fa)})" if fa else "—"
        b = (f"{_num(statistics.fmean(fb))} ({len(fb)})" if fb else "—") if isinstance(c.b, Arm) else _num(c.b.value)
        iv = o.interval
        diff = (_interval(iv) if iv else
                f"{_num(statistics.fmean(fa) - (statistics.fmean(fb) if isinstance(c.b, Arm) else c.b.value), True)} "
                "(no interval)" if fa and (fb or not isinstance(c.b, Arm)) else "—")
        verdict = o.verdict + (f" (≈{o.seeds_needed} seeds per arm would decide it)" if o.seeds_needed else "") \
            + (f"; {o.note}" if o.note else "")
        lines.append(f"| {_cell(c.name)} | {_cell(c.metric.name)} | {a} | {b} | {diff} | {_cell(verdict)} |")
    return "\n".join(lines)


def interval_summary(rule: Rule, decision: Decision) -> str:
    """'scaled − unscaled, <metric>: +4.216 ± 0.017': the first comparison, mean ± 95% half-width."""
    c, o = rule.comparisons[0], decision.outcomes[0]
    what = f"{c.a.label} − {c.b.label}, {c.metric.name}"
    if o.interval is None:
        return f"{what}: no interval ({o.note})"
    half = (o.interval.high - o.interval.low) / 2
    return f"{what}: {o.interval.diff:+.{_decimals(half)}f} ± {half:.2g}"


def history_markdown(history: tuple[RuleChange, ...]) -> str:
    """The rule's earlier versions, oldest first."""
    if not history:
        return ""
    lines = ["**Rule history** (earlier rules, the verdict each gave, and why it changed):", ""]
    for h in history:
        fp = f"fingerprint `{h.fingerprint}`" if h.fingerprint else "before rules were data"
        lines.append(f"- {h.date} ({fp}). Rule: {h.rule} Verdict then: {h.verdict} Changed because: {h.reason}")
    return "\n".join(lines)


def verdict_text(rule: Rule | None, decision: Decision | None, reading: str) -> str:
    """verdict.md: the computed verdict (when the experiment has a rule), then the reading."""
    if rule is None or decision is None:
        return reading
    return f"{decision_markdown(rule, decision)}\n\n**Reading** (written by the experiment from its numbers). {reading}"


def rule_record(rule: Rule | None, history: tuple[RuleChange, ...]) -> dict | None:
    """What results.json keeps of the rule: the rule as data, its fingerprint and its history."""
    if rule is None:
        return None
    return {"fingerprint": fingerprint(rule), "rule": json.loads(canonical(rule)),
            "history": [asdict(h) for h in history]}
