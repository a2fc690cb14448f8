"""``attnlab demo``: the main job. A small Vision Transformer learns scikit-learn's bundled 8x8
digits (no data files needed) in about two minutes on a laptop CPU, then an illustrated report
(learning curves, confusion matrix, position-embedding similarity, attention maps, mistakes) is
written into the run directory."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

#: The demo's recipe (shown in the report). Everything else is TrainConfig's default.
RECIPE = {
    "model": "vit_digits",
    "epochs": 40,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup_epochs": 3.0,
    "weight_decay": 0.1,
    "label_smoothing": 0.0,
    "augment": "none",
    "val_fraction": 0.1,  # the best epoch is chosen on held-out training images; the test split is only reported
    "model_args": {"drop_rate": 0.0},  # no dropout: over seeds 0-2 it scored 98.9/98.9/97.2% vs 98.1/97.5/98.1% with 0.1
}

INTRO = """attnlab demo — a Vision Transformer learns to read handwritten digits.

  data   scikit-learn's 8x8 digits (bundled, nothing to download): {train:,} training, {val:,} validation (to pick
         the best epoch) and {test:,} test images (touched only by the final report)
  model  {model}: each image is cut into 2x2-pixel patches (a 4x4 grid of 16 tokens), a class token is
         added, and {depth} Transformer blocks of self-attention ({heads} heads, width {dim}) read them; {params:,} weights
  plan   {epochs} epochs of AdamW with warm-up and cosine decay, then an illustrated report
"""


def register(subparsers) -> None:
    from attnlab.cli.common import one_line_errors
    from attnlab.train.config import nonneg_int, positive_int

    p = subparsers.add_parser(
        "demo", help="the quick tour: train a small ViT on the bundled digits and write an illustrated report",
        description=__doc__.split("\n\n")[0].replace("``", "'"), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The report (report.html and report.md) and everything else go to the run directory; open report.html "
               "in a browser.")
    p.add_argument("--epochs", type=positive_int, default=RECIPE["epochs"], metavar="N",
                   help=f"training epochs (default: {RECIPE['epochs']}; fewer is quicker but less accurate)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    p.add_argument("--run-dir", metavar="DIR", help="where to write (default: runs/demo-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    p.add_argument("--threads", type=nonneg_int, default=1, metavar="N",
                   help="CPU threads (default: 1, the fastest for this small model; 0 = PyTorch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    one_line_errors(p)
    p.set_defaults(func=run)


def say(s: str = "") -> None:
    from tqdm.auto import tqdm

    tqdm.write(s, file=sys.stdout)
    sys.stdout.flush()


def run(args) -> int:
    import json

    import torch

    from attnlab import runs
    from attnlab.data import images as D
    from attnlab.models.registry import count_parameters, create_model, model_config
    from attnlab.tasks import image
    from attnlab.train import TrainConfig

    t_start = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], warmup_epochs=RECIPE["warmup_epochs"],
                      weight_decay=RECIPE["weight_decay"], label_smoothing=RECIPE["label_smoothing"], seed=args.seed,
                      device="cpu", threads=args.threads)
    dc = image.ImageDataConfig(dataset="digits", augment=RECIPE["augment"], val_fraction=RECIPE["val_fraction"])
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log = None if args.quiet else say
    if log:
        mc = model_config(RECIPE["model"], **RECIPE["model_args"])
        ds = image.load_data(dc, mc, progress=False).info["dataset"]
        with torch.device("meta"):
            params = count_parameters(create_model(RECIPE["model"], **RECIPE["model_args"], num_classes=10))
        say(INTRO.format(model=RECIPE["model"], depth=mc.depth, heads=mc.num_heads, dim=mc.embed_dim, params=params,
                         epochs=cfg.epochs, train=ds["train_size"], val=ds["val_size"], test=ds["test_size"]))
    summary = runs.train(image.SPEC, dc, cfg, run_dir, model=RECIPE["model"], model_args=RECIPE["model_args"],
                         overwrite=args.overwrite, log=log, progress=not args.quiet, command=runs.argv())
    if log:
        say("\nwriting the report (test accuracy, confusion matrix, position embeddings, attention maps)...")
    best = runs.open(run_dir, "best")
    test = D.load("digits", progress=False).test
    epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    rep = build_report(run_dir, best, test, epochs, cfg, summary["elapsed"])
    total = time.perf_counter() - t_start
    print(f"\ntest accuracy: {100 * rep['accuracy']:.2f}% ({rep['correct']}/{rep['count']} test digits) with the best of "
          f"{cfg.epochs} epochs on validation (epoch {summary['best']['epoch']}), {summary['elapsed']:.0f} s of training "
          f"({total:.0f} s in all)")
    print(f"report: {rep['html']}  (also {rep['md'].name}; open the .html in a browser)")
    return 0


@dataclass
class DemoScores:
    """The best checkpoint on the test split."""

    count: int
    correct: int
    top5: float  # how many test digits have their class among the five most likely
    confusion: Tensor  # (classes, classes) counts: rows true, columns predicted

    @property
    def accuracy(self) -> float:
        return self.correct / self.count


def build_report(run_dir: Path, run, test, epochs: list[dict], cfg, train_seconds: float) -> dict:
    """Test metrics of the best checkpoint and the illustrated report of the demo run."""
    from attnlab.viz import report

    scores = score_on_test(run, test)
    figs, picks = draw_figures(run_dir, run, test, scores.confusion)
    blocks = (summary_section(run, scores, cfg, train_seconds)
              + curves_section(epochs, scores, run.record["dataset"])
              + confusion_section(scores.confusion, run.extras["labels"], mistakes="mistakes" in figs)
              + posembed_section(run.model)
              + attention_section(run.model, test.images[picks], run.extras["normalize"])
              + experiments_section(run_dir)
              + reproduce_section(run_dir))
    md, ht = report.write_report(run_dir, blocks, title="attnlab demo report")
    return {"accuracy": scores.accuracy, "correct": scores.correct, "count": scores.count, "md": md, "html": ht,
            "figures": figs}


def score_on_test(run, test) -> DemoScores:
    """Accuracy, top-5 and the confusion matrix of ``run`` on the test split ``test``."""
    import torch

    from attnlab.tasks.image import ImageClassification
    from attnlab.train.engine import evaluation_sums
    from attnlab.train.sampler import Plan

    task = ImageClassification(test, test, run.extras["labels"], run.extras["normalize"])
    sums = evaluation_sums(task, run.model, task.eval_batches(Plan()), torch.device("cpu"))
    return DemoScores(int(sums["count"]), int(sums["correct"]), float(sums["top5"]), sums["confusion"].long())


def draw_figures(run_dir: Path, run, test, cm: Tensor) -> tuple[dict, list[int]]:
    """The report's pictures and the explorer page, written into ``run_dir``: ``({name: path},
    picks)``, picks being one correctly classified test digit of each class (the attention figure)."""
    import torch

    from attnlab.viz import report
    from attnlab.viz.common import save_figure
    from attnlab.viz.curves import plot_confusion
    from attnlab.viz.explore import explore_vit, write_page
    from attnlab.viz.vit import plot_attention, plot_posembed_similarity

    model, labels, normalize = run.model, run.extras["labels"], run.extras["normalize"]
    figs = {}
    figs["confusion"] = save_figure(plot_confusion(cm.numpy(), labels, title="test set"), run_dir / "confusion.png")
    figs["posembed"] = save_figure(plot_posembed_similarity(model, title="Position-embedding similarity (learned)"),
                                   run_dir / "posembed.png")
    x, y = test.images, test.labels
    with torch.no_grad():
        probs = torch.cat([model(normalize(c)).float().softmax(-1) for c in x.split(500)])
    pred = probs.argmax(-1)
    picks = [int(((y == c) & (pred == c)).nonzero()[0]) for c in range(len(labels)) if ((y == c) & (pred == c)).any()]
    figs["attention"] = save_figure(report.plot_attention_grid(model, x[picks], y[picks], labels, normalize,
                                                               title="Attention rollout on test digits (bright = attended)"),
                                    run_dir / "attention.png")
    i0 = picks[min(3, len(picks) - 1)]  # the digit shown head by head and in the explorer
    figs["attention_heads"] = save_figure(
        plot_attention(model, x[i0], normalize, class_names=labels,
                       title=f"One test digit, head by head (true class {labels[int(y[i0])]})"),
        run_dir / "attention_heads.png")
    wrong = (pred != y).nonzero().flatten()
    if len(wrong):
        what = f"The {len(wrong)} misclassified test digits" if len(wrong) <= 20 else "Misclassified test digits (first 20)"
        wrong = wrong[:20]
        figs["mistakes"] = save_figure(report.plot_predictions(x[wrong], y[wrong], probs[wrong], labels, title=what),
                                       run_dir / "mistakes.png")
    figs["explore"] = write_page(explore_vit(model, x[i0], normalize, label=f"{run.name}, test digit {labels[int(y[i0])]}",
                                             class_names=labels),
                                 run_dir / "explore.html")
    return figs, picks


def summary_section(run, scores: DemoScores, cfg, train_seconds: float) -> list:
    """The title, the test accuracy and the table of data, model, training and normalisation."""
    model, normalize, meta = run.model, run.extras["normalize"], run.record
    mc, ds = model.cfg, meta["dataset"]
    return [
        ("h1", "attnlab demo: a Vision Transformer reads handwritten digits"),
        ("p", f"**Test accuracy {100 * scores.accuracy:.2f}%** ({scores.correct} of {scores.count} held-out digits), top-5 "
              f"{100 * scores.top5 / scores.count:.2f}%, after {cfg.epochs} epochs and {train_seconds:.0f} s of training on "
              f"the CPU. Everything below was produced by this run; its files are in this directory."),
        ("table", [["", "this run"],
                   ["data", f"scikit-learn's 8x8 digits: {ds['train_size']:,} training / {ds['val_size']:,} validation "
                            f"(best epoch: {meta['best']['epoch']}) / {scores.count:,} test images, 16 grey levels, 10 classes"],
                   ["model", f"`{meta['model']['name']}`: {mc.patch_size}x{mc.patch_size} patches -> "
                             f"{model.grid_size[0]}x{model.grid_size[1]} tokens + class token, {mc.depth} pre-LN blocks, "
                             f"{mc.num_heads} heads, width {mc.embed_dim}, MLP x{mc.mlp_ratio:g}, "
                             f"{meta['model']['parameters']:,} parameters"],
                   ["training", f"AdamW (lr {cfg.lr:g}, weight decay {cfg.weight_decay:g} on matrices only), no dropout, "
                                f"{cfg.warmup_epochs:g} warm-up epochs then cosine decay, batch {cfg.batch_size}, "
                                f"gradient clipping at {cfg.clip_grad:g}, seed {cfg.seed}"],
                   ["normalisation", f"pixel/255, minus mean {normalize.mean[0]:.3f}, divided by std "
                                     f"{normalize.std[0]:.3f} (computed on the training images)"]]),
    ]


def curves_section(h: list[dict], scores: DemoScores, ds: dict) -> list:
    """1. The learning curves, read from the epochs ``h`` of metrics.json."""
    return [
        ("h2", "1. Learning curves"),
        ("img", "curves.png", "Loss per step (smoothed) and per epoch, accuracy per epoch, and the learning-rate schedule."),
        ("p", f"The loss falls quickly once the warm-up ends; validation accuracy passes 90% at epoch "
              f"{next((r['epoch'] for r in h if r.get('val_acc', 0) >= 0.9), '-')} and ends at "
              f"{100 * h[-1].get('val_acc', float('nan')):.2f}% ({100 * scores.accuracy:.2f}% on the test digits with the "
              f"best epoch), while training accuracy reaches {100 * h[-1]['train_acc']:.1f}%. Late in training the "
              f"training loss keeps falling ({h[-1]['train_loss']:.3f}) but the validation loss stays near "
              f"{h[-1]['val_loss']:.3f}: with {ds['train_size']:,} images the model starts to memorise, and the decaying "
              f"learning rate ends the run there."),
    ]


def confusion_section(cm: Tensor, labels: list[str], mistakes: bool) -> list:
    """2. The confusion matrix, its most frequent confusion and hardest classes (and the mistakes' picture)."""
    from attnlab.train.metrics import per_class_accuracy

    pc = per_class_accuracy(cm.numpy())
    worst = sorted(range(len(labels)), key=lambda i: pc[i])[:2]
    off = cm.clone()
    off.fill_diagonal_(0)
    i, j = divmod(int(off.argmax()), len(labels))
    blocks = [
        ("h2", "2. Which digits get confused"),
        ("img", "confusion.png", "Rows: true digit; columns: predicted digit. Off-diagonal cells are mistakes."),
        ("p", (f"The most frequent confusion is a true **{labels[i]}** read as **{labels[j]}** ({int(off[i, j])} time"
               f"{'s' if int(off[i, j]) != 1 else ''}). " if int(off[i, j]) > 0 else "No test digit is misclassified. ")
              + f"Hardest classes: {labels[worst[0]]} ({100 * pc[worst[0]]:.1f}%) and {labels[worst[1]]} "
                f"({100 * pc[worst[1]]:.1f}%)."),
    ]
    if mistakes:
        blocks += [("img", "mistakes.png", "Misclassified test digits: prediction (probability) above, true class below. "
                                           "Judge for yourself how readable they are at 8x8 pixels.")]
    return blocks


def posembed_section(model) -> list:
    """3. The learned position embeddings."""
    return [
        ("h2", "3. What the position embeddings learned"),
        ("img", "posembed.png", "Cosine similarity between the learned position embedding of each patch (one tile per "
                                "patch) and those of all patches — the ViT paper's Figure 7."),
        ("p", "Nothing tells the model that patches have a 2-D layout: it starts from random position vectors and "
              "learns them with everything else. " + position_structure(model)),
    ]


def attention_section(model, digits: Tensor, normalize) -> list:
    """4. Where the model looks, on ``digits`` (one per class), and the explorer page."""
    return [
        ("h2", "4. Where the model looks"),
        ("img", "attention.png", "Top: one correctly classified test digit of each class with the prediction. Bottom: "
                                 "attention rollout — the class token's attention multiplied through all blocks, "
                                 "residual paths included — over the 4x4 patch grid (bright = attended)."),
        ("img", "attention_heads.png", "One digit in detail: the rollout, and what each head of the last block attends "
                                       "to from the class token."),
        ("p", ink_share(model, digits, normalize) + " Different heads of the last block look at different parts of the digit."),
        ("p", "**Explore it yourself**: [explore.html](explore.html) is one offline page (no network) with this digit's "
              "attention in every block and head — hover a patch to see where it looks — the rollout, the position "
              "similarity, and one head worked out number by number (Q·Kᵀ, ÷√d_k, softmax, ·V)."),
    ]


def experiments_section(run_dir: Path) -> list:
    """5. The experiments that answer the story's questions."""
    return [
        ("h2", "5. The questions, answered by experiment"),
        ("p", "Every question of the story is a command that trains real models and sets the result against the "
              "paper's figure. " + experiments_link(run_dir)),
        ("code", experiment_commands()),
    ]


def reproduce_section(run_dir: Path) -> list:
    """The commands that redo this run, and the files it left."""
    return [
        ("h2", "Reproduce and explore"),
        ("code", "attnlab demo                               # this report again (seeded: same numbers on this machine)\n"
                 f"attnlab eval {run_dir}        # accuracy, top-5, per-class accuracy, confusion matrix\n"
                 f"attnlab predict {run_dir} my_digit.png   # light strokes on black, like the training digits\n"
                 "attnlab train image --model vit_digits --model-arg drop_rate=0 --epochs 40 --batch-size 64 --lr 3e-3 \\\n"
                 "    --weight-decay 0.1 --warmup-epochs 3 --val-fraction 0.1   # the same training from the general command\n"
                 "attnlab train image --model vit_mnist --dataset mnist     # the real thing, from ../shared/data"),
        ("p", "Files here: `curves.png`, `confusion.png`, `posembed.png`, `attention.png`, `attention_heads.png`, "
              "`metrics.csv` / `metrics.json` (every epoch and logged step), `best.json` / `last.json` with "
              "`checkpoints/` (safetensors weights, configs, optimizer state)."),
    ]


def experiments_link(run_dir: Path) -> str:
    """Where the full-budget results are: EXPERIMENTS.md of this checkout, linked relative to the
    report, or the command that lists them when attnlab is installed without its sources."""
    import os

    import attnlab

    doc = Path(attnlab.__file__).resolve().parents[2] / "EXPERIMENTS.md"
    if doc.is_file():
        rel = Path(os.path.relpath(doc, run_dir.resolve())).as_posix()
        return (f"The full-budget results, with their commands, figures, seed spread and verdicts, are in "
                f"[EXPERIMENTS.md]({rel}).")
    return "`attnlab experiment list` names them with their cost; the full-budget results are in the sources' EXPERIMENTS.md."


def experiment_commands() -> str:
    from attnlab.experiments import experiments

    exps = experiments().values()
    width = max(len(e.name) for e in exps)
    return "\n".join(f"attnlab experiment {e.name:<{width}}   # {e.question}" for e in exps)


def position_structure(model) -> str:
    """One honest sentence about the learned position embeddings: are neighbouring patches'
    embeddings more alike than distant ones'?"""
    import torch

    from attnlab.viz.vit import posembed_similarity

    sim = posembed_similarity(model)  # (Gh, Gw, Gh, Gw)
    gh, gw = sim.shape[:2]
    r = torch.arange(gh)[:, None, None, None]
    c = torch.arange(gw)[None, :, None, None]
    r2 = torch.arange(gh)[None, None, :, None]
    c2 = torch.arange(gw)[None, None, None, :]
    dist = (r - r2).abs() + (c - c2).abs()
    near = float(sim[dist == 1].mean())
    far = float(sim[dist >= 3].mean())
    same_row = float(sim[(r == r2) & (c != c2)].mean())
    other = float(sim[(r != r2) & (c != c2)].mean())
    text = (f"After training, the embeddings of neighbouring patches have a mean cosine similarity of {near:.2f}, against "
            f"{far:.2f} for patches three or more steps apart; patches in the same row average {same_row:.2f}, patches "
            f"sharing neither row nor column {other:.2f}. ")
    if near > far + 0.05:
        text += "So the model has begun to discover the image grid from data alone."
    else:
        text += ("With only 16 positions and about 1,400 training images the embeddings stay mostly position-specific "
                 "(the bright diagonal): the grid structure of the ViT paper's Figure 7 needs far more data.")
    return text


def ink_share(model, images, normalize) -> str:
    """One sentence: the share of the attention rollout that falls on patches containing strokes."""
    import torch

    with torch.no_grad():
        maps = model.get_attention_maps(normalize(images))
        roll = model.attention_rollout(maps).float()  # (B, Gh, Gw)
    p = model.cfg.patch_size
    patches = torch.nn.functional.avg_pool2d(images.float().mean(1, keepdim=True), p)[:, 0]  # (B, Gh, Gw)
    inked = patches > 0.15 * 255
    share = float((roll * inked).sum() / roll.sum())
    frac = float(inked.float().mean())
    return (f"On these digits {100 * share:.0f}% of the rollout weight falls on the {100 * frac:.0f}% of patches that "
            f"contain ink: the class token gathers its evidence {'mostly ' if share > frac + 0.1 else ''}from the strokes"
            f"{'' if share > frac + 0.1 else ' about as much as from the background'}.")
