"""Which position encoding for text? A character Transformer LM on Tiny Shakespeare with no
position encoding, sinusoids, learned embeddings, rotary (RoPE) and a relative bias — the same
model and budget otherwise (``TransformerLMConfig.position``)."""

from __future__ import annotations

from attnlab.experiments.base import (
    Context,
    Experiment,
    Result,
    apart,
    bar_figure,
    final_val,
    line_figure,
    mean_std,
    pm,
    spread_note,
    val_curve,
)

ORDER = 5
KINDS = ("none", "sinusoidal", "learned", "rotary", "relative")


def lm_setup(ctx: Context):
    """The shared char-LM arm settings: (data config, train settings, model overrides)."""
    from attnlab.tasks.lm import LMDataConfig

    text, vf = ctx.text_slice(ctx.pick(20_000, None))
    dc = LMDataConfig(text=str(text), valid_fraction=vf, window=ctx.pick(32, 64), steps_per_epoch=ctx.pick(6, 125))
    train = dict(epochs=ctx.pick(1, 6), batch_size=ctx.pick(16, 32), lr=2e-3, warmup_steps=ctx.pick(2, 100))
    model = ctx.pick(dict(d_model=64, num_layers=2, num_heads=4), dict(d_model=128, num_layers=4, num_heads=4))
    return dc, train, model


def run(ctx: Context) -> Result:
    from attnlab.tasks.lm import SPEC

    dc, train, margs = lm_setup(ctx)
    runs = {k: [ctx.train_arm(f"lm-{k}", SPEC, dc, train, "transformer_lm_char", {**margs, "position": k}, seed=s)
                for s in ctx.seeds] for k in KINDS}
    bpc = {k: [final_val(r, "bpc") for r in rs] for k, rs in runs.items()}
    table = [{"position encoding": k, "val bits/char": pm(bpc[k], 4),
              "val perplexity": pm([final_val(r, "ppl") for r in runs[k]], 3)} for k in KINDS]
    figs = {"bpc": bar_figure(KINDS, [bpc[k] for k in KINDS], "validation bits per character",
                              "Char LM position encodings (Tiny Shakespeare)"),
            "curves": line_figure({f"{k} s{s}": val_curve(r, "bpc") for k, rs in runs.items()
                                   for s, r in zip(ctx.seeds, rs)}, "optimizer step", "validation bits per character",
                                  "Validation bits per character during training")}
    m = {k: mean_std(bpc[k])[0] for k in KINDS}
    best = min(KINDS, key=m.get)
    sep = apart(bpc["sinusoidal"], bpc["learned"])
    verdict = (
        "Validation bits per character: " + ", ".join(f"{k} {pm(bpc[k], 4)}" for k in KINDS) + f"; best: {best}. "
        + f"Sinusoidal vs learned: {abs(m['sinusoidal'] - m['learned']):.4f} bpc apart"
        + (" (within the seed spread, as Vaswani et al. Table 3 (E) found them nearly identical). " if sep is False else
           " (beyond the seed spread, unlike Vaswani et al. Table 3 (E)). " if sep else " (one seed: spread unknown). ")
        + f"No position encoding is {m['none'] - min(m[k] for k in KINDS if k != 'none'):+.4f} bpc from the best "
          "encoding; Haviv et al. 2022 find a causal LM without positions competitive (the mask gives it order), "
        + ("but here it is the worst arm. " if max(KINDS, key=m.get) == "none" else
           f"and here it is ahead of {', '.join(k for k in KINDS if m[k] > m['none'])}. ")
        + ("Rotary is the best, as Su et al. report for language modelling. " if best == "rotary" else
           f"Rotary ({m['rotary']:.4f}) is not the best here. ")
        + spread_note(len(ctx.seeds)) + ".")
    return Result(table, verdict, figs, {"bpc": bpc}, {"data": vars(dc), "train": train, "model": margs})


EXPERIMENT = Experiment(
    name="text-position",
    question="Which position encoding for a Transformer LM: none, sinusoidal, learned, RoPE or relative?",
    anchor="Vaswani et al. 2017 Table 3 (E): learned and sinusoidal positions give nearly identical results; Su et al. "
           "2021 (RoFormer): rotary positions train faster and better; Haviv et al. 2022: causal LMs without position "
           "encodings remain competitive",
    cost={"quick": "≈10 s", "full": "≈30 min"},
    seeds={"quick": 1, "full": 3},
    run=run,
)
