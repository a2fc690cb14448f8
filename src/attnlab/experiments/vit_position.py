"""Which position encoding for a ViT? none / learned 1-D / learned 2-D / 2-D sin-cos / 2-D
relative bias / 2-D RoPE, the same model and budget otherwise, on digits (quick) or a
stratified subset of CIFAR-10 (full); plus the position-embedding similarity of each learned
variant (ViT Fig. 7).

The ViT paper's Table 8 (appendix D.4) compares no position embedding, 1-D and 2-D learned
embeddings and relative positional embeddings (ViT-B/16, ImageNet 5-shot linear): our ``learn``,
``learn2d`` (its X/Y embeddings of D/2 each) and — loosely — ``relative`` (a learned scalar bias
per head and 2-D offset, not the paper's relative embeddings). 2-D sin-cos and 2-D RoPE are
measured beside them, against the CIFAR-10 numbers of s-chh's 820k-parameter ViT.
"""

from __future__ import annotations

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import bar_figure
from attnlab.experiments.numbers import final_val, mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule

ORDER = 4
#: our pos_embed kinds, and the anchors' names for them
KINDS = {"none": "none", "learn": "learned 1-D", "learn2d": "learned 2-D", "sincos2d": "2-D sin-cos",
         "relative": "2-D relative bias", "rope2d": "2-D RoPE"}
LEARNED = ("learn", "learn2d")
# s-chh/2D-Positional-Encoding-Vision-Transformer (README): CIFAR-10 test accuracy, 820k parameters, 200 epochs
ANCHOR_SMALL = {"none": 79.63, "learn": 86.52, "sincos2d": 86.09, "relative": 90.57, "rope2d": 88.49}
ANCHOR_TABLE8 = {"none": 61.382, "learn": 64.206, "learn2d": 64.001, "relative": 64.032}  # ViT Table 8, default/stem


def image_setup(ctx: Context):
    """The shared image arm settings of the ViT experiments: (data config, train settings,
    model name, model overrides); also layernorm-vs-batchnorm's and cls-vs-gap's starting point."""
    from attnlab.experiments.imagedata import ImageSubsetConfig

    dc = ImageSubsetConfig(dataset=ctx.pick("digits", "cifar10"), train_size=ctx.pick(512, 10_000),
                           test_size=ctx.pick(None, 2_000))
    train = dict(epochs=ctx.pick(1, 8), batch_size=ctx.pick(64, 128), lr=ctx.pick(2e-3, 1e-3), warmup_epochs=1.0)
    model, args = ctx.pick(("vit_digits", {}), ("vit_cifar", dict(embed_dim=128, depth=4, num_heads=4)))
    return dc, train, model, args


def position_setup(ctx: Context):
    """:func:`image_setup` with 6 epochs at full budget (6 arms x 3 seeds in 90 minutes), the
    validation accuracy measured once, after the last epoch."""
    dc, train, model, args = image_setup(ctx)
    epochs = ctx.pick(train["epochs"], 6)
    return dc, {**train, "epochs": epochs, "eval_every": epochs}, model, args


def similarity_figures(runs: dict) -> dict:
    """ViT Fig. 7 for each learned table (seed 0's model)."""
    from attnlab.viz.vit import plot_posembed_similarity

    figs = {}
    for k in LEARNED:
        learned = runs[k][0].get("model")
        if learned is not None:
            figs[f"posembed_similarity_{k}"] = plot_posembed_similarity(
                learned, title=f"{KINDS[k][0].upper() + KINDS[k][1:]} position embeddings: cosine similarity (ViT Fig. 7)")
    return figs


def run(ctx: Context) -> Result:
    from attnlab.experiments.imagedata import SPEC

    dc, train, model, args = position_setup(ctx)
    runs = {k: [ctx.train_arm(f"pos-{k}", SPEC, dc, train, model, {**args, "pos_embed": k}, seed=s) for s in ctx.seeds]
            for k in KINDS}
    acc = {k: [final_val(r, "acc") for r in rs] for k, rs in runs.items()}
    table = [{"position encoding": name, "val accuracy %": pm(acc[k], 2, 100),
              "anchor: 820k ViT, CIFAR-10, 200 ep (%)": ANCHOR_SMALL.get(k, "—"),
              "anchor: ViT Table 8 (%)": ANCHOR_TABLE8.get(k, "—")} for k, name in KINDS.items()]
    figs = {"accuracy": bar_figure(list(KINDS.values()), [[100 * a for a in acc[k]] for k in KINDS],
                                   "validation accuracy (%)", f"ViT position encodings on {dc.dataset}",
                                   subtitle=f"{train['epochs']} epochs, {dc.train_size or 'all'} training images"),
            **similarity_figures(runs)}
    means = {k: 100 * mean_std(acc[k])[0] for k in KINDS}
    encodings = [k for k in KINDS if k != "none"]
    reading = (
        "Validation accuracy: " + ", ".join(f"{KINDS[k]} {pm(acc[k], 2, 100)}%" for k in KINDS) + ". "
        + "Each encoding minus none: " + ", ".join(f"{KINDS[k]} {means[k] - means['none']:+.2f}" for k in encodings)
        + f" points; the encodings span {max(means[k] for k in encodings) - min(means[k] for k in encodings):.2f} points "
          f"among themselves, learned 1-D − learned 2-D {means['learn'] - means['learn2d']:+.2f}. ViT Table 8 "
          "(ImageNet 5-shot linear): 1-D +2.8, 2-D +2.6, relative +2.7 points over none, 0.2 points among the kinds; "
          "s-chh's 820k-parameter ViT on CIFAR-10 after 200 epochs: none 79.6, learned 86.5, sin-cos 86.1, relative "
          f"90.6, RoPE 88.5. Our budget is {train['epochs']} epochs. {spread_note(len(ctx.seeds))}.")
    return Result(table, reading, figs, {"accuracy": acc}, {"data": vars(dc), "train": train, "model": model,
                                                            "model_args": args})


ACC = Metric("validation accuracy (fraction of 2,000 CIFAR-10 test images)", "higher")


def _beats_none(kind: str) -> Comparison:
    return Comparison(ACC, Arm(KINDS[kind], ("accuracy", kind)), Arm("none", ("accuracy", "none")), ">",
                      paper=f"Table 8: {ANCHOR_TABLE8[kind]:.1f}% vs {ANCHOR_TABLE8['none']:.1f}%",
                      paper_effect=round((ANCHOR_TABLE8[kind] - ANCHOR_TABLE8["none"]) / 100, 4))


RULE = Rule(
    claim="“while there is a large gap between the performances of the model with no positional embedding and models "
          "with positional embedding, there is little to no difference between different ways of encoding positional "
          "information”",
    source="Dosovitskiy et al. 2021 (ViT), appendix D.4 and Table 8 (ViT-B/16, ImageNet 5-shot linear: no position "
           "0.614, 1-D 0.642, 2-D 0.640, relative 0.640)",
    figure="ViT Table 8: no position 61.4%, learned 1-D 64.2%, 2-D 64.0%, relative 64.0%",
    comparisons=(
        _beats_none("learn"),
        _beats_none("learn2d"),
        _beats_none("relative"),
        Comparison(ACC, Arm("learned 1-D", ("accuracy", "learn")), Arm("learned 2-D", ("accuracy", "learn2d")), "=",
                   margin=0.01, paper="Table 8: 64.2% vs 64.0%; margin ±1 point set here", paper_effect=0.002),
    ),
)

EXPERIMENT = Experiment(
    name="vit-position",
    question="Which position encoding for a ViT: none, learned 1-D or 2-D, 2-D sin-cos, relative or 2-D RoPE?",
    anchor="ViT paper appendix D.4, Table 8 (ViT-B/16, ImageNet 5-shot linear): none 0.614, learned 1-D 0.642, 2-D "
           "0.640, relative 0.640 (“a large gap” to no position, “little to no difference” among the kinds); "
           "s-chh's 820k-parameter ViT on CIFAR-10 (GitHub, 200 epochs): none 79.6, learned 86.5, sin-cos 86.1, "
           "relative 90.6, RoPE 88.5",
    cost={"quick": "≈15 s", "full": "≈75 min (6 arms x 3 seeds, 6 epochs of 10,000 CIFAR-10 images each)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=("model.pos_embed",),
)
