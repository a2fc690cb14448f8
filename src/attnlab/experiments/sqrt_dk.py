"""Why divide by √d_k? (Vaswani et al. 2017, §3.2.1 and footnote 4.)

At initialisation: queries and keys with independent unit-variance components, for d_k from 16
to 1024. The dot product q·k has variance d_k, so unscaled scores grow like √d_k and the
softmax saturates: row entropy falls towards 0 and the softmax Jacobian diag(p) − ppᵀ (the
gradient through the softmax) vanishes. Dividing by √d_k keeps the variance at 1.

Then a short training run of a character Transformer LM on Tiny Shakespeare with one head of a
large d_k, scaled vs unscaled (``transformer_lm_ablation``, ``logit_scale``).
"""

from __future__ import annotations

import math

import torch

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import line_figure
from attnlab.experiments.numbers import final_val, fit_power, mean_std, pm, spread_note, val_curve
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule, RuleChange

ORDER = 1


@torch.no_grad()
def softmax_at_init(d_k: int, keys: int, rows: int, scaled: bool, seed: int) -> dict:
    """Statistics of softmax(q·k / s) for q, k ~ N(0, I_dk): s = √d_k (scaled) or 1."""
    g = torch.Generator().manual_seed(seed * 1009 + d_k)
    q = torch.randn(rows, 1, d_k, generator=g)
    k = torch.randn(rows, keys, d_k, generator=g)
    s = (q @ k.transpose(1, 2)).squeeze(1)  # (rows, keys)
    if scaled:
        s = s / math.sqrt(d_k)
    p = s.softmax(-1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    # ‖diag(p) − ppᵀ‖_F per row: the size of the gradient the softmax passes back to the scores
    jac = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return {"score_var": float(s.var()), "entropy": float(entropy.mean()), "max_weight": float(p.max(-1).values.mean()),
            "softmax_grad": float(jac.flatten(1).norm(dim=1).mean())}


def run(ctx: Context) -> Result:
    from attnlab.tasks.lm import SPEC, LMDataConfig

    dks = ctx.pick([16, 64, 256, 1024], [16, 32, 64, 128, 256, 512, 1024])
    keys, rows = ctx.pick(32, 128), ctx.pick(64, 2048)
    init = {(mode, d): [softmax_at_init(d, keys, rows, mode == "scaled", s) for s in ctx.seeds]
            for mode in ("scaled", "unscaled") for d in dks}

    # --- the training arms -----------------------------------------------------------------------
    text, vf = ctx.text_slice(ctx.pick(20_000, None))
    d_model = ctx.pick(64, 256)
    dc = LMDataConfig(text=str(text), valid_fraction=vf, window=ctx.pick(32, 64), steps_per_epoch=ctx.pick(8, 75))
    train = dict(epochs=ctx.pick(2, 4), batch_size=16, lr=1e-3, warmup_steps=ctx.pick(2, 30), log_every=10)
    margs = dict(d_model=d_model, num_heads=1, num_layers=1, position="rotary")
    runs = {mode: [ctx.train_arm(f"lm-{mode}", SPEC, dc, train, "transformer_lm_ablation",
                                 {**margs, "logit_scale": "sqrt" if mode == "scaled" else "none"}, seed=s)
                   for s in ctx.seeds] for mode in ("scaled", "unscaled")}
    bpc = {m: [final_val(r, "bpc") for r in rs] for m, rs in runs.items()}

    table = []
    for d in dks:
        row = {"d_k": d}
        for mode in ("scaled", "unscaled"):
            st = init[(mode, d)]
            row[f"score var ({mode})"] = pm([x["score_var"] for x in st], 2)
            row[f"entropy nats ({mode})"] = pm([x["entropy"] for x in st], 3)
            row[f"‖softmax grad‖ ({mode})"] = pm([x["softmax_grad"] for x in st], 4)
        table.append(row)
    table.append({"d_k": f"{d_model} (trained LM)", "val bpc (scaled)": pm(bpc["scaled"], 3),
                  "val bpc (unscaled)": pm(bpc["unscaled"], 3)})

    def curve(mode, key):
        return ([d for d in dks], [mean_std([x[key] for x in init[(mode, d)]])[0] for d in dks],
                [mean_std([x[key] for x in init[(mode, d)]])[1] for d in dks])

    figs = {
        "entropy_vs_dk": line_figure({m: curve(m, "entropy") for m in ("scaled", "unscaled")}, "d_k",
                                     "mean entropy of an attention row (nats)", "Attention entropy at initialisation",
                                     logx=True, hlines={f"uniform over {keys} keys (ln {keys})": math.log(keys)}),
        "softmax_grad_vs_dk": line_figure({m: curve(m, "softmax_grad") for m in ("scaled", "unscaled")}, "d_k",
                                          "‖diag(p) − ppᵀ‖_F per row", "Gradient through the softmax at initialisation",
                                          logx=True, logy=True),
        "training": line_figure({f"{m} seed {s}": val_curve(r, "bpc") for m, rs in runs.items()
                                 for s, r in zip(ctx.seeds, rs)}, "optimizer step", "validation bits per character",
                                f"Char LM, one head of d_k = {d_model}: scaled vs unscaled"),
    }

    big = dks[-1]
    es, eu = (mean_std([x["entropy"] for x in init[(m, big)]])[0] for m in ("scaled", "unscaled"))
    gs, gu = (mean_std([x["softmax_grad"] for x in init[(m, big)]])[0] for m in ("scaled", "unscaled"))
    vs, vu = (mean_std([x["score_var"] for x in init[(m, big)]])[0] for m in ("scaled", "unscaled"))
    # how the softmax gradient scales with d_k: flat when scaled, falling when unscaled
    slope = {m: fit_power(dks, [mean_std([x["softmax_grad"] for x in init[(m, d)]])[0] for d in dks])[0]
             for m in ("scaled", "unscaled")}
    reading = (f"At initialisation with d_k = {big}, unscaled scores have variance {vu:.0f} (footnote 4: d_k) "
               f"against {vs:.2f} scaled; the mean row entropy is {eu:.2f} nats unscaled vs {es:.2f} scaled "
               f"(uniform: {math.log(keys):.2f}), and the softmax passes back a gradient of norm {gu:.3g} vs {gs:.3g}; "
               f"over d_k = {dks[0]}..{big} that norm scales like d_k^{slope['unscaled']:+.2f} unscaled and "
               f"d_k^{slope['scaled']:+.2f} scaled. After {train['epochs'] * dc.steps_per_epoch} steps the one-head LM "
               f"with d_k = {d_model} reaches {pm(bpc['scaled'], 3)} bpc scaled vs {pm(bpc['unscaled'], 3)} unscaled. "
               f"{spread_note(len(ctx.seeds))}.")
    data = {"init": {f"{m}/{d}": init[(m, d)] for (m, d) in init}, "val_bpc": bpc, "softmax_grad_slope": slope,
            "curves": {m: [val_curve(r, "bpc") for r in rs] for m, rs in runs.items()}}
    config = {"d_k": dks, "keys": keys, "rows": rows, "lm": {"data": dc.__dict__, "train": train, "model": margs}}
    return Result(table, reading, figs, data, config)


RULE = Rule(
    claim="for large values of d_k, the dot products grow large in magnitude, pushing the softmax function into regions "
          "where it has extremely small gradients. To counteract this effect, we scale the dot products by 1/√d_k",
    source="Vaswani et al. 2017, §3.2.1 and its footnote 4 (q, k with independent unit-variance components: q·k has "
           "variance d_k)",
    figure="§3.2.1 and fn. 4: Var(q·k) = d_k, the unscaled softmax saturates and its gradient vanishes",
    comparisons=(
        Comparison(Metric("mean entropy of an attention row at initialisation, d_k = 1024 (nats)", "higher"),
                   Arm("scaled", ("init", "scaled/1024", "*", "entropy")),
                   Arm("unscaled", ("init", "unscaled/1024", "*", "entropy")), ">",
                   paper="fn. 4: unscaled scores have variance d_k = 1024, scaled ones 1: the unscaled softmax "
                         "is near one-hot"),
        Comparison(Metric("‖diag(p) − ppᵀ‖_F per row at initialisation, d_k = 1024 (the softmax's gradient)", "higher"),
                   Arm("scaled", ("init", "scaled/1024", "*", "softmax_grad")),
                   Arm("unscaled", ("init", "unscaled/1024", "*", "softmax_grad")), ">",
                   paper="§3.2.1: “extremely small gradients” without the scaling"),
        Comparison(Metric("validation bits per character, one-head char LM with d_k = d_model", "lower"),
                   Arm("scaled", ("val_bpc", "scaled")), Arm("unscaled", ("val_bpc", "unscaled")), "<",
                   paper="§3.2.1: the scaling counteracts it (the paper trains no unscaled model)"),
    ),
)

HISTORY = (
    RuleChange(
        fingerprint=None,
        rule="At d_k = 1024 the softmax “saturates” when the unscaled mean row entropy is below half the scaled one and "
             "the unscaled softmax-gradient norm below half the scaled one (eu < 0.5·es and gu < 0.5·gs); the trained "
             "LM was reported, not judged.",
        verdict="“This does not show the saturation the paper describes” on the first full run (2026-12-03 09:27 UTC, "
                "2 seeds): gradient norm 0.0795 unscaled vs 0.136 scaled, a ratio of 0.58, not below 0.5.",
        reason="Revised after that run (commit 9a834bb, 09:34 UTC) to read how the gradient norm scales with d_k instead "
               "of one ratio; rerun on the same trained arms, the revision turned “does not show” into “agrees”. "
               "Nothing recorded the change until issue 21.",
        date="2026-12-03"),
    RuleChange(
        fingerprint=None,
        rule="“Agrees” when, at d_k = 1024, eu < 0.5·es, and the fitted exponent of the gradient norm against d_k is "
             "below −0.2 unscaled and within ±0.1 scaled: thresholds set by hand after the first run.",
        verdict="“This agrees with the paper” on the stored run (2 seeds; exponents −0.33 unscaled, +0.00 scaled).",
        reason="Replaced by the rule above, stated as data before the 3-seed rerun (issue 21): each comparison is "
               "decided by a 95% Welch interval over seeds instead of thresholds chosen after the results, and the "
               "trained LM counts.",
        date="2026-12-07"),
)

EXPERIMENT = Experiment(
    name="sqrt-dk",
    question="Why divide the attention scores by √d_k?",
    anchor="Vaswani et al. 2017, §3.2.1 and its footnote 4: q·k has variance d_k, large values push the softmax into "
           "regions of extremely small gradients; scaling by 1/√d_k counteracts it",
    cost={"quick": "≈10 s", "full": "≈8 min"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=("model.logit_scale",),  # scaled or unscaled scores, nothing else
    history=HISTORY,
)
