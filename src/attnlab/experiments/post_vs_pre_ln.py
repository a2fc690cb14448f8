"""Post-LN vs pre-LN (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture").

1. At initialisation, on a batch of Multi30k De->En: the gradient norm of each layer's FFN
   output matrix W² (Xiong et al. Fig. 3), post-LN and pre-LN; and, for growing depth L, the
   gradient norm of the last decoder layer's W² (their Theorem 1: near-constant in L for
   post-LN, shrinking like 1/√L for pre-LN).
2. Training the encoder-decoder on Multi30k with and without learning-rate warm-up, post-LN and
   pre-LN: validation accuracy and greedy BLEU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.experiments.base import (
    Context,
    Experiment,
    Result,
    fit_power,
    line_figure,
    mean_std,
    pm,
    spread_note,
    val_curve,
)

ORDER = 3
LAYOUTS = {"post-LN": False, "pre-LN": True}


def ffn_gradients(model, src, tgt) -> dict[str, list[float]]:
    """‖∂loss/∂W²‖ of every encoder and decoder layer for one teacher-forced batch."""
    model.zero_grad(set_to_none=True)
    logits = model(src, tgt[:, :-1])
    y = tgt[:, 1:]
    F.cross_entropy(logits[y != model.cfg.pad_id], y[y != model.cfg.pad_id]).backward()
    out = {part: [float(layer.ff.fc2.weight.grad.norm()) for layer in getattr(model, part).layers]
           for part in ("encoder", "decoder")}
    model.zero_grad(set_to_none=True)
    return out


def depth_trend(slope: float) -> str:
    """How a gradient ∝ L^slope moves with depth, in words (Theorem 1 of Xiong et al.: post-LN L^0)."""
    if abs(slope) < 0.2:
        return f"stays about constant (L^{slope:+.2f}, as the theory's L^0)"
    return f"{'grows' if slope > 0 else 'shrinks, less'} (L^{slope:+.2f}, where the theory says L^0)"


def mt_setup(ctx: Context):
    """The shared translation arm settings (Multi30k De->En): (data config, model size, layers
    per stack)."""
    from attnlab.tasks.translate import TranslateDataConfig

    files = ctx.multi30k(ctx.pick(400, None), ctx.pick(40, None))
    dc = TranslateDataConfig(**files, bpe_vocab_size=ctx.pick(300, 4000), max_tokens=ctx.pick(1024, 4096))
    size = dict(d_model=ctx.pick(64, 128), num_heads=4, d_ff=ctx.pick(128, 256), dropout=ctx.pick(0.0, 0.1))
    return dc, size, ctx.pick(2, 3)


def run(ctx: Context) -> Result:
    from attnlab.data.parallel import collate
    from attnlab.models.registry import create_model
    from attnlab.tasks.translate import SPEC, TranslateDataConfig, load_data

    dc, size, layers = mt_setup(ctx)

    # --- 1. gradients at initialisation --------------------------------------------------------------
    data = load_data(TranslateDataConfig(**vars(dc)), progress=False)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(data.train), generator=g)[: ctx.pick(32, 128)].tolist()
    src, tgt = collate([data.train.src[i] for i in pick], [data.train.tgt[i] for i in pick], data.src_tok.pad_id)
    fields = {k: v for k, v in data.model_fields.items() if k != "max_target_len"}
    depths = ctx.pick([2, 4], [3, 6, 12, 24])
    per_layer, last = {}, {}
    for name, pre in LAYOUTS.items():
        for seed in ctx.seeds:
            for depth in sorted({layers, *depths}):
                torch.manual_seed(seed)
                model = create_model("transformer_multi30k", **fields, **{**size, "dropout": 0.0}, norm_first=pre,
                                     num_encoder_layers=depth, num_decoder_layers=depth)
                grads = ffn_gradients(model, src, tgt)
                if depth == max(depths):
                    per_layer.setdefault(name, []).append(grads)
                last.setdefault(name, {}).setdefault(depth, []).append(grads["decoder"][-1])
    slopes = {n: fit_power(depths, [mean_std(last[n][d])[0] for d in depths])[0] for n in LAYOUTS}

    # --- 2. training with and without warm-up --------------------------------------------------------
    warm = ctx.pick(20, 400)
    train = dict(epochs=ctx.pick(1, 3), lr=1e-3, schedule="cosine", min_lr=1e-5, log_every=ctx.pick(5, 50))
    arms, scores = {}, {}
    for name, pre in LAYOUTS.items():
        for w in (warm, 0):
            key = f"{name}, warm-up {w}"
            arms[key] = [ctx.train_arm(f"{'pre' if pre else 'post'}-warmup{w}", SPEC, dc, {**train, "warmup_steps": w},
                                       "transformer_multi30k", {**size, "norm_first": pre, "num_encoder_layers": layers,
                                                                "num_decoder_layers": layers}, seed=s)
                         for s in ctx.seeds]
            scores[key] = [ctx.translation_scores(r, beam=1) for r in arms[key]]

    table = []
    for key, runs in arms.items():
        table.append({"arm": key, "val next-token acc %": pm([(r["metrics"] or {}).get("val_accuracy", float("nan"))
                                                               for r in runs], 2, 100),
                      "greedy BLEU": pm([s["bleu"] for s in scores[key]], 2),
                      "diverged": f"{sum(1 for r in runs if r.get('diverged'))}/{len(runs)}"})
    for name in LAYOUTS:
        table.append({"arm": f"{name} at init: ‖∂L/∂W²‖ last decoder layer, L={depths[0]}..{depths[-1]}",
                      "val next-token acc %": " → ".join(f"{mean_std(last[name][d])[0]:.3g}" for d in depths),
                      "greedy BLEU": f"slope vs L: {slopes[name]:+.2f}"})

    def layer_series(part):
        s = {}
        for name in LAYOUTS:
            vals = [g[part] for g in per_layer[name]]
            n = len(vals[0])
            s[f"{name} {part}"] = (list(range(1, n + 1)), [mean_std([v[i] for v in vals])[0] for i in range(n)],
                                   [mean_std([v[i] for v in vals])[1] for i in range(n)])
        return s

    figs = {
        "grad_per_layer_init": line_figure({**layer_series("encoder"), **layer_series("decoder")}, "layer",
                                           "‖∂loss/∂W²‖ (FFN output matrix)",
                                           f"Gradient per layer at initialisation ({max(depths)}+{max(depths)} layers)"),
        "last_layer_grad_vs_depth": line_figure({n: (depths, [mean_std(last[n][d])[0] for d in depths],
                                                     [mean_std(last[n][d])[1] for d in depths]) for n in LAYOUTS},
                                                "layers L (encoder = decoder)", "‖∂loss/∂W²‖ of the last decoder layer",
                                                "Last-layer gradient against depth at initialisation", logx=True,
                                                logy=True),
        "training": line_figure({f"{k} s{s}": val_curve(r, "accuracy") for k, rs in arms.items()
                                 for s, r in zip(ctx.seeds, rs)}, "optimizer step", "validation next-token accuracy",
                                "Multi30k De->En: post-LN vs pre-LN, with and without warm-up"),
    }
    b = {k: mean_std([s["bleu"] for s in v])[0] for k, v in scores.items()}
    post_w, post_0 = b[f"post-LN, warm-up {warm}"], b["post-LN, warm-up 0"]
    pre_w, pre_0 = b[f"pre-LN, warm-up {warm}"], b["pre-LN, warm-up 0"]
    init_ok = slopes["pre-LN"] < slopes["post-LN"] - 0.2
    train_ok = post_0 < post_w - 2 and pre_0 > post_0 + 2
    trained = max(post_w, pre_w, pre_0, post_0) >= 5
    verdict = (
        f"At initialisation the last decoder layer's gradient scales like L^{slopes['post-LN']:+.2f} for post-LN and "
        f"L^{slopes['pre-LN']:+.2f} for pre-LN (theory: L^0 and L^-0.5). "
        + (f"This agrees with Xiong et al. on the difference: pre-LN's last-layer gradient shrinks with depth, while "
           f"post-LN's {depth_trend(slopes['post-LN'])}. " if init_ok else
           "This does not reproduce the predicted difference in depth scaling. ")
        + f"Training: greedy BLEU post-LN {post_w:.2f} with warm-up vs {post_0:.2f} without; pre-LN {pre_w:.2f} vs "
          f"{pre_0:.2f}. "
        + (f"Inconclusive: no arm reaches 5 BLEU at this budget ({max(post_w, pre_w, pre_0, post_0):.2f} at best). "
           if not trained else
           "As on IWSLT14 (8.45 vs ≈34), post-LN without warm-up falls far behind while pre-LN without warm-up does "
           "not. " if train_ok else
           "The anchor's collapse of post-LN without warm-up (8.45 vs ≈34 BLEU on IWSLT14) is not reproduced at this "
           "scale (a 3+3-layer model trained briefly is far shallower and shorter-lived than the paper's), so this part "
           "is inconclusive or disagrees. ")
        + spread_note(len(ctx.seeds)) + ".")
    return Result(table, verdict, figs,
                  {"init_per_layer": per_layer, "init_last_layer": last, "depth_slopes": slopes,
                   "bleu": {k: [s["bleu"] for s in v] for k, v in scores.items()},
                   "val_accuracy": {k: [(r["metrics"] or {}).get("val_accuracy") for r in v] for k, v in arms.items()}},
                  {"data": vars(dc), "model": {**size, "layers": layers}, "train": train, "warmup_steps": warm,
                   "depths": depths})


EXPERIMENT = Experiment(
    name="post-vs-pre-ln",
    question="Post-LN or pre-LN: gradients at initialisation, and training with and without warm-up",
    anchor="Xiong et al. 2020: post-LN's last-layer gradient is large and independent of depth, pre-LN's shrinks like "
           "1/√L (Fig. 3, Thm. 1); post-LN without warm-up collapses (8.45 BLEU vs ≈34 with warm-up on IWSLT14 De-En), "
           "pre-LN without warm-up reaches ≈34",
    cost={"quick": "≈20 s", "full": "≈80 min"},
    seeds={"quick": 1, "full": 3},
    run=run,
)
