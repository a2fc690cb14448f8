"""Why did the first Transformer detector need so long, and what fixed it? DETR on a small set of
real photographs (NEON tree crowns from the air: one training crop of 574 hand-drawn crowns, a
test crop of 279, crowns 15-60 px), each arm trained for the same CPU minutes from the same
backbone initialisation:

- ``detr``: plain DETR (Carion et al. 2020): dense cross-attention over the whole feature map,
  learned object queries matched to the crowns by the Hungarian algorithm;
- ``dn``: + query denoising (Li et al. 2022, DN-DETR: noised copies of the true boxes fed to the
  decoder and reconstructed without matching), 5 groups;
- ``deformable``: + local cross-attention (Zhu et al. 2021's deformable attention on the one
  feature level: each query reads 4 sampled points per head around its reference point, the box
  predicted relative to it — the local cross-attention DE-DETR credits);
- ``dn+deformable``: both;
- ``retinanet``: the detector people would pick, torchvision's RetinaNet on the same backbone
  (DeepForest, the usual tree-crown model, is one).

The training crop is cut into overlapping tiles (320 px, 120 px overlap: every crown lies whole
in some tile); the right-most 20% of it validates during training. Every arm is scored once, on
the test crop (its tiles' detections merged, COCO AP and AP50 at 300 detections per image), which
chooses nothing. No ImageNet weights exist offline: every arm's backbone first learns to
classify CIFAR-10 (``--pretrain-backbone 1000 --pretrain-data cifar10``, inside the arm's minutes)
from the same initialisation, which gives DETR and RetinaNet of one seed the same pretrained
weights (tested in tests/test_cnn_detector.py), and then trains with the detector at a tenth of
its rate (DETR §4's recipe) — a weaker start than the papers' ImageNet ResNet-50.
"""

from __future__ import annotations

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import bar_figure
from attnlab.experiments.numbers import mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule

ORDER = 12
TRAIN = "2019_YELL_2_528000_4978000_image_crop2.xml"  # 574 crowns
TEST = "2019_YELL_2_541000_4977000_image_crop.xml"  # 279 crowns
DN_GROUPS = 5  # DN-DETR's
#: arm -> (model, its options, DN groups)
ARMS = {"detr": ("detr_digits", {}, 0), "dn": ("detr_digits", {}, DN_GROUPS),
        "deformable": ("detr_digits", {"cross_attention": "deformable"}, 0),
        "dn+deformable": ("detr_digits", {"cross_attention": "deformable"}, DN_GROUPS),
        "retinanet": ("retinanet_small", {}, 0)}


def setup(ctx: Context) -> tuple[dict, dict, dict, dict]:
    """(data options, train settings, the backbone and size options every model shares, the DETR
    options). At full budget a 4-stage CNN (stride 16: 20x20 cells per tile), 5 CPU minutes per
    arm; at quick budget a tiny one for a few seconds."""
    from attnlab.tasks.detect import DetectDataConfig

    tile = ctx.pick(128, 320)
    ctx.data_file("cifar10")  # the backbone's pretraining images
    data = dict(dataset=f"voc:{ctx.data_file('neon-trees', TRAIN)}", val_region=0.2, tile=tile,
                tile_overlap=ctx.pick(32, 120), max_dets=300, eval_batch_size=8,
                pretrain_backbone=ctx.pick(2, 1000), pretrain_data="cifar10", train_backbone=True)
    DetectDataConfig(**data)  # refuses a wrong option here, not after the first arm
    minutes = ctx.pick(0.03, 5.0)
    # the detection task's optimiser settings (AdamW 1e-3, clip 0.1); time-bound, validated once at the end
    train = dict(epochs=1000, batch_size=ctx.pick(4, 8), max_minutes=minutes, warmup_steps=ctx.pick(1, 20),
                 eval_every=1000)
    shared = dict(in_chans=3, img_size=tile, cnn_widths=ctx.pick([8, 16, 16, 16], [32, 64, 128, 128]))
    detr = dict(d_model=ctx.pick(32, 128), num_heads=ctx.pick(2, 8), num_encoder_layers=ctx.pick(1, 3),
                num_decoder_layers=ctx.pick(1, 3), d_ff=ctx.pick(64, 512), num_queries=ctx.pick(20, 60))
    return data, train, shared, detr


def test_scores(ctx: Context, summary: dict) -> dict:
    """AP, AP50 and AR (300 detections) on the test crop, its tiles' detections merged."""
    from attnlab.tasks.detect import DetectEvalConfig

    res = ctx.test_results(summary, DetectEvalConfig(dataset=f"voc:{ctx.data_file('neon-trees', TEST)}",
                                                     batch_size=8, max_dets=300))
    return {"AP": 0.0, "AP50": 0.0, "AR": 0.0} if res is None else {k: float(res[k]) for k in ("AP", "AP50", "AR")}


def run(ctx: Context) -> Result:
    from attnlab.tasks.detect import SPEC, DetectDataConfig

    data, train, shared, detr = setup(ctx)
    scores, steps, params = {a: {"AP": [], "AP50": [], "AR": []} for a in ARMS}, {a: [] for a in ARMS}, {}
    for arm, (model, opts, groups) in ARMS.items():
        args = {**shared, **(detr if model.startswith("detr") else {}), **opts}
        dc = DetectDataConfig(**data, dn_groups=groups)
        for seed in ctx.seeds:
            r = ctx.train_arm(arm.replace("+", "-"), SPEC, dc, train, model, args, seed=seed)
            for k, v in test_scores(ctx, r).items():
                scores[arm][k].append(100 * v)
            steps[arm].append(r.get("steps"))
            params.setdefault(arm, r.get("parameters"))
    table = [{"arm": a, "parameters": f"{params[a]:,}" if params[a] else "", "optimizer steps": pm(steps[a], 0),
              "test AP50": pm(scores[a]["AP50"], 2), "test AP": pm(scores[a]["AP"], 2), "test AR@300": pm(scores[a]["AR"], 2)}
             for a in ARMS]
    figs = {"ap50": bar_figure(list(ARMS), [scores[a]["AP50"] for a in ARMS], "AP50 on the test crop (%)",
                               f"Tree crowns: {train['max_minutes']:g} CPU minutes per arm, same backbone start",
                               subtitle="DETR, its small-data fixes, and RetinaNet; each dot a seed")}
    m = {a: mean_std(scores[a]["AP50"])[0] for a in ARMS}
    best = max(("dn", "deformable", "dn+deformable", "detr"), key=lambda a: m[a])
    reading = (f"Test AP50 after {train['max_minutes']:g} CPU minutes per arm: "
               + ", ".join(f"{a} {pm(scores[a]['AP50'], 2)}" for a in ARMS)
               + f". The best DETR variant ({best}) − RetinaNet: {m[best] - m['retinanet']:+.2f} points (the issue's "
               f"target: at least 0); plain DETR − RetinaNet: {m['detr'] - m['retinanet']:+.2f}. Optimizer steps in "
               "the same minutes: " + ", ".join(f"{a} {pm(steps[a], 0)}" for a in ARMS)
               + f". {spread_note(len(ctx.seeds))}.")
    result_data = {"AP50": {a: scores[a]["AP50"] for a in ARMS}, "AP": {a: scores[a]["AP"] for a in ARMS},
                   "AR": {a: scores[a]["AR"] for a in ARMS}, "steps": steps, "parameters": params}
    return Result(table, reading, figs, result_data,
                  {"data": data, "train": train, "shared": shared, "detr": detr,
                   "arms": {a: {"model": m_, "options": o, "dn_groups": g} for a, (m_, o, g) in ARMS.items()}},
                  left_out=["an ImageNet backbone (none offline): the backbones learn CIFAR-10 first; the papers' "
                            "DETRs start from an ImageNet ResNet-50"])


def _ap50(a: str, b: str, paper: str, effect: float | None = None) -> Comparison:
    return Comparison(Metric("AP50 on the test crop (%), COCO evaluator at 300 detections, equal CPU minutes", "higher"),
                      Arm(a, ("AP50", a)), Arm(b, ("AP50", b)), ">", paper=paper, paper_effect=effect)


RULE = Rule(
    claim="DETR “requires extra-long training schedule” (500 epochs: 42.0 AP on COCO, 34.8 after 50) and data-hungry "
          "Transformer detectors fall far behind on small data sets, where local cross-attention and denoising help: "
          "on Cityscapes (2,975 images) DETR reaches 11.7 AP in 300 epochs, DE-DETR 22.2 in 50; query denoising "
          "gives +1.9 AP at half the epochs",
    source="Carion et al. 2020 (DETR) §4 and Table 1; Wang et al. 2022 (Towards Data-Efficient Detection "
           "Transformers, DE-DETR), Table 1 on Cityscapes; Li et al. 2022 (DN-DETR), Table 1",
    figure="Cityscapes: DETR 11.7 AP (300 epochs) vs DE-DETR 22.2 (50); DN-DETR +1.9 AP; COCO: DETR 34.8 AP at 50 epochs",
    comparisons=(
        _ap50("retinanet", "detr", "DETR needs long schedules (Carion et al. §4: 500 epochs); a CNN detector learns "
                                   "faster from little data"),
        _ap50("deformable", "detr", "DE-DETR, Cityscapes: 22.2 vs 11.7 AP (local cross-attention and sampling)",
              effect=22.2 - 11.7),
        _ap50("dn", "detr", "DN-DETR: +1.9 AP at half the epochs", effect=1.9),
    ),
)

EXPERIMENT = Experiment(
    name="detr-small-data",
    question="Why did the first Transformer detector need so long on little data, and what fixed it?",
    anchor="Carion et al. 2020: DETR needs 500 epochs (42.0 AP on COCO; 34.8 after 50); Wang et al. 2022 (DE-DETR): on "
           "Cityscapes' 2,975 images DETR reaches 11.7 AP in 300 epochs, local cross-attention 22.2 in 50; Li et al. "
           "2022 (DN-DETR): query denoising +1.9 AP at half the epochs",
    cost={"quick": "≈30 s", "full": "≈85 min (5 arms x 3 seeds, 5 CPU minutes each, scored on the test crop)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    # the model (DETR or RetinaNet), DETR's switches, and the steps the same minutes allow
    variables=("model.name", "model.cross_attention", "model.denoising", "data.dn_groups", "steps"),
)
