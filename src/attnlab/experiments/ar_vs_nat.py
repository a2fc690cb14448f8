"""Autoregressive vs non-autoregressive decoding on Multi30k De->En: quality (BLEU) and latency of
greedy and beam search with the Transformer, and of mask-predict (Ghazvininejad et al. 2019) —
trained on the real targets and on the autoregressive model's own translations of the training
sources (sequence-level knowledge distillation, Kim & Rush 2016) — at batch 1 and batch 64.

As in the paper, the students learn from a teacher far stronger than themselves: one
autoregressive Transformer trained once per experiment (seed 0) with the recipe of BENCHMARKS.md's
Multi30k row (d_model 256, 3+3 layers, 8 heads, FFN 512, joint BPE 6,000, 8 epochs, cosine
schedule: 37.06 greedy BLEU on test_2016_flickr there), whose greedy translations of the training
sources are the distilled targets. The students, the autoregressive one on the real targets and
the two mask-predict ones, are 2+2 layers of width 128, trained 3 epochs each, 3 seeds. BLEU on
test_2016_flickr, which chooses nothing (the stored run before session 8 distilled from an
autoregressive model of the student's own size and measured the validation set: see the rule's
history).

Every model is a run of the one run layer; the distilled corpus is written next to the runs
(``OUT/data/distilled-*.en``) and reused when the experiment is run again.
"""

from __future__ import annotations

from dataclasses import replace

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import bar_figure
from attnlab.experiments.numbers import mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule, RuleChange, canonical
from attnlab.experiments.translation import small_translation

ORDER = 11
#: The test of the proposed cause of mask-predict's distance to beam search (the budget, which hurts the model that
#: must predict every position at once more): the autoregressive and the distilled mask-predict students trained
#: CAUSE_TIMES the epochs, each decoded the way the rule reads it.
CAUSE_TIMES = 3


def distill(ctx: Context, teacher: dict, src_file: str) -> str:
    """The teacher's greedy translations of the training sources, one per line (written once)."""
    from attnlab.data.parallel import read_lines
    from attnlab.runs import open as load
    from attnlab.tasks.translate import DecodeOptions, translate_lines

    def make() -> str:
        run = load(teacher["run_dir"])
        hyps = translate_lines(run.model, run.extras["src_tokenizer"], run.extras["tgt_tokenizer"], read_lines(src_file),
                               DecodeOptions(beam=1, batch_size=64, **ctx.decode_limits()), progress=ctx.progress)
        return "".join((h or ".") + "\n" for h in hyps)  # an empty translation would drop its pair

    return str(ctx.derived_file("distilled.en", make))


def setup(ctx: Context) -> tuple:
    """Multi30k De->En with a joint BPE vocabulary; every student 2+2 layers of width 128 at full
    budget (the reading gives the parameter counts of the runs), 3 epochs."""
    return small_translation(ctx, epochs=(1, 3))


def teacher_setup(ctx: Context, dc) -> tuple:
    """The teacher at full budget: BENCHMARKS.md's Multi30k De->En recipe (transformer_multi30k's
    defaults: d_model 256, 3+3 layers, 8 heads, FFN 512; joint BPE 6,000, batches of 2,048 tokens,
    8 epochs, lr 1e-3 after 400 warm-up steps, cosine to 1e-5). At quick budget a student-sized
    model, one epoch. Returns (data config, train settings, model overrides)."""
    tdc = replace(dc, bpe_vocab_size=ctx.pick(dc.bpe_vocab_size, 6000), max_tokens=ctx.pick(dc.max_tokens, 2048))
    train = dict(epochs=ctx.pick(1, 8), lr=1e-3, schedule="cosine", min_lr=1e-5, warmup_steps=ctx.pick(20, 400),
                 log_every=ctx.pick(5, 50))
    model = ctx.pick(dict(d_model=64, num_heads=4, d_ff=128, dropout=0.0, num_encoder_layers=2,
                          num_decoder_layers=2), {})
    return tdc, train, model


def vocabulary(dc) -> dict:
    """The data's vocabulary fields, handed to a mask-predict model explicitly: the run layer gives a
    model only the data fields at the top of its config, and MaskPredictConfig keeps them inside its
    Transformer config (without this the mask-predict arms had an 8,000-token vocabulary, the
    registry default, against the data's 4,000 and the autoregressive model's)."""
    from attnlab.tasks.translate import load_data

    fields = load_data(dc, progress=False).model_fields
    return {k: fields[k] for k in ("src_vocab_size", "tgt_vocab_size", "share_embeddings", "pad_id")}


#: budget-independent names of the decoders the rule reads (mask-predict at the largest T)
KEYS = {"greedy": "greedy", "beam 5": "beam5", "raw": "mask_predict_raw", "distilled": "mask_predict_distilled"}


def by_key(res: dict, t_hi: int) -> dict:
    """Each measure (bleu, ms_b1, ms_b64) of the decoders the rule reads, under KEYS' names."""
    names = {"greedy": "greedy", "beam 5": "beam 5", "raw": f"mask-predict T={t_hi} (raw)",
             "distilled": f"mask-predict T={t_hi} (distilled)"}
    return {measure: {KEYS[k]: res[name][measure] for k, name in names.items()} for measure in ("bleu", "ms_b1", "ms_b64")}


def run(ctx: Context) -> Result:
    from attnlab.tasks.translate import SPEC

    dc, stacks, train = setup(ctx)
    test = ctx.multi30k_test(ctx.pick(40, None))
    latency_n = ctx.pick(8, 100)
    lat = ctx.multi30k_test(latency_n)  # the first sentences of the test set
    tdc, ttrain, tmodel = teacher_setup(ctx, dc)
    teacher = ctx.train_arm("teacher", SPEC, tdc, ttrain, "transformer_multi30k", tmodel, seed=0, reference=True)
    teacher_bleu = ctx.translation_scores(teacher, tag="test-greedy", beam=1, **test)["bleu"]
    kd = replace(dc, tgt=distill(ctx, teacher, dc.src))
    nat_raw, nat_kd = {**stacks, **vocabulary(dc)}, {**stacks, **vocabulary(kd)}  # each corpus read once, not per seed
    iterations = ctx.pick([2], [4, 10])
    decoders = {"greedy": ("ar", dict(beam=1)), "beam 5": ("ar", dict(beam=5))}
    for src_name in ("raw", "distilled"):
        for t in iterations:
            decoders[f"mask-predict T={t} ({src_name})"] = (f"nat-{src_name}", dict(iterations=t, length_beam=3))
    res: dict[str, dict[str, list]] = {d: {"bleu": [], "ms_b1": [], "ms_b64": []} for d in decoders}

    def scores(run: dict, name: str, batch_size: int, sentences: dict) -> dict:
        """``attnlab eval`` of ``run`` with decoder ``name`` of ``decoders`` (kept under a tag named after it)."""
        tag = name.replace(" ", "").replace("(", "-").replace(")", "").replace("=", "")
        return ctx.translation_scores(run, tag=f"test-{tag}-b{batch_size}", **decoders[name][1], batch_size=batch_size,
                                      **sentences)

    # every arm is asked for before any is read: with --jobs they train side by side
    per_seed = [{"ar": ctx.train_arm("ar", SPEC, dc, train, "transformer_multi30k", stacks, seed=seed),
                 "nat-raw": ctx.train_arm("nat-raw", SPEC, dc, train, "mask_predict_multi30k", nat_raw, seed=seed),
                 "nat-distilled": ctx.train_arm("nat-distilled", SPEC, kd, train, "mask_predict_multi30k", nat_kd,
                                                seed=seed)}
                for seed in ctx.seeds]
    t_hi = iterations[-1]
    longer = {**train, "epochs": CAUSE_TIMES * train["epochs"]}
    cause = {"beam5": [], "mask_predict_distilled": []}
    cause_runs = [(ctx.train_arm(f"ar-{CAUSE_TIMES}x", SPEC, dc, longer, "transformer_multi30k", stacks, seed=seed),
                   ctx.train_arm(f"nat-distilled-{CAUSE_TIMES}x", SPEC, kd, longer, "mask_predict_multi30k", nat_kd,
                                 seed=seed))
                  for seed in ctx.seeds]
    ctx.wait()  # latencies are not measured beside training arms
    for runs in per_seed:
        for name, (arm, _) in decoders.items():
            full = scores(runs[arm], name, 64, test)
            res[name]["bleu"].append(full["bleu"])
            res[name]["ms_b64"].append(1e3 * full.get("seconds", float("nan")) / max(1, full.get("sentences", 1)))
            one = scores(runs[arm], name, 1, lat)
            res[name]["ms_b1"].append(1e3 * one.get("seconds", float("nan")) / max(1, one.get("sentences", 1)))
    for ar, nat in cause_runs:
        cause["beam5"].append(scores(ar, "beam 5", 64, test)["bleu"])
        cause["mask_predict_distilled"].append(scores(nat, f"mask-predict T={t_hi} (distilled)", 64, test)["bleu"])
    table = [{"decoder": d, "BLEU (test)": pm(r["bleu"], 2), "ms/sentence, batch 1": pm(r["ms_b1"], 1),
              "ms/sentence, batch 64": pm(r["ms_b64"], 2)} for d, r in res.items()]
    table += [{"decoder": f"{d}, students trained {CAUSE_TIMES}x the epochs", "BLEU (test)": pm(cause[k], 2)}
              for d, k in (("beam 5", "beam5"), (f"mask-predict T={t_hi} (distilled)", "mask_predict_distilled"))]
    figs = {"bleu": bar_figure(list(res), [r["bleu"] for r in res.values()], "BLEU (Multi30k test_2016_flickr)",
                               "Quality: autoregressive vs mask-predict"),
            "latency_b1": bar_figure(list(res), [r["ms_b1"] for r in res.values()], "ms per sentence at batch 1",
                                     "Latency at batch 1 (one sentence at a time)")}
    params = {arm: ctx.arms.get(f"{arm}-s{ctx.seeds[0]}", {}).get("parameters") for arm in ("ar", "nat-raw")}
    params["teacher"] = teacher.get("parameters")
    data = {"decoders": res, **by_key(res, t_hi), "iterations": t_hi, "parameters": params,
            "teacher_bleu": teacher_bleu, "cause_bleu": cause}
    gap = mean_std(cause["mask_predict_distilled"])[0] - mean_std(cause["beam5"])[0]
    cause_text = (f" Students trained {CAUSE_TIMES}x as long (the test of the proposed cause, the budget): beam 5 "
                  f"{pm(cause['beam5'], 2)}, mask-predict T={t_hi} distilled {pm(cause['mask_predict_distilled'], 2)} "
                  f"({gap:+.2f}).")
    return Result(table, reading(res, t_hi, params, teacher_bleu, len(ctx.seeds)) + cause_text, figs, data,
                  {"data": vars(dc), "test": test, "model": stacks, "train": train, "iterations": iterations,
                   "latency_sentences": latency_n,
                   "teacher": {"data": vars(tdc), "train": ttrain, "model": "transformer_multi30k", "model_args": tmodel},
                   "distillation": "greedy translations of the training sources by the teacher (one run, seed 0)",
                   "cause_arms": f"the autoregressive and the distilled mask-predict students, {CAUSE_TIMES}x the epochs"})


def reading(res: dict, t_hi: int, params: dict, teacher_bleu: float, n_seeds: int) -> str:
    """The numbers (no verdict: the rule gives it)."""
    m = {d: {k: mean_std(v)[0] for k, v in r.items()} for d, r in res.items()}
    raw, kd = m[f"mask-predict T={t_hi} (raw)"], m[f"mask-predict T={t_hi} (distilled)"]
    g, b = m["greedy"], m["beam 5"]
    size = f"{params['ar']:,} parameters autoregressive, {params['nat-raw']:,} per mask-predict model, " \
        f"{params['teacher']:,} in the teacher" if all(params.values()) else "parameters not recorded"
    return (f"BLEU: greedy {pm(res['greedy']['bleu'], 2)}, beam 5 {pm(res['beam 5']['bleu'], 2)}, mask-predict T={t_hi} "
            f"{pm(res[f'mask-predict T={t_hi} (raw)']['bleu'], 2)} on raw targets and "
            f"{pm(res[f'mask-predict T={t_hi} (distilled)']['bleu'], 2)} on the teacher's translations (distilled − raw "
            f"{kd['bleu'] - raw['bleu']:+.2f}; mask-predict distilled − beam 5 {kd['bleu'] - b['bleu']:+.2f}, Table 1 of "
            f"the paper: −0.71). The teacher, trained once, reaches {teacher_bleu:.2f} greedy BLEU on the same test set "
            f"(the student-sized autoregressive model {g['bleu']:.2f}). Latency per sentence at batch 1: greedy "
            f"{g['ms_b1']:.1f} ms, beam 5 {b['ms_b1']:.1f}, mask-predict T={t_hi} {kd['ms_b1']:.1f}; at batch 64: "
            f"{g['ms_b64']:.2f}, {b['ms_b64']:.2f}, {kd['ms_b64']:.2f} ({size}). {spread_note(n_seeds)}.")


BLEU = "BLEU, Multi30k De-En test_2016_flickr (mask-predict at its largest T: 10 at full budget)"
BLEU_BEFORE = "BLEU, Multi30k De-En validation set (mask-predict at its largest T: 10 at full budget)"


def _bleu(a: str, b: str, expect: str, paper: str, margin: float = 0.0, effect: float | None = None,
          metric: str = BLEU) -> Comparison:
    label = {"beam5": "beam 5", "mask_predict_raw": "mask-predict raw", "mask_predict_distilled": "mask-predict distilled"}
    return Comparison(Metric(metric, "higher"), Arm(label[a], ("bleu", a)), Arm(label[b], ("bleu", b)), expect, margin,
                      paper=paper, paper_effect=effect)


CLAIM = ("By applying this strategy for a constant number of iterations, our model … is also able to reach within about "
         "1 BLEU point of a typical left-to-right transformer model; training with model distillation substantially "
         "outperforms training on raw data")
SOURCE = ("Ghazvininejad et al. 2019 (Mask-Predict), abstract, Table 1 (WMT'14 EN-DE: CMLM with mask-predict, T=10, "
          "27.03 BLEU; base Transformer with beam search 27.74) and its analysis of model distillation")
FIGURE = "Table 1, WMT'14 EN-DE: mask-predict T=10 27.03 vs Transformer with beam search 27.74 BLEU"
WITHIN = ("Table 1, WMT'14 EN-DE: 27.03 (T=10) vs 27.74 (beam search): “within about 1 BLEU point”")

RULE = Rule(
    claim=CLAIM,
    source=SOURCE + ". The students here learn, as in the paper, from a stronger autoregressive Transformer (BENCHMARKS.md's "
                    "Multi30k recipe, 37 greedy BLEU there), trained once; the students are smaller and trained shorter "
                    "than the paper's",
    figure=FIGURE,
    comparisons=(
        _bleu("mask_predict_distilled", "beam5", "=", WITHIN, margin=1.0, effect=-0.71),
        _bleu("mask_predict_distilled", "mask_predict_raw", ">", "distillation “substantially outperforms” raw data "
              "(the paper's teacher: a fully trained Transformer; ours: BENCHMARKS.md's Multi30k recipe)"),
        Comparison(Metric(BLEU, "higher"), Arm(f"mask-predict distilled, {CAUSE_TIMES}x epochs",
                                               ("cause_bleu", "mask_predict_distilled")),
                   Arm(f"beam 5, {CAUSE_TIMES}x epochs", ("cause_bleu", "beam5")), "=", 1.0,
                   paper=f"the cause test (the budget) of “within about 1 BLEU point”: both students trained "
                         f"{CAUSE_TIMES}x as long; " + WITHIN, paper_effect=-0.71),
    ),
)

HISTORY = (
    RuleChange(
        fingerprint="227f1d10b8ec9a09",
        rule=canonical(replace(RULE, comparisons=RULE.comparisons[:2])),  # the rule above without the cause test
        verdict="disagrees: distilled mask-predict at T=10 is 12.6 BLEU below beam 5 (the paper: −0.71); distillation "
                "helps mask-predict (+1.9 BLEU [+0.3, +3.6], agrees) (session 9, 3 seeds, 3 epochs)",
        reason="Issue 21, point 6: a result that disagrees with its paper gets the arm that tests the proposed cause. "
               f"Added: the autoregressive and the distilled mask-predict students trained {CAUSE_TIMES}x the epochs "
               "(the budget is the proposed cause: the paper's students train 300k steps).",
        date="2026-12-07"),
    RuleChange(
        fingerprint="bf028013d55ad382",
        rule=canonical(Rule(
            claim=CLAIM,
            source=SOURCE + ". Not reproduced here: the paper's students learn from a fully trained autoregressive "
                            "Transformer; our teacher is the autoregressive model of the same run, of the student's size "
                            "and training (22 greedy BLEU in the stored 1-seed run), so the distillation comparison does "
                            "not test the paper's setting, and a gap to beam search is expected from the weak teacher and "
                            "the short training alone",
            figure=FIGURE,
            comparisons=(
                _bleu("mask_predict_distilled", "beam5", "=", WITHIN, margin=1.0, effect=-0.71, metric=BLEU_BEFORE),
                _bleu("mask_predict_distilled", "mask_predict_raw", ">", "distillation “substantially outperforms” raw "
                      "data (the paper's teacher: a fully trained Transformer; ours: one of the student's size)",
                      metric=BLEU_BEFORE),
            ))),
        verdict="inconclusive: the stored run (session 4, 1 seed) predates the rule, so none of its comparisons is "
                "measured in it",
        reason="Issue 21, point 5: distillation from a teacher at least as good as the benchmark Transformer (about "
               "37 BLEU), as the Mask-Predict paper distils, instead of the student-sized model of the same seed; BLEU "
               "on test_2016_flickr instead of the validation set. The comparisons are unchanged.",
        date="2026-12-07"),
)

EXPERIMENT = Experiment(
    name="ar-vs-nat",
    question="Autoregressive or non-autoregressive decoding: quality and latency, with and without distillation?",
    anchor="Ghazvininejad et al. 2019 (Mask-Predict), Table 1, WMT'14 En-De: 27.03 BLEU with T=10 iterations vs 27.74 "
           "for the autoregressive base Transformer with beam search, decoding in a constant number of parallel passes; "
           "trained on the translations of a stronger autoregressive teacher (distillation outperforms raw data); "
           "Gu et al. 2018 and Kim & Rush 2016 on distillation. Our teacher: BENCHMARKS.md's Multi30k Transformer "
           "recipe (37 greedy BLEU there), trained once",
    cost={"quick": "≈20 s", "full": "≈85 min (the teacher, 8 epochs of the benchmark recipe, ≈45 min; its translations "
                                    "of the training sources; 3 students x 3 seeds, 3 epochs each), and ≈100 min for "
                                    "the cause arms (2 students x 3 seeds, 9 epochs each)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    history=HISTORY,
    # the model (autoregressive or mask-predict) and the targets (real or distilled); the same 3 epochs over the
    # distilled targets make other token batches, so a few percent more or fewer optimizer steps
    # the cause arms train CAUSE_TIMES the epochs
    variables=("model.name", "data.tgt", "steps", "train.epochs"),
)
