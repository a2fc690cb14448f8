"""LayerNorm vs BatchNorm vs no normalisation, in a Transformer LM and a small ViT.

Every LayerNorm of the model (each block's two and the final one) is replaced by BatchNorm over
the batch and the tokens, or removed (:mod:`attnlab.models.ablations`: ``norm``). The LM is a
character Transformer on Tiny Shakespeare (perplexity per character); the ViT learns digits
(quick) or a 10,000-image stratified subset of CIFAR-10 (full). An arm whose loss becomes
NaN/inf is recorded as diverged (the "crash" of the anchor).

Note: BatchNorm in a causal LM computes its training statistics over all positions of the
batch, future ones included (a small leak the evaluation, with running statistics, does not
have) — one reason it is a poor fit for sequence models.
"""

from __future__ import annotations

from attnlab.experiments.base import (
    Context,
    Experiment,
    Result,
    bar_figure,
    final_val,
    line_figure,
    mean_std,
    pm,
    spread_note,
    train_curve,
)
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule

ORDER = 2
NORMS = ("layer", "batch", "none")


def run(ctx: Context) -> Result:
    from attnlab.experiments.imagedata import SPEC as IMAGE
    from attnlab.experiments.text_position import lm_setup
    from attnlab.experiments.vit_position import image_setup
    from attnlab.tasks.lm import SPEC as LM

    lm_dc, lm_train, lm_model = lm_setup(ctx)
    img_dc, img_train, vit, vit_args = image_setup(ctx)
    vit = f"{vit}_ablation"  # the same ViT with the norm switch (attnlab.models.ablations)

    lm = {n: [ctx.train_arm(f"lm-{n}", LM, lm_dc, lm_train, "transformer_lm_ablation", {**lm_model, "norm": n}, seed=s)
              for s in ctx.seeds] for n in NORMS}
    im = {n: [ctx.train_arm(f"vit-{n}", IMAGE, img_dc, img_train, vit, {**vit_args, "norm": n}, seed=s)
              for s in ctx.seeds] for n in NORMS}
    ppl = {n: [final_val(r, "ppl") for r in rs] for n, rs in lm.items()}
    acc = {n: [final_val(r, "acc") for r in rs] for n, rs in im.items()}
    diverged = {f"{k}-{n}": sum(1 for r in rs if r.get("diverged")) for k, d in (("lm", lm), ("vit", im))
                for n, rs in d.items()}

    table = [{"norm": n, "LM val perplexity (char)": pm(ppl[n], 3), "LM diverged": f"{diverged[f'lm-{n}']}/{len(ctx.seeds)}",
              "ViT val accuracy %": pm(acc[n], 2, 100), "ViT diverged": f"{diverged[f'vit-{n}']}/{len(ctx.seeds)}"}
             for n in NORMS]
    figs = {
        "lm_perplexity": bar_figure(NORMS, [ppl[n] for n in NORMS], "validation perplexity per character",
                                    "Transformer LM: LayerNorm vs BatchNorm vs none"),
        "vit_accuracy": bar_figure(NORMS, [[100 * a for a in acc[n]] for n in NORMS], "validation accuracy (%)",
                                   f"ViT on {img_dc.dataset}: LayerNorm vs BatchNorm vs none"),
        "vit_train_loss": line_figure({f"{n} seed {s}": train_curve(r) for n, rs in im.items()
                                       for s, r in zip(ctx.seeds, rs)}, "optimizer step", "training loss",
                                      "ViT training loss (a crash shows as a jump or an early end)"),
    }

    (ml, _), (mb, _) = mean_std(ppl["layer"]), mean_std(ppl["batch"])
    (al, _), (ab, _) = mean_std(acc["layer"]), mean_std(acc["batch"])
    reading = (
        f"LM validation perplexity per character: LN {pm(ppl['layer'], 3)}, BN {pm(ppl['batch'], 3)} (BN − LN "
        f"{mb - ml:+.3f}), none {pm(ppl['none'], 3)}. ViT validation accuracy: LN {pm(acc['layer'], 2, 100)}%, BN "
        f"{pm(acc['batch'], 2, 100)}% (BN − LN {100 * (ab - al):+.2f} points), none {pm(acc['none'], 2, 100)}%. "
        f"Diverged runs: BN in the ViT {diverged['vit-batch']} of {len(ctx.seeds)}, BN in the LM "
        f"{diverged['lm-batch']} of {len(ctx.seeds)} (Yao et al. report frequent crashes of a ViT with BN at ImageNet "
        "scale). Shen et al.'s 2.1 perplexity gap is word-level PTB; ours is per character, so only the direction "
        f"compares. {spread_note(len(ctx.seeds))}.")
    return Result(table, reading, figs, {"lm_ppl": ppl, "vit_acc": acc, "diverged": diverged},
                  {"lm": {"data": vars(lm_dc), "train": lm_train, "model": lm_model},
                   "vit": {"data": vars(img_dc), "train": img_train, "model": vit, "model_args": vit_args}})


RULE = Rule(
    claim="a Transformer with BatchNorm in place of LayerNorm is worse: about 1.1 BLEU on IWSLT14 and 1.4 BLEU on WMT14, "
          "and about 2.1 perplexity on PTB; a ViT with every LayerNorm replaced by BatchNorm crashes frequently in training",
    source="Shen et al. 2020 (PowerNorm): Transformer-LN against Transformer-BN in its translation results (Table 1) "
           "and PTB language modelling; Yao et al. 2021 (Leveraging Batch Normalization for Vision Transformers), abstract",
    figure="Shen et al.: BN below LN by 1.1 / 1.4 BLEU (Table 1) and 2.1 PTB perplexity; Yao et al.: a BN ViT crashes",
    comparisons=(
        Comparison(Metric("LM validation perplexity per character (Tiny Shakespeare)", "lower"),
                   Arm("LN", ("lm_ppl", "layer")), Arm("BN", ("lm_ppl", "batch")), "<",
                   paper="PTB word perplexity, BN about 2.1 above LN", paper_effect=-2.1),
        Comparison(Metric("ViT validation accuracy (CIFAR-10 subset)", "higher"),
                   Arm("LN", ("vit_acc", "layer")), Arm("BN", ("vit_acc", "batch")), ">",
                   paper="Yao et al.: frequent crashes in training with every LN replaced by BN"),
    ),
)

EXPERIMENT = Experiment(
    name="layernorm-vs-batchnorm",
    question="LayerNorm, BatchNorm or no normalisation in a Transformer LM and a ViT?",
    anchor="Shen et al. 2020 (PowerNorm): BN instead of LN costs about 1.1 BLEU on IWSLT14 and 1.4 BLEU on WMT14 "
           "(Table 1) and about 2.1 perplexity on PTB (the 1.5-2.0 BLEU and 7.7 perplexity quoted before are "
           "PowerNorm's margin over BN); Yao et al. 2021: a ViT with every LN replaced by BN crashes in training",
    cost={"quick": "≈15 s", "full": "≈70 min"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=("model.norm",),  # LayerNorm, BatchNorm or none, in the LM and in the ViT
)
