"""Top-k sparse attention (Zhao et al., Explicit Sparse Transformer; its journal version
"Extremely Sparse Transformer with Top-k Selective Attention", Table 1): the encoder-decoder on
Multi30k De->En with full attention, or with every attention layer (encoder and decoder
self-attention, cross-attention) keeping k keys per query, chosen three ways:

- top-k: the k largest scores (``transformer_multi30k_sparse``, ``topk``);
- nearest-k: the k keys nearest the query's position, a window of exactly k keys (``local_k``;
  cross-attention centres it on the source position equal to the target position);
- random-k: k keys drawn at random at every call (``random_k``).

The three sparse arms differ only in how the k keys are chosen: the same k, the same layers, the
same model, data and training. Greedy BLEU on Multi30k's test_2016_flickr (nothing is chosen on
it; the stored run before session 8 measured the validation set: see the rule's history).
"""

from __future__ import annotations

from dataclasses import replace

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import bar_figure
from attnlab.experiments.numbers import mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule, RuleChange, canonical
from attnlab.experiments.translation import small_translation

ORDER = 7
K = 2  # keys per query in every sparse arm: Table 1's sparsest column (2 attended positions)
#: arm -> the model options that make it (every other setting is shared)
ARMS = {"full": {}, "topk": {"topk": K}, "local": {"local_k": K}, "random": {"random_k": K}}
LABELS = {"full": "full", "topk": f"top-{K}", "local": f"nearest-{K} (window)", "random": f"random-{K}"}
#: Table 1 of the journal version, IWSLT 2017 Fr-En, 2 attended positions per query (full: all)
PAPER = {"full": 37.10, "topk": 36.62, "local": 31.98, "random": 2.82}
#: The arms that test the proposed cause of top-k's shortfall, training from scratch (its first steps pass gradient
#: to the k keys of still random scores): each starts from the trained full-attention model of its seed and trains
#: one more epoch with its keys chosen the arm's way; full attention trained the same epoch more is the control.
CAUSE = ("full", "topk", "local")


def setup(ctx: Context) -> tuple:
    """Data, model and training settings shared by every arm: Multi30k De->En with a joint BPE
    vocabulary and a 2+2-layer Transformer of width 128 (full budget; Table 1's models have two
    layers in the encoder and the decoder), 3 epochs."""
    return small_translation(ctx, epochs=(1, 3))


def train_arms(ctx: Context, dc, model: dict, train: dict) -> dict[str, list[dict]]:
    """Every arm, every seed: arm -> the trained runs, in seed order."""
    from attnlab.tasks.translate import SPEC

    return {arm: [ctx.train_arm(arm, SPEC, dc, train, "transformer_multi30k_sparse", {**model, **opts}, seed=s)
                  for s in ctx.seeds] for arm, opts in ARMS.items()}


def train_cause_arms(ctx: Context, dc, model: dict, train: dict, full: list[dict]) -> dict[str, list[dict]]:
    """:data:`CAUSE`'s arms, every seed: each fine-tunes seed s's trained full-attention run (its
    best checkpoint, the one scored) for one epoch with a short warm-up."""
    from attnlab.tasks.translate import SPEC

    # one epoch more at full budget (the arms trained 3); two at quick, where the arms train one: the epochs differ
    # between the arms and their cause arms at both budgets
    more = {**train, "epochs": ctx.pick(2, 1), "warmup_steps": ctx.pick(2, 50)}
    return {arm: [ctx.train_arm(f"{arm}-from-full", SPEC, replace(dc, init=f"{r['run_dir']}:best"), more,
                                "transformer_multi30k_sparse", {**model, **ARMS[arm]}, seed=s)
                  for s, r in zip(ctx.seeds, full)] for arm in CAUSE}


def reading(bleu: dict[str, list[float]], n_seeds: int) -> str:
    """The numbers, set beside Table 1's (no verdict: the rule gives it)."""
    m = {a: mean_std(v)[0] for a, v in bleu.items()}
    paper = {a: PAPER["topk"] - PAPER[a] for a in ("local", "random", "full")}
    return (f"Greedy BLEU with {K} keys per query in every attention layer (encoder and decoder self-attention and "
            "cross-attention): " + ", ".join(f"{LABELS[a]} {pm(bleu[a], 2)}" for a in ARMS) + ". "
            + "; ".join(f"top-{K} − {LABELS[a]}: {m['topk'] - m[a]:+.2f} BLEU (Table 1, IWSLT Fr-En: {paper[a]:+.2f})"
                        for a in ("local", "random", "full"))
            + f". In Table 1 the window restricts self-attention only (cross-attention stays dense); here the "
              f"nearest-{K} arm restricts every layer top-{K} restricts, so the arms differ only in how the keys are "
              f"chosen. {spread_note(n_seeds)}.")


def cause_reading(bleu: dict[str, list[float]]) -> str:
    m = {a: mean_std(v)[0] for a, v in bleu.items()}
    return ("Started from the trained full-attention model and trained one epoch more: "
            + ", ".join(f"{LABELS[a]} {pm(bleu[a], 2)}" for a in CAUSE)
            + f"; top-{K} − full {m['topk'] - m['full']:+.2f}, top-{K} − {LABELS['local']} {m['topk'] - m['local']:+.2f} "
              "BLEU (the test of the proposed cause, training from scratch).")


def run(ctx: Context) -> Result:
    dc, model, train = setup(ctx)
    runs = train_arms(ctx, dc, model, train)
    test = ctx.multi30k_test(ctx.pick(40, None))
    cause = train_cause_arms(ctx, dc, model, train, runs["full"])

    def greedy_bleu(arms: dict[str, list[dict]]) -> dict[str, list[float]]:
        return {a: [ctx.translation_scores(r, tag="test-greedy", beam=1, **test)["bleu"] for r in rs] for a, rs in arms.items()}

    def val_acc(rs: list[dict]) -> list[float]:
        return [(r["metrics"] or {}).get("val_accuracy", float("nan")) for r in rs]

    bleu, cause_bleu = greedy_bleu(runs), greedy_bleu(cause)
    acc = {a: val_acc(rs) for a, rs in runs.items()}
    table = [{"attention": LABELS[a], "keys per query": "all" if a == "full" else K, "greedy BLEU (test)": pm(bleu[a], 2),
              "val next-token acc %": pm(acc[a], 2, 100), "Table 1 BLEU (IWSLT Fr-En)": PAPER[a]} for a in ARMS]
    table += [{"attention": f"{LABELS[a]}, from trained full + 1 epoch", "keys per query": "all" if a == "full" else K,
               "greedy BLEU (test)": pm(cause_bleu[a], 2),
               "val next-token acc %": pm(val_acc(rs), 2, 100),
               "Table 1 BLEU (IWSLT Fr-En)": ""} for a, rs in cause.items()]
    figs = {"bleu": bar_figure([LABELS[a] for a in ARMS], [bleu[a] for a in ARMS], "greedy BLEU (Multi30k test_2016_flickr)",
                               f"{K} keys per query, chosen by score, by place or at random, vs full attention",
                               subtitle="every attention layer (self and cross) keeps the same number of keys")}
    data = {"bleu": bleu, "val_accuracy": acc, "keys_per_query": K, "cause_bleu": cause_bleu,
            "parameters": {a: rs[0].get("parameters") for a, rs in runs.items()}}
    config = {"data": vars(dc), "test": test, "model": model, "train": train, "arms": ARMS, "keys_per_query": K,
              "cause_arms": {a: "the seed's trained full-attention run + 1 epoch" for a in CAUSE}}
    return Result(table, reading(bleu, len(ctx.seeds)) + " " + cause_reading(cause_bleu), figs, data, config,
                  left_out=["k = 4, 8 and 16 (Table 1's other columns): one k keeps 3 seeds per arm within the budget; "
                            "k = 2 is where Table 1 separates the methods most"])


BLEU = Metric(f"greedy BLEU, Multi30k De-En test_2016_flickr ({K} keys per query in the sparse arms)", "higher")
BLEU_BEFORE = Metric(f"greedy BLEU, Multi30k De-En validation set ({K} keys per query in the sparse arms)", "higher")


def _against(arm: str, expect: str, paper: str, margin: float = 0.0, metric: Metric = BLEU) -> Comparison:
    return Comparison(metric, Arm(LABELS["topk"], ("bleu", "topk")), Arm(LABELS[arm], ("bleu", arm)), expect,
                      margin, paper=paper, paper_effect=round(PAPER["topk"] - PAPER[arm], 2))


def _cause(arm: str, expect: str, paper: str, margin: float = 0.0) -> Comparison:
    return Comparison(BLEU, Arm(f"{LABELS['topk']}, from trained full", ("cause_bleu", "topk")),
                      Arm(f"{LABELS[arm]}, from trained full", ("cause_bleu", arm)), expect, margin,
                      paper="the cause test (training from scratch), each arm started from the seed's trained "
                            f"full-attention model: {paper}", paper_effect=round(PAPER["topk"] - PAPER[arm], 2))


RULE = Rule(
    claim="The proposed method enables much more sparse attention [than other sparse attention methods] … we can avoid "
          "poor BLEU scores towards extreme sparsity: with 2 attended positions per query, Top-k Selective Attention "
          "reaches 36.62 BLEU against Window Attention's 31.98 and Random Attention's 2.82, full attention 37.10",
    source="Zhao et al., “Extremely Sparse Transformer with Top-k Selective Attention” (the journal version of the "
           "Explicit Sparse Transformer, arXiv:1912.11637), Table 1 (IWSLT 2017 Fr-En, 2+2-layer Transformer, BLEU by "
           "number of attended positions 16/8/4/2) and §6.1",
    figure="Table 1, IWSLT Fr-En, 2 attended positions: top-k 36.62, window 31.98, random 2.82 BLEU; full 37.10",
    comparisons=(
        _against("local", ">", "Table 1, 2 attended positions: Top-k 36.62, Window Attention 31.98 (its window "
                               "restricts self-attention only)"),
        _against("random", ">", "Table 1, 2 attended positions: Top-k 36.62, Random Attention 2.82"),
        _against("full", "=", "Table 1: Top-k 36.62 at 2 attended positions (36.95–37.64 at 4–16), full attention "
                              "37.10", margin=1.0),
        _cause("full", "=", "Table 1, top-k 36.62 against full attention 37.10; margin ±1 BLEU set here", margin=1.0),
        _cause("local", ">", "Table 1, top-k 36.62 against Window Attention 31.98"),
    ),
)

HISTORY = (
    RuleChange(
        fingerprint="b758b2c896c6a8e6",
        rule=canonical(replace(RULE, comparisons=RULE.comparisons[:3])),  # the rule above without the cause tests
        verdict="disagrees: top-2 beats random-2 (+4.9 BLEU) but falls 8.1 BLEU below the matched window and 8.5 below "
                "full attention (session 8, 3 seeds, 3 epochs from scratch)",
        reason="Issue 21, point 6: a result that disagrees with its paper gets the arms that test the proposed cause. "
               "Added: top-2, the window and full attention each started from the seed's trained full-attention "
               "model and trained one epoch more (training from scratch, where top-k's first steps pass gradient to "
               "the keys of random scores, is the proposed cause).",
        date="2026-12-07"),
    RuleChange(
        fingerprint="66e08407f7ea2255",
        rule=canonical(replace(RULE, comparisons=tuple(replace(c, metric=BLEU_BEFORE) for c in RULE.comparisons[:3]))),
        verdict="inconclusive: the stored run (session 4, 1 seed) predates the rule, so none of its comparisons is "
                "measured in it",
        reason="Issue 21, point 5: BLEU on test_2016_flickr for the translation experiments (the validation set is "
               "the one the runs' best checkpoints are chosen on). The comparisons are unchanged.",
        date="2026-12-07"),
)

EXPERIMENT = Experiment(
    name="topk-attention",
    question="Does keeping only the top-k attention scores per query hurt translation (vs the k nearest keys, vs k "
             "random keys)?",
    anchor="Zhao et al., Extremely Sparse Transformer with Top-k Selective Attention (journal version of the Explicit "
           "Sparse Transformer), Table 1, IWSLT 2017 Fr-En BLEU: full 37.10; 2 attended positions: Top-k 36.62, "
           "Window 31.98, Random 2.82 (8 positions: Top-k 37.64, Random 14.55)",
    cost={"quick": "≈20 s", "full": "≈85 min, and ≈30 min for the cause arms (3 x 3 runs of one epoch)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    history=HISTORY,
    # how each query's keys are chosen (ARMS); the cause arms start from a trained run and train one epoch with a
    # shorter warm-up
    variables=("model.topk", "model.local_k", "model.random_k", "data.init", "train.epochs", "train.warmup_steps",
               "steps"),
)
