"""Class token or global average pooling, across a learning-rate grid (ViT paper, appendix D.3,
Fig. 9): the same ViT read out from a class token (``global_pool="token"``) or from the mean of
the patch tokens without a class token (``global_pool="avg"``), at each learning rate.

Fig. 9 trains the class token at 8e-4 and pooling at 8e-4 and 3e-4; our grid holds those rates
and 5e-4 and 1e-3 between them, with 3e-3 above. Each read-out is then taken at its own best
rate — the rate with the highest mean validation accuracy over seeds, on images held out from
the training split — and reported on the CIFAR-10 test split, which chooses nothing; beside it,
the paper's fixed-rate comparison (both at 8e-4) on the test split.
"""

from __future__ import annotations

import math

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import line_figure
from attnlab.experiments.numbers import final_val, mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule
from attnlab.experiments.tuning import best_rate
from attnlab.experiments.vit_position import image_setup

ORDER = 6
POOLS = {"class token": {"class_token": True, "global_pool": "token"},
         "average pooling": {"class_token": False, "global_pool": "avg"}}
SHORT = {"class token": "cls", "average pooling": "gap"}
PAPER_LR = 8e-4  # Fig. 9: the class token's rate, at which pooling is compared too
LRS = {"quick": [3e-4, 8e-4], "full": [3e-4, 5e-4, 8e-4, 1e-3, 3e-3]}


def cls_setup(ctx: Context):
    """:func:`~attnlab.experiments.vit_position.image_setup` with a validation split held out of
    the training images (10% of each class, 2,000 of them kept at full budget) to choose the
    rate, and at full budget a narrower ViT (width 96, 0.31M parameters) for 4 epochs with one
    evaluation at the end: 5 rates x 2 read-outs x 3 seeds in 90 minutes."""
    from dataclasses import replace

    dc, train, model, args = image_setup(ctx)
    dc = replace(dc, val_fraction=0.1)  # test_size keeps 2,000 of the held-out images at full budget
    epochs = ctx.pick(train["epochs"], 4)
    args = ctx.pick(args, {**args, "embed_dim": 96})
    return dc, {**train, "epochs": epochs, "eval_every": epochs}, model, args


def test_split_accuracy(ctx: Context, summary: dict) -> float:
    """Accuracy of a trained arm's last checkpoint on its dataset's whole test split."""
    from attnlab.tasks.image import ImageEvalConfig

    res = ctx.test_results(summary, ImageEvalConfig())
    return math.nan if res is None else float(res["accuracy"])


def run(ctx: Context) -> Result:
    from attnlab.experiments.imagedata import SPEC

    dc, train, model, args = cls_setup(ctx)
    lrs = LRS[ctx.budget]
    keys = [f"{lr:g}" for lr in lrs]
    runs = {p: {f"{lr:g}": [ctx.train_arm(f"{SHORT[p]}-lr{lr:g}", SPEC, dc, {**train, "lr": lr}, model, {**args, **kw},
                                          seed=s) for s in ctx.seeds] for lr in lrs} for p, kw in POOLS.items()}
    val = {p: {lr: [100 * final_val(r, "acc") for r in rs] for lr, rs in d.items()} for p, d in runs.items()}
    best = {p: best_rate(val[p]) for p in POOLS}
    tested = {f"{PAPER_LR:g}", *best.values()} & set(val["class token"])
    test = {p: {lr: [100 * test_split_accuracy(ctx, r) for r in runs[p][lr]] for lr in sorted(tested, key=float)}
            for p in POOLS}
    at_best = {p: test[p][best[p]] for p in POOLS}

    table = [{"learning rate": lr, **{f"{p} val acc %": pm(val[p][lr], 2) for p in POOLS},
              **{f"{p} test acc %": pm(test[p][lr], 2) if lr in test[p] else "—" for p in POOLS}} for lr in keys]
    table.append({"learning rate": "each at its best (chosen on validation)",
                  **{f"{p} val acc %": f"lr {best[p]}" for p in POOLS},
                  **{f"{p} test acc %": pm(at_best[p], 2) for p in POOLS}})
    figs = {"accuracy_vs_lr": line_figure(
        {f"{p} (validation)": (lrs, [mean_std(v)[0] for v in val[p].values()], [mean_std(v)[1] for v in val[p].values()])
         for p in POOLS}, "peak learning rate (AdamW)", "validation accuracy (%)",
        f"Class token vs average pooling on {dc.dataset}", logx=True,
        subtitle=f"{train['epochs']} epochs; validation: 10% of the training images held out")}
    (cb, _), (gb, _) = mean_std(at_best["class token"]), mean_std(at_best["average pooling"])
    fixed = {p: mean_std(test[p][f"{PAPER_LR:g}"])[0] for p in POOLS} if f"{PAPER_LR:g}" in tested else None
    reading = (
        f"Best rate on validation: class token {best['class token']}, average pooling {best['average pooling']}. On the "
        f"test split at those rates: class token {pm(at_best['class token'])}%, average pooling "
        f"{pm(at_best['average pooling'])}% (class token − pooling {cb - gb:+.2f} points). "
        + (f"Both at {PAPER_LR:g}, the paper's fixed rate: class token {fixed['class token']:.2f}%, pooling "
           f"{fixed['average pooling']:.2f}% ({fixed['class token'] - fixed['average pooling']:+.2f}). " if fixed else "")
        + "Validation accuracy, class token − pooling at each rate: "
        + ", ".join(f"{lr} {mean_std(val['class token'][lr])[0] - mean_std(val['average pooling'][lr])[0]:+.2f}"
                    for lr in keys)
        + " points. ViT Fig. 9: class token at 8e-4 ≈ pooling at 3e-4, pooling at 8e-4 lower. "
        + spread_note(len(ctx.seeds)) + ".")
    data = {"val_acc_pct": val, "test_acc_pct": test, "best_lr": best, "test_at_best_pct": at_best}
    return Result(table, reading, figs, data,
                  {"data": vars(dc), "train": train, "model": model, "model_args": args, "lrs": lrs})


TEST = Metric("accuracy on the CIFAR-10 test split (%)", "higher")

RULE = Rule(
    claim="“Both work similarly well, but require different learning-rates” (Fig. 9); “the difference in performance "
          "is fully explained by the requirement for a different learning-rate”",
    source="Dosovitskiy et al. 2021 (ViT), appendix D.3 and Fig. 9 (ImageNet, 7 epochs: class token at lr 8e-4, "
           "average pooling at 8e-4 and 3e-4)",
    figure="ViT Fig. 9: class token at 8e-4 ≈ pooling at 3e-4; pooling at 8e-4 below",
    comparisons=(
        Comparison(TEST, Arm("class token at its best rate", ("test_at_best_pct", "class token")),
                   Arm("average pooling at its best rate", ("test_at_best_pct", "average pooling")), "=", margin=1.0,
                   paper="Fig. 9: class token (8e-4) and pooling (3e-4) curves meet; margin ±1 point set here"),
        Comparison(TEST, Arm("class token at 8e-4", ("test_acc_pct", "class token", "0.0008")),
                   Arm("average pooling at 8e-4", ("test_acc_pct", "average pooling", "0.0008")), ">",
                   paper="Fig. 9: at the class token's rate 8e-4, pooling is below it"),
    ),
)

EXPERIMENT = Experiment(
    name="cls-vs-gap",
    question="Class token or global average pooling, each at its own learning rate?",
    anchor="ViT paper appendix D.3, Fig. 9: class token and average pooling “work similarly well, but require "
           "different learning-rates”: the class token at lr 8e-4 matches pooling at 3e-4, and pooling at 8e-4 is "
           "worse",
    cost={"quick": "≈10 s", "full": "≈80 min (2 read-outs x 5 rates x 3 seeds; a width-96 ViT, 4 epochs of 10,000 "
                                    "CIFAR-10 images each)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=("model.class_token", "model.global_pool", "train.lr"),
)
