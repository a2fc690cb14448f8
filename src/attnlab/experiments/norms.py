"""LayerNorm vs BatchNorm vs no normalisation, in a Transformer LM and a small ViT, each at its
own learning rate.

Every LayerNorm of the model (each block's two and the final one) is replaced by BatchNorm over
the batch and the tokens, or removed (:mod:`attnlab.models.ablations`: ``norm``). The LM is a
word-level Transformer on Penn Treebank (the data of Shen et al.'s perplexity, 10,000 words);
the ViT learns digits (quick) or a 10,000-image stratified subset of CIFAR-10 (full).

The question is about optimisation, so one rate for every norm would favour the norm it happens
to suit: each norm of each model is trained at every rate of a grid at the first seed, the rate
with the best validation value (PTB's validation text; 10% of the CIFAR-10 training images held
out) is kept, and the other seeds are trained at that rate (:func:`attnlab.experiments.tuning.tune`).
The comparisons are on the test splits (PTB test, the CIFAR-10 test split), which choose nothing.
An arm whose loss becomes NaN/inf is recorded as diverged (the "crash" of the anchor): it counts
as a chance-level classifier (10%) in the ViT and is left out (with its count) in the LM.

Note: BatchNorm in a causal LM computes its training statistics over all positions of the
batch, future ones included (a small leak the evaluation, with running statistics, does not
have) — one reason it is a poor fit for sequence models.
"""

from __future__ import annotations

import math

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import bar_figure, line_figure
from attnlab.experiments.numbers import final_val, mean_std, pm
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule
from attnlab.experiments.tuning import tune

ORDER = 2
NORMS = ("layer", "batch", "none")
LRS = {"lm": {"quick": [1e-3, 3e-3], "full": [1e-3, 2e-3, 4e-3]},
       "vit": {"quick": [1e-3, 3e-3], "full": [5e-4, 1e-3, 2e-3]}}
CHANCE_PCT = 10.0  # a diverged 10-class ViT is no better than a guess


def ptb_setup(ctx: Context):
    """Word-level Penn Treebank (Mikolov's 10,000-word version; its first 2,000/200/200 lines at
    quick budget): (data config, train settings, model overrides)."""
    from attnlab.data.text import read_text
    from attnlab.tasks.lm import LMDataConfig

    files = {}
    for split, lines in (("train", 2000), ("valid", 200), ("test", 200)):
        full = ctx.data_file("ptb", f"ptb.{split}.txt.gz")
        files[split] = str(full if not ctx.quick else ctx.derived_file(
            f"ptb.{split}-{lines}.txt", lambda full=full, n=lines: "".join(read_text(full).splitlines(True)[:n])))
    # 500 steps of 32 x 32 words at full budget: the 10,000-word output layer makes a step of 32 x 64 words
    # take 0.6 s on one thread (measured, session 7), so 15 LM runs of 750 such steps would need 110 minutes;
    # 32 x 32 words take 0.37 s
    dc = LMDataConfig(**files, tokenizer="word", window=32, steps_per_epoch=ctx.pick(6, 100))
    epochs = ctx.pick(1, 5)  # validated once, at the end: the rate is chosen on the final validation perplexity
    train = dict(epochs=epochs, batch_size=ctx.pick(16, 32), warmup_steps=ctx.pick(2, 100), eval_every=epochs)
    model = ctx.pick(dict(d_model=64, num_layers=2, num_heads=4), dict(d_model=128, num_layers=4, num_heads=4))
    return dc, train, model


def run(ctx: Context) -> Result:
    from attnlab.experiments.cls_vs_gap import cls_setup
    from attnlab.experiments.imagedata import SPEC as IMAGE
    from attnlab.tasks.image import ImageEvalConfig
    from attnlab.tasks.lm import SPEC as LM
    from attnlab.tasks.lm import LMEvalConfig

    lm_dc, lm_train, lm_model = ptb_setup(ctx)
    img_dc, img_train, vit, vit_args = cls_setup(ctx)
    vit = f"{vit}_ablation"  # the same ViT with the norm switch (attnlab.models.ablations)

    def lm_at(norm):
        return lambda lr, s: ctx.train_arm(f"lm-{norm}-lr{lr:g}", LM, lm_dc, {**lm_train, "lr": lr},
                                           "transformer_lm_ablation", {**lm_model, "norm": norm}, seed=s)

    def vit_at(norm):
        return lambda lr, s: ctx.train_arm(f"vit-{norm}-lr{lr:g}", IMAGE, img_dc, {**img_train, "lr": lr}, vit,
                                           {**vit_args, "norm": norm}, seed=s)

    lm = {n: tune(ctx.seeds, LRS["lm"][ctx.budget], lm_at(n), lambda r: final_val(r, "ppl"), "lower") for n in NORMS}
    im = {n: tune(ctx.seeds, LRS["vit"][ctx.budget], vit_at(n), lambda r: 100 * final_val(r, "acc"), "higher")
          for n in NORMS}

    def lm_test(r):
        res = ctx.test_results(r, LMEvalConfig())
        return math.nan if res is None else float(res["test"]["ppl"])

    def vit_test(r):
        res = ctx.test_results(r, ImageEvalConfig())
        return CHANCE_PCT if res is None else 100 * float(res["accuracy"])

    ppl = {n: [lm_test(r) for r in t.runs] for n, t in lm.items()}
    acc = {n: [vit_test(r) for r in t.runs] for n, t in im.items()}
    diverged = {f"{k}-{n}": sum(1 for r in t.runs if r.get("diverged")) for k, d in (("lm", lm), ("vit", im))
                for n, t in d.items()}
    grid_diverged = {f"{k}-{n}": [lr for lr, v in t.grid.items() if not math.isfinite(v)]
                     for k, d in (("lm", lm), ("vit", im)) for n, t in d.items()}
    k = len(ctx.seeds)
    table = [{"norm": n, "LM rate": lm[n].best, "PTB test perplexity (word)": pm(ppl[n], 2),
              "LM diverged": f"{diverged[f'lm-{n}']}/{k}", "ViT rate": im[n].best,
              f"{img_dc.dataset} test accuracy %": pm(acc[n], 2), "ViT diverged": f"{diverged[f'vit-{n}']}/{k}"}
             for n in NORMS]
    lrs_lm, lrs_vit = LRS["lm"][ctx.budget], LRS["vit"][ctx.budget]
    figs = {
        "lm_perplexity": bar_figure(NORMS, [ppl[n] for n in NORMS], "test perplexity per word (PTB)",
                                    "Transformer LM on PTB: LayerNorm vs BatchNorm vs none",
                                    subtitle="each norm at its own rate, chosen on validation"),
        "vit_accuracy": bar_figure(NORMS, [acc[n] for n in NORMS], "test accuracy (%)",
                                   f"ViT on {img_dc.dataset}: LayerNorm vs BatchNorm vs none",
                                   subtitle="each norm at its own rate, chosen on validation"),
        "rate_grid": line_figure({**{f"LM {n}": (lrs_lm, [lm[n].grid[f"{lr:g}"] for lr in lrs_lm]) for n in NORMS}},
                                 "peak learning rate (AdamW)", "PTB validation perplexity (first seed)",
                                 "The rate grid: validation perplexity per norm", logx=True, logy=True),
        "vit_rate_grid": line_figure({f"ViT {n}": (lrs_vit, [im[n].grid[f"{lr:g}"] for lr in lrs_vit]) for n in NORMS},
                                     "peak learning rate (AdamW)", "validation accuracy (%), first seed",
                                     f"The rate grid: ViT validation accuracy per norm ({img_dc.dataset})", logx=True),
    }
    (ml, _), (mb, _) = mean_std(ppl["layer"]), mean_std(ppl["batch"])
    (al, _), (ab, _) = mean_std(acc["layer"]), mean_std(acc["batch"])
    reading = (
        f"Rates chosen on validation (first seed): LM LN {lm['layer'].best}, BN {lm['batch'].best}, none "
        f"{lm['none'].best}; ViT LN {im['layer'].best}, BN {im['batch'].best}, none {im['none'].best}. PTB test "
        f"perplexity per word: LN {pm(ppl['layer'], 2)}, BN {pm(ppl['batch'], 2)} (BN − LN {mb - ml:+.2f}), none "
        f"{pm(ppl['none'], 2)}. {img_dc.dataset} test accuracy: LN {pm(acc['layer'], 2)}%, BN {pm(acc['batch'], 2)}% "
        f"(BN − LN {ab - al:+.2f} points), none {pm(acc['none'], 2)}%. Diverged at the chosen rate: BN in the ViT "
        f"{diverged['vit-batch']} of {k}, BN in the LM {diverged['lm-batch']} of {k}; in the grid: "
        + (", ".join(f"{a} at {', '.join(v)}" for a, v in grid_diverged.items() if v) or "none")
        + " (Yao et al. report frequent crashes of a ViT with BN at ImageNet scale). "
        f"{lm_train['epochs'] * lm_dc.steps_per_epoch} LM steps of {lm_train['batch_size']} x {lm_dc.window} words; "
        f"{img_train['epochs']} ViT epochs. ± is the sample standard deviation over {k} seed(s).")
    data = {"lm_test_ppl": ppl, "vit_test_acc_pct": acc, "diverged": diverged,
            "lm_val_ppl_grid": {n: t.grid for n, t in lm.items()}, "vit_val_acc_grid_pct": {n: t.grid for n, t in im.items()},
            "best_lr": {"lm": {n: t.best for n, t in lm.items()}, "vit": {n: t.best for n, t in im.items()}}}
    return Result(table, reading, figs, data,
                  {"lm": {"data": vars(lm_dc), "train": lm_train, "model": lm_model, "lrs": lrs_lm},
                   "vit": {"data": vars(img_dc), "train": img_train, "model": vit, "model_args": vit_args,
                           "lrs": lrs_vit}})


RULE = Rule(
    claim="a Transformer with BatchNorm in place of LayerNorm is worse: about 1.1 BLEU on IWSLT14 and 1.4 BLEU on WMT14, "
          "and about 2.1 perplexity on PTB; a ViT with every LayerNorm replaced by BatchNorm crashes frequently in training",
    source="Shen et al. 2020 (PowerNorm): Transformer-LN against Transformer-BN in its translation results (Table 1) "
           "and PTB language modelling; Yao et al. 2021 (Leveraging Batch Normalization for Vision Transformers), abstract",
    figure="Shen et al.: BN below LN by 1.1 / 1.4 BLEU (Table 1) and 2.1 PTB perplexity; Yao et al.: a BN ViT crashes",
    comparisons=(
        Comparison(Metric("PTB test perplexity per word, each norm at its own rate", "lower"),
                   Arm("LN", ("lm_test_ppl", "layer")), Arm("BN", ("lm_test_ppl", "batch")), "<",
                   paper="PTB word perplexity, BN about 2.1 above LN", paper_effect=-2.1),
        Comparison(Metric("ViT test accuracy, CIFAR-10 test split (%), each norm at its own rate", "higher"),
                   Arm("LN", ("vit_test_acc_pct", "layer")), Arm("BN", ("vit_test_acc_pct", "batch")), ">",
                   paper="Yao et al.: frequent crashes in training with every LN replaced by BN"),
    ),
)

EXPERIMENT = Experiment(
    name="layernorm-vs-batchnorm",
    question="LayerNorm, BatchNorm or no normalisation in a Transformer LM and a ViT, each at its own learning rate?",
    anchor="Shen et al. 2020 (PowerNorm): BN instead of LN costs about 1.1 BLEU on IWSLT14 and 1.4 BLEU on WMT14 "
           "(Table 1) and about 2.1 perplexity on PTB (the 1.5-2.0 BLEU and 7.7 perplexity quoted before are "
           "PowerNorm's margin over BN); Yao et al. 2021: a ViT with every LN replaced by BN crashes in training",
    cost={"quick": "≈20 s", "full": "≈85 min (2 models x 3 norms: 3 rates at the first seed, 2 more seeds at the "
                                    "chosen rate; a 4-layer word LM on PTB, 500 steps; a width-96 ViT, 4 epochs)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=("model.norm", "train.lr"),  # the norm, and each norm's own rate
)
