"""attnlab train detect / eval / predict / viz attention on tiny runs (canvases and COCO data)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.cli.main import main
from attnlab.data.canvases import CanvasConfig, make_canvases

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["d_model=32", "num_heads=4", "num_encoder_layers=1", "num_decoder_layers=2", "d_ff=64", "num_queries=4",
        "cnn_widths=[16,32]", "img_size=32"]


def margs(items):
    return [x for a in items for x in ("--model-arg", a)]


@pytest.fixture(scope="module")
def canvas_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect")
    torch.set_num_threads(1)
    args = ["train", "detect", "--model", "detr_digits", *margs(TINY), "--train-size", "32", "--val-size", "16",
            "--batch-size", "16", "--epochs", "1", "--min-scale", "10", "--max-scale", "16", "--pretrain-backbone", "3",
            "--threads", "1", "--quiet",
            "--run-dir", str(tmp / "run")]
    assert main(args) == 0
    return tmp / "run"


def test_canvas_run_metrics_and_commands(canvas_run, tmp_path, capsys):
    metrics = json.loads((canvas_run / "metrics.json").read_text())
    row = metrics["epochs"][-1]
    assert metrics["main_metric"] == "AP50" and {"val_AP", "val_AP50", "val_AP75", "val_loss"} <= set(row)
    rec = json.loads((canvas_run / "last.json").read_text())
    assert rec["backbone_pretraining"]["steps"] == 3
    assert rec["model"]["parameters"] > 0
    assert 0.0 <= row["val_AP50"] <= 1.0
    capsys.readouterr()
    assert main(["eval", str(canvas_run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 16 and res["AP50"] == pytest.approx(row["val_AP50"])

    img = tmp_path / "canvas.png"
    Image.fromarray(make_canvases(CanvasConfig(size=32, min_scale=10, max_scale=16), 1, seed=5).images[0, 0].numpy()).save(img)
    assert main(["predict", str(canvas_run), str(img), "--threshold", "0", "--json", "--output-dir", str(tmp_path)]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert len(pred["detections"]) == 4  # every query at threshold 0
    assert all(len(d["box"]) == 4 and 0 <= d["score"] <= 1 for d in pred["detections"])
    assert open(pred["picture"], "rb").read(4) == b"\x89PNG"
    assert main(["predict", str(canvas_run), str(img), "--threshold", "1.5"]) == 2
    out = tmp_path / "att.png"
    assert main(["viz", "attention", str(canvas_run), str(img), "-o", str(out), "--dpi", "40"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_predict_draws_same_named_images_apart(canvas_run, tmp_path, capsys):
    """Images with one file name in two folders get a picture each, and the JSON names each one's."""
    canvases = make_canvases(CanvasConfig(size=32, min_scale=10, max_scale=16), 2, seed=5).images
    inputs = []
    for folder, canvas in zip("ab", canvases):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "same.png")
        Image.fromarray(canvas[0].numpy()).save(inputs[-1])
    out = tmp_path / "drawn"
    capsys.readouterr()
    assert main(["predict", str(canvas_run), *map(str, inputs), "--threshold", "0", "--json", "--output-dir", str(out)]) == 0
    preds = json.loads(capsys.readouterr().out)
    pictures = [p["picture"] for p in preds]
    assert [p["image"] for p in preds] == list(map(str, inputs)) and len(set(pictures)) == 2
    assert sorted(out.iterdir()) == sorted(map(Path, pictures))
    for image, picture in zip(inputs, pictures):  # each picture is its own image's, drawn alone
        assert main(["predict", str(canvas_run), str(image), "--threshold", "0", "--json", "--output-dir",
                     str(tmp_path / image.parent.name)]) == 0
        alone = json.loads(capsys.readouterr().out)[0]["picture"]
        assert Path(alone).read_bytes() == Path(picture).read_bytes()


def test_init_from_a_run(canvas_run, tmp_path):
    args = ["train", "detect", "--model", "detr_digits", *margs(TINY), "--train-size", "16", "--val-size", "8",
            "--batch-size", "16", "--epochs", "1", "--min-scale", "10", "--max-scale", "16", "--init", str(canvas_run),
            "--threads", "1", "--quiet", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    rec = json.loads((tmp_path / "run" / "last.json").read_text())
    assert rec["init"]["format"] == "attnlab" and rec["init"]["new_head"] == [] and "backbone_pretraining" not in rec
    assert main(args[:-1] + [str(tmp_path / "bad"), "--init", str(tmp_path / "nothing")]) == 2


def test_load_model_rebuilds_the_run(canvas_run):
    import attnlab
    from attnlab.models.detr import DETR

    model = attnlab.load_model(canvas_run)
    assert isinstance(model, DETR) and model.cfg.d_model == 32
    assert model(torch.zeros(1, 1, 32, 32))["logits"].shape == (1, 4, 11)


def test_train_on_coco_files(tmp_path):
    from test_detect_data import write_coco

    sizes = [(40, 30), (50, 50), (30, 40), (44, 33), (36, 36), (48, 40)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 3 if i % 2 else 7, "bbox": [1, 2, 10, 12], "iscrowd": 0}
            for i in range(len(sizes))]
    spec = write_coco(tmp_path, annotations=anns, sizes=sizes)
    args = ["train", "detect", "--dataset", spec, "--val-fraction", "0.34", "--model", "detr_digits",
            *margs(TINY + ["in_chans=3"]), "--batch-size", "2", "--epochs", "1", "--threads", "1", "--quiet",
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    rec = json.loads((tmp_path / "run" / "last.json").read_text())
    assert rec["labels"] == ["cat", "dog"] and rec["category_ids"] == [3, 7]
    assert rec["dataset"]["val_size"] == 2 and "val_AP50" in rec["metrics"]
    assert main(["eval", str(tmp_path / "run"), "--dataset", spec, "--json"]) == 0  # all 6 images scored
    res = json.loads((tmp_path / "run" / "eval" / "coco-val" / "results.json").read_text())
    assert res["images"] == 6 and 0.0 <= res["AP"] <= res["AP50"] <= 1.0
    # a canvas dataset for a 3-channel model is refused in one line
    assert main(["train", "detect", "--model", "detr_digits", *margs(TINY + ["in_chans=3"]), "--epochs", "1",
                 "--run-dir", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_backbone_pretraining_then_frozen():
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train.config import TrainConfig

    model = create_model("detr_digits", cnn_widths=(16, 32), d_model=32, num_heads=4, img_size=32, num_encoder_layers=1,
                         num_decoder_layers=1, d_ff=64, num_queries=4)
    before = model.backbone.body[0].weight.clone()
    data = load_data(DetectDataConfig(train_size=16, val_size=4, min_scale=10, max_scale=16, pretrain_backbone=20),
                     model.cfg)
    task = make_task(data, model, TrainConfig())
    assert task.record()["backbone_pretraining"]["steps"] == 20
    assert not torch.equal(before, model.backbone.body[0].weight)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_a_trained_backbone_learns_at_a_tenth_of_the_rate():
    """--train-backbone: the backbone keeps training, at --backbone-lr (0.1) times --lr (DETR §4)."""
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train import Trainer
    from attnlab.train.config import TrainConfig

    model = create_model("detr_digits", cnn_widths=(16, 32), d_model=32, num_heads=4, img_size=32, num_encoder_layers=1,
                         num_decoder_layers=1, d_ff=64, num_queries=4)
    data = load_data(DetectDataConfig(train_size=16, val_size=4, min_scale=10, max_scale=16, pretrain_backbone=2,
                                      train_backbone=True), model.cfg)
    cfg = TrainConfig(lr=1e-3, batch_size=8, epochs=1, warmup_steps=0, schedule="constant")
    trainer = Trainer(model, make_task(data, model, cfg), cfg, run_dir=None)
    backbone = {id(p) for p in model.backbone.parameters()}
    rates = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert len(rates) == len(list(model.parameters()))
    assert [rates[i] for i in backbone] == pytest.approx([1e-4] * len(backbone))
    others = [r for i, r in rates.items() if i not in backbone]
    assert others == pytest.approx([1e-3] * len(others))


def test_resume_retraces_the_uninterrupted_run(tmp_path):
    """Canvases are drawn by (epoch, index), so a run cut after its first step (--max-minutes) and
    resumed ends with the weights of the uncut run (the resumed session loads the pretrained
    backbone from the run instead of pretraining it again). The budget, spent before the
    pretraining's first step ends, cuts that at one step too: the uncut run pretrains one step."""
    from attnlab.checkpoints import rundir as ckpt

    base = ["train", "detect", "--model", "detr_digits", *margs(TINY), "--train-size", "32", "--val-size", "8",
            "--batch-size", "16", "--min-scale", "10", "--max-scale", "16", "--threads", "1", "--quiet", "--epochs", "2"]
    assert main(base + ["--pretrain-backbone", "1", "--run-dir", str(tmp_path / "a")]) == 0
    assert main(base + ["--pretrain-backbone", "2", "--max-minutes", "0.00001", "--run-dir", str(tmp_path / "b")]) == 0
    assert ckpt.read_record(tmp_path / "b", "last")["step"] == 1
    assert main(["train", "detect", "--resume", str(tmp_path / "b"), "--max-minutes", "0", "--quiet"]) == 0
    rec = ckpt.read_record(tmp_path / "b", "last")
    assert rec["step"] == 4  # the first session's pretraining, kept:
    assert rec["backbone_pretraining"] | {"seconds": 0} == {"data": "single-digit canvases", "steps": 1, "asked": 2,
                                                            "stopped_by_time": True,
                                                            "last_batch_accuracy": ANY, "seconds": 0}
    wa, wb = (ckpt.load_weights(d, ckpt.read_record(d, "last")) for d in (tmp_path / "a", tmp_path / "b"))
    # float rounding may differ (the pretraining of the first session leaves oneDNN in another state): up to
    # 1.6e-5 measured on an AVX-512 machine; a step done differently moves weights by ~lr = 1e-3
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_max_minutes_covers_the_backbone_pretraining(tmp_path, capsys):
    """--max-minutes counts the whole command: a pretraining far longer than the budget stops at
    it, the detector then stops after its first step; both stops are recorded and reported."""
    budget, asked = 0.02, 20000  # 1.2 s; 20,000 pretraining steps take minutes
    t0 = time.perf_counter()
    assert main(["train", "detect", "--model", "detr_digits", *margs(TINY), "--train-size", "32", "--val-size", "8",
                 "--batch-size", "16", "--min-scale", "10", "--max-scale", "16", "--pretrain-backbone", str(asked),
                 "--threads", "1", "--max-minutes", str(budget), "--run-dir", str(tmp_path / "run")]) == 0
    assert time.perf_counter() - t0 < 60 * budget + 45  # slack: loading, the cut epoch's evaluation, saving
    rec = json.loads((tmp_path / "run" / "last.json").read_text())
    pre = rec["backbone_pretraining"]
    assert pre["stopped_by_time"] and 1 <= pre["steps"] < asked and pre["asked"] == asked
    assert rec["step"] == 1 and json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"][-1]["cut"] == 1
    out = capsys.readouterr().out
    assert (f"backbone pretrained on single-digit canvases: stopped by --max-minutes after {pre['steps']} of {asked} "
            "steps") in out
    assert "stopped by --max-minutes 0.02 after 1 of the 2 batches of epoch 1" in out


def test_eval_prints_a_summary(canvas_run, capsys):
    """Like the other tasks' evaluations: what was scored, then AP, AP50, AP75 and the set loss."""
    assert main(["eval", str(canvas_run), "--quiet", "--out", str(canvas_run / "eval-summary")]) == 0
    lines = capsys.readouterr().out.splitlines()
    r = json.loads((canvas_run / "eval-summary" / "results.json").read_text())
    assert lines[0] == (f"{canvas_run} ({r['checkpoint']}) on digits-canvas: 16 images in {r['seconds']:.1f} s "
                        "(batches of 100)")
    assert lines[1] == (f"  AP {r['AP']:.3f}   AP50 {r['AP50']:.3f}   AP75 {r['AP75']:.3f}   AR {r['AR']:.3f}   "
                        "(COCO evaluator; IoU 0.5:0.95, 0.5, 0.75; at most 100 detections per image)")
    assert lines[2] == f"  set loss {r['loss']:.4f}   class {r['ce']:.4f}   L1 {r['l1']:.4f}   GIoU {r['giou']:.4f}"
    assert lines[3:] == [f"  results: {canvas_run / 'eval-summary' / 'results.json'}"]


def test_train_help_states_the_tasks_warmup(capsys):
    """detect warms up for 200 steps: its --help says so, and that --warmup-epochs is unused unless given."""
    with pytest.raises(SystemExit):
        main(["train", "detect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    epochs = text.split("--warmup-epochs X ")[1].split(" --warmup-steps N ")[0]
    assert epochs == "linear warm-up length in epochs (default: unused, --warmup-steps 200 applies unless this is given)"
    assert "(overrides --warmup-epochs) (default: 200)" in text


def test_data_canvas_writes_a_canvas_and_its_boxes(tmp_path, capsys):
    """`attnlab data canvas` writes validation canvas N as drawn for training runs, and prints its
    digits' boxes in the PNG's pixels (x0, y0, x1, y1, the format of `predict --json`)."""
    from attnlab.detect.boxes import cxcywh_to_xyxy

    out = tmp_path / "canvas.png"
    assert main(["data", "canvas", "-o", str(out), "--index", "2", "--size", "48"]) == 0
    cfg = CanvasConfig(size=48)
    want = make_canvases(cfg, 3, split="val")
    assert torch.equal(torch.from_numpy(np.array(Image.open(out))), want.images[2, 0])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{out}: validation canvas 2 of digits-canvas, 48x48 pixels, {len(want.labels[2])} digits"
    boxes = (cxcywh_to_xyxy(want.boxes[2]) * 48).round().int().tolist()
    assert lines[1:] == [f"  {int(k):<12} box x0={a} y0={b} x1={c} y1={d}" for k, (a, b, c, d) in zip(want.labels[2], boxes)]
    # a dataset that is no canvas: one line, nothing written
    assert main(["data", "canvas", "-o", str(tmp_path / "bad.png"), "--dataset", "coco:a.json:img"]) == 2
    assert "is not a canvas dataset" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_predict_help_states_the_box_format(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A box is [x0, y0, x1, y1]: left, top, right, bottom in pixels of the image file as given" in text


@pytest.mark.slow
def test_readme_detection_block_runs(tmp_path):
    """The README's detection commands, line by line in a fresh directory; the training line with
    sizes small enough for a test appended (the last value of an option wins)."""
    import os
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "attnlab train detect" in b)
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("attnlab data canvas -o canvas.png")  # made before the commands that read it
    small = " --epochs 1 --train-size 32 --val-size 8 --batch-size 16 --pretrain-backbone 2 --threads 1 --quiet"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    for line in lines:
        line += small if line.startswith("attnlab train detect") else ""
        p = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (line, p.stderr[-2000:])
        if "--json" in line:
            pred = json.loads(p.stdout)[0]
            assert pred["image"] == "canvas.png" and all(len(d["box"]) == 4 for d in pred["detections"])
    assert (tmp_path / "detr.png").read_bytes()[:4] == b"\x89PNG"


def test_backbone_pretraining_shows_a_progress_bar(monkeypatch):
    """On a terminal the pretraining has its bar, like the engine's epochs (steps, loss, accuracy)."""
    import io
    import sys

    from attnlab.data.transforms import Normalize
    from attnlab.models import create_model
    from attnlab.tasks.detect import PretrainImages, pretrain_backbone

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    model = create_model("detr_digits", cnn_widths=(16, 32), img_size=32)
    images = PretrainImages(CanvasConfig(size=32, min_scale=10, max_scale=16))
    pretrain_backbone(model, images, 2, Normalize([0.0], [1.0]), batch_size=8, progress=True)
    shown = sys.stderr.getvalue()
    assert "pretraining the backbone on single-digit canvases:" in shown and "/2 [" in shown
    assert "step/s" in shown and "accuracy" in shown


def test_denoising_and_deformable_runs_through_the_cli(tmp_path, capsys):
    """--dn-groups G switches query denoising on (the model is built with denoising=true, saved so;
    the training log gains dn_ce, dn_l1, dn_giou); --model-arg cross_attention=deformable gives the
    local cross-attention; together a DN-Deformable arm that eval, predict and viz attention read."""
    import attnlab

    base = ["train", "detect", "--model", "detr_digits", *margs(TINY + ["cross_attention=deformable"]), "--train-size", "32",
            "--val-size", "8", "--batch-size", "16", "--epochs", "1", "--min-scale", "10", "--max-scale", "16",
            "--pretrain-backbone", "2", "--threads", "1", "--quiet"]
    run = tmp_path / "run"
    assert main(base + ["--dn-groups", "2", "--run-dir", str(run)]) == 0
    row = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    assert all(row[f"train_dn_{k}"] > 0 for k in ("ce", "l1", "giou")) and "val_dn_ce" not in row
    rec = json.loads((run / "last.json").read_text())
    assert rec["data_config"]["dn_groups"] == 2 and rec["data_config"]["dn_box_noise"] == 0.4
    model = attnlab.load_model(run)
    assert model.cfg.denoising and model.dn_queries is not None and model.cfg.cross_attention == "deformable"
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0 and json.loads(capsys.readouterr().out)["images"] == 8
    img = tmp_path / "canvas.png"
    Image.fromarray(make_canvases(CanvasConfig(size=32, min_scale=10, max_scale=16), 1, seed=5).images[0, 0].numpy()).save(img)
    assert main(["predict", str(run), str(img), "--threshold", "0", "--json", "--output-dir", str(tmp_path)]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["detections"]) == 4
    assert main(["viz", "attention", str(run), str(img), "-o", str(tmp_path / "att.png"), "--dpi", "40"]) == 0
    # one switch each: denoising by --dn-groups, its noise only with it
    assert main(base + ["--model-arg", "denoising=true", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "switched on by --dn-groups G" in capsys.readouterr().err
    assert main(base + ["--dn-label-noise", "0.5", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "need --dn-groups" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_the_denoising_loss_trains_the_denoising_queries():
    """The task's training step adds DN-DETR's reconstruction loss: the denoising queries' position
    head (which no matching query uses) gets gradients, and the step logs the three dn terms."""
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train.config import TrainConfig
    from attnlab.train.sampler import Plan

    torch.manual_seed(0)
    dc = DetectDataConfig(train_size=8, val_size=4, min_scale=10, max_scale=16, pretrain_backbone=0, dn_groups=3)
    model = create_model("detr_digits", cnn_widths=(16, 32), d_model=32, num_heads=4, img_size=32, num_encoder_layers=1,
                         num_decoder_layers=2, d_ff=64, num_queries=4)
    data = load_data(dc, model.cfg)
    assert data.model_fields["denoising"] is True
    model = create_model("detr_digits", **{**model.cfg.__dict__, **data.model_fields})
    task = make_task(data, model, TrainConfig())
    batch = next(iter(task.train_batches(Plan(batch_size=8))))[0]
    loss, logged = task.train_step(model, batch, TrainConfig())
    loss.backward()
    assert model.dn_queries.pos_head[0].weight.grad.abs().sum() > 0
    assert {"dn_ce", "dn_l1", "dn_giou"} <= set(logged) and set(task.summarize(logged)) >= {"dn_ce", "dn_l1", "dn_giou"}
