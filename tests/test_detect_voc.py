"""attnlab train detect / eval / predict on Pascal VOC data (voc:DIR, voc:FILE.xml): tiles at full
resolution, a validation strip of each photograph, padded batches with a pixel mask, photographs
scored whole from their merged tiles; bad input in one line; the real neon-trees counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["in_chans=3", "d_model=32", "num_heads=4", "num_encoder_layers=1", "num_decoder_layers=2", "d_ff=64",
        "num_queries=8", "cnn_widths=[16,32]", "img_size=48"]
PHOTOS = {"p1": (96, 80), "p2": (72, 64), "small": (40, 30)}  # (width, height); "small" is under one 48 px tile


def margs(items):
    return [x for a in items for x in ("--model-arg", a)]


def write_photos(root, photos=PHOTOS):
    """Photographs of noise with bright squares (class "crown") and dark ones ("gap"), each with
    its VOC file beside it. Returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, (w, h) in photos.items():
        a = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
        objs = []
        for k in range(max(2, w * h // 900)):
            s = int(rng.integers(8, 14))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            name = "crown" if k % 3 else "gap"
            a[y:y + s, x:x + s] = 230 if name == "crown" else 10
            objs.append(f"<object><name>{name}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + s}</xmax>"
                        f"<ymax>{y + s}</ymax></bndbox></object>")
        Image.fromarray(a).save(root / f"{stem}.png")
        (root / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.png</filename><size><width>{w}</width>"
                                          f"<height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    return root


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voc")
    root = write_photos(tmp / "photos")
    args = ["train", "detect", "--dataset", f"voc:{root}", "--tile", "48", "--tile-overlap", "16", "--val-region", "0.4",
            "--max-dets", "50", "--model", "detr_digits", *margs(TINY), "--batch-size", "4", "--epochs", "1",
            "--threads", "1", "--quiet", "--run-dir", str(tmp / "run")]
    assert main(args) == 0
    return tmp / "run", root


def test_train_on_tiles_validates_on_whole_photographs(voc_run):
    run, _ = voc_run
    rec = json.loads((run / "last.json").read_text())
    assert rec["labels"] == ["crown", "gap"] and rec["category_ids"] == [1, 2]
    read = rec["dataset"]["read"]
    assert read.startswith(f"voc:{voc_run[1]}: 3 images, ") and "right-most 0.4 of each photograph" in read
    assert "tiles of 48 px (overlap 16 px)" in read and "objects in one" in read
    assert rec["data_config"]["tile"] == 48 and rec["data_config"]["max_dets"] == 50
    assert {"val_AP", "val_AP50", "val_AR", "val_loss"} <= set(rec["metrics"])


def test_the_task_tiles_pads_and_masks(voc_run):
    """Training tiles of other sizes (where a photograph's training part is narrower or lower
    than a tile) are padded to the stride with their real sizes kept; the task's mask marks exactly their pixels; validation
    tiles are those of the validation strips, scored on the strips."""
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train.config import TrainConfig

    _, root = voc_run
    model = create_model("detr_digits", in_chans=3, cnn_widths=(16, 32), d_model=32, num_queries=8)
    dc = DetectDataConfig(dataset=f"voc:{root}", tile=48, tile_overlap=16, val_region=0.4)
    data = load_data(dc, model.cfg, progress=False)
    assert data.train.images.shape[-2:] == (48, 48)
    # p1's training part 58 x 80: 4 tiles; p2's 43 x 64: 2 tiles 43 wide; small's 24 x 30: 1 tile
    assert data.train.sizes == [(48, 48)] * 4 + [(48, 43)] * 2 + [(30, 24)]
    small = [6]
    task = make_task(data, model, TrainConfig())
    ids = torch.tensor([0, small[0]])
    mask = task.mask(data.train, ids)
    assert mask.shape == (2, 48, 48) and mask[0].all() and int(mask[1].sum()) == 30 * 24 and mask[1, :30, :24].all()
    assert task.mask(data.train, torch.tensor([0])) is None  # nothing padded: no mask
    x = task.inputs(data.train.images[ids], mask)
    assert (x[1, :, 30:] == 0).all() and (x[1, :, :, 24:] == 0).all() and (x[0] != 0).any()
    tiles = data.val_tiles
    assert [s.size for s in tiles.scenes] == [(80, 38), (64, 29), (30, 16)]
    assert len(tiles.tiles) == len(data.val) == len(tiles.scene_of)
    assert sum(len(s.boxes) for s in tiles.scenes) > 0
    assert task.lr_scales == {"backbone.": 1.0}  # a backbone from scratch learns at --lr, not the pretrained one's 0.1
    assert make_task(data, model, TrainConfig()).lr_scales == {"backbone.": 1.0}


def test_eval_and_predict_tiled(voc_run, tmp_path, capsys):
    run, root = voc_run
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--quiet"]) == 0  # the validation strips
    res = json.loads(capsys.readouterr().out)
    assert res["photographs"] == 3 and res["max_dets"] == 50 and 0 <= res["AP"] <= res["AP50"] <= 1
    assert main(["eval", str(run), "--dataset", f"voc:{root / 'p1.xml'}", "--max-dets", "7", "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["photographs"] == 1 and res["tiles"] == 6 and res["images"] == 6 and res["max_dets"] == 7

    assert main(["predict", str(run), str(root / "p1.png"), "--threshold", "0", "--json", "--output-dir",
                 str(tmp_path)]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    boxes = torch.tensor([d["box"] for d in pred["detections"]])
    assert 1 <= len(boxes) <= 6 * 8  # 6 tiles (3 x 2) of 8 queries, merged by NMS
    assert (boxes[:, 0] >= -0.01).all() and (boxes[:, 2] <= 96.01).all() and (boxes[:, 3] <= 80.01).all()
    assert boxes[:, 2].max() > 48  # boxes in the photograph's pixels, not one tile's
    assert open(pred["picture"], "rb").read(4) == b"\x89PNG"


def test_attention_pictures_show_the_photograph_as_the_run_sees_it(voc_run, tmp_path, monkeypatch):
    """viz attention and viz explore of a tiled run draw its centre tile at full resolution (what
    the model was trained on), not the photograph squashed to the model's square."""
    import attnlab.viz.detection as vd
    import attnlab.viz.explore as ve
    from attnlab.runs import open as open_run
    from attnlab.tasks.detect import seen_image

    run, root = voc_run
    photo = np.array(Image.open(root / "p1.png"))  # 96 x 80
    image, seen = seen_image(open_run(str(run)), str(root / "p1.png"))
    assert image.shape == (3, 48, 48) and "centre tile (48x48 of 96x80 px" in seen
    tile = torch.from_numpy(photo[16:64, 24:72]).permute(2, 0, 1)
    assert torch.equal(image, tile)
    shown = []
    for module, name in ((vd, "plot_detr_attention"), (ve, "explore_detr")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda model, img, *a, _f=original, **k: shown.append(img) or _f(model, img, *a, **k))
    out = tmp_path / "att.png"
    assert main(["viz", "attention", str(run), str(root / "p1.png"), "-o", str(out), "--dpi", "40"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    page = tmp_path / "page.html"
    assert main(["viz", "explore", str(run), str(root / "p1.png"), "-o", str(page)]) == 0
    assert page.stat().st_size > 0
    assert len(shown) == 2 and all(torch.equal(x, tile) for x in shown)


def test_train_on_whole_photographs_resized_as_detr(tmp_path):
    """Without --tile each photograph is resized to shorter side img_size (aspect kept) and the
    batch padded; a separate VOC file validates."""
    root = write_photos(tmp_path / "photos")
    args = ["train", "detect", "--dataset", f"voc:{root}", "--val-dataset", f"voc:{root / 'p2.xml'}", "--model",
            "detr_digits", *margs(TINY), "--batch-size", "3", "--epochs", "1", "--threads", "1", "--quiet",
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    rec = json.loads((tmp_path / "run" / "last.json").read_text())
    assert "3 photographs resized as DETR (padded to 48x64)" in rec["dataset"]["read"]  # 48x57, 48x54, 48x64
    assert rec["dataset"]["val_size"] == 1
    from attnlab.runs import open as open_run
    from attnlab.tasks.detect import seen_image

    image, seen = seen_image(open_run(str(tmp_path / "run")), str(root / "p1.png"))  # 96 x 80: aspect kept
    assert image.shape[-2] == 48 and image.shape[-1] in (57, 58) and "resized as DETR (96x80" in seen


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("malformed", "malformed XML"),
])
def test_bad_voc_input_is_one_line(tmp_path, capsys, problem, message):
    root = write_photos(tmp_path / "photos", {"p1": (64, 48)})
    if problem == "malformed":
        (root / "p1.xml").write_text("<annotation><filename>p1.png</filename><object>")
    spec = f"voc:{tmp_path / 'nowhere'}" if problem == "missing" else f"voc:{root}"
    capsys.readouterr()
    assert main(["train", "detect", "--dataset", spec, "--tile", "32", "--tile-overlap", "8", "--model", "detr_digits",
                 *margs(TINY), "--epochs", "1", "--quiet", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_tile_is_for_voc_data(tmp_path, capsys):
    assert main(["train", "detect", "--tile", "32", "--model", "detr_digits", "--epochs", "1", "--quiet",
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert "--tile is for VOC data" in capsys.readouterr().err


NEON_TRAIN = "2019_YELL_2_528000_4978000_image_crop2.xml"


def test_neon_trees_through_the_task(shared_data):
    """The real data as the README's commands read it: the large crop in 400 px tiles with 120 px
    overlap, its right-most fifth held out."""
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data

    path = shared_data / "neon-trees" / NEON_TRAIN
    if not path.is_file():
        pytest.skip(f"{path} not found: ATTNLAB_DATA holds no neon-trees data")
    mcfg = create_model("detr_digits", in_chans=3).cfg
    data = load_data(DetectDataConfig(dataset=f"voc:{path}", tile=400, tile_overlap=120, val_region=0.2, max_dets=300),
                     mcfg, progress=False)
    assert data.classes == ["Tree"]
    assert data.info["dataset"]["read"].startswith(f"voc:{path}: 1 images, 574 boxes of 1 classes")
    strip = data.val_tiles.scenes[0]
    assert strip.size == (2472, 460) and strip.origin == (1839, 0)  # 2299 - round(0.2 * 2299)
    assert len(data.train) == 7 * 9 and len(data.val) == 2 * 9 and data.train.images.shape[-2:] == (400, 400)
    train_boxes = 574 - len(strip.boxes)
    assert 0 < len(strip.boxes) < 574 and sum(len(b) for b in data.train.boxes) >= train_boxes  # overlap repeats some


def test_help_states_the_voc_options_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "detect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--val-region F", "(default: 0.2)"), ("--tile-overlap O", "(default: 120)"),
                            ("--max-dets N", "(default: 100)"), ("--tile S", "(default: none;")):
        assert default in text[text.rindex(option):][:400], option  # its description, after the usage line
    assert "voc:FILE.xml" in text


def test_a_pretrained_backbone_keeps_its_smaller_rate():
    """--backbone-lr (0.1) is for a backbone that arrives trained: the canvases' pretrained CNN that keeps training."""
    from attnlab.models import create_model
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train.config import TrainConfig

    model = create_model("detr_digits", cnn_widths=(16, 32), d_model=32, num_queries=4, img_size=32)
    dc = DetectDataConfig(train_size=16, val_size=8, min_scale=10, max_scale=16, pretrain_backbone=2, train_backbone=True)
    data = load_data(dc, model.cfg, progress=False)
    assert make_task(data, model, TrainConfig()).lr_scales == {"backbone.": 0.1}


@pytest.mark.slow
def test_readme_photograph_block_runs(tmp_path, shared_data):
    """The README's own-photographs commands, line by line, in a fresh directory beside the data (the
    same relative path ../shared/data); the training line with a budget small enough for a test
    appended (the last value of an option wins)."""
    import os
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "--dataset voc:" in b)
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    os.symlink(shared_data, tmp_path / "shared" / "data")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    small = " --epochs 1 --max-minutes 0.1 --batch-size 8 --threads 1 --quiet"
    for line in lines:
        line += small if line.startswith("attnlab train detect") else ""
        p = subprocess.run(line, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (line, p.stderr[-2000:])
    assert (work / "trees-attention.png").read_bytes()[:4] == b"\x89PNG" and (work / "trees.html").stat().st_size > 0
    assert json.loads((work / "runs" / "trees" / "last.json").read_text())["model"]["config"]["denoising"] is True
