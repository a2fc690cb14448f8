"""Detection data: digit canvases (deterministic, exact boxes) and the COCO reader's refusals."""

import pytest
import torch

from attnlab.data.canvases import CanvasConfig, DigitCanvases, make_canvases
from attnlab.errors import DataError


def test_canvases_are_deterministic_per_seed():
    cfg = CanvasConfig()
    a, b = make_canvases(cfg, 8, seed=3), make_canvases(cfg, 8, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert all(torch.equal(x, y) for x, y in zip(a.labels, b.labels))
    c = make_canvases(cfg, 8, seed=4)
    assert not torch.equal(a.images, c.images)
    # canvas i does not depend on how many were drawn before it
    assert torch.equal(DigitCanvases(cfg, seed=3).draw(5)[0], a.images[5])
    # validation canvases come from other digits
    assert not torch.equal(make_canvases(cfg, 8, seed=3, split="val").images, a.images)


def test_boxes_tightly_enclose_the_digit_pixels():
    cfg = CanvasConfig(size=64, min_digits=1, max_digits=4)
    ds = make_canvases(cfg, 60, seed=0)
    counts = [len(lb) for lb in ds.labels]
    assert min(counts) >= 1 and max(counts) >= 3 and max(counts) <= 4
    for img, lab, box in zip(ds.images, ds.labels, ds.boxes):
        on = img[0] > 0
        covered = torch.zeros_like(on)
        assert ((lab >= 0) & (lab < 10)).all()
        for cx, cy, w, h in (box * cfg.size).tolist():
            x0, y0, x1, y1 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
            assert 0 <= x0 < x1 <= cfg.size and 0 <= y0 < y1 <= cfg.size
            inside = on[y0:y1, x0:x1]
            # tight: every border row and column of the box holds a digit pixel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y0:y1, x0:x1].any()  # boxes never overlap
            covered[y0:y1, x0:x1] = True
        assert not (on & ~covered).any()  # every digit pixel is in a box


def test_canvas_config_refusals():
    with pytest.raises(DataError, match="min_digits"):
        CanvasConfig(min_digits=3, max_digits=2)
    with pytest.raises(DataError, match="scale"):
        CanvasConfig(size=32, max_scale=40)
    with pytest.raises(DataError, match="canvas source"):
        CanvasConfig(source="cifar10")


# --- COCO ---------------------------------------------------------------------------------------

def write_coco(root, annotations=None, images=None, sizes=((40, 30), (50, 50))):
    from PIL import Image

    (root / "img").mkdir(exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 50, 0, 0)).save(root / "img" / f"{i}.png")
    data = {
        "images": images if images is not None else [{"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h}
                                                     for i, (w, h) in enumerate(sizes)],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [10, 10, 5, 5], "area": 25, "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    import json

    (root / "ann.json").write_text(json.dumps(data))
    return f"coco:{root / 'ann.json'}:{root / 'img'}"


def test_coco_reader(tmp_path):
    from attnlab.data.coco import read_coco

    ds, ids, names = read_coco(write_coco(tmp_path), 32, 3)
    assert ids == [3, 7] and names == ["cat", "dog"]
    # DETR's resize (shorter side 32, the aspect kept: 30x40 -> 32x42, 50x50 -> 32x32), padded at the right
    assert ds.images.shape == (2, 3, 32, 42) and ds.sizes == [(32, 42), (32, 32)]
    assert ds.labels[0].tolist() == [1] and ds.labels[1].tolist() == [0]  # the crowd box is skipped
    torch.testing.assert_close(ds.boxes[0], torch.tensor([[7 / 40, 13 / 30, 10 / 40, 20 / 30]]))
    torch.testing.assert_close(ds.boxes[1], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].__setitem__("file_name", "nope.png"),
     "nope.png, which does not exist"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [35, 3, 10, 20]), "outside its image 0.png"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [2, 3, 0, 20]), "zero-area box"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [float("nan"), 3, 10, 20]), r"annotation 1 has bbox \[nan, 3, 10, 20\]"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [2, 3, 10, float("nan")]), "not a finite number"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 99), "unknown category id 99"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 42), "image id 42, which is not in 'images'"),
    (lambda d: d["images"][0].__setitem__("width", 41), "0.png is 40x30 but the JSON says 41x30"),
    (lambda d: d.pop("categories"), "no 'categories' list"),
])
def test_coco_refusals_one_line(tmp_path, change, message):
    import json

    from attnlab.data.coco import read_coco

    spec = write_coco(tmp_path)
    data = json.loads((tmp_path / "ann.json").read_text())
    change(data)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as e:
        read_coco(spec, 32, 3)
    assert "\n" not in str(e.value)


def test_coco_malformed_json_one_line(tmp_path):
    from attnlab.data.coco import read_coco

    spec = write_coco(tmp_path)
    (tmp_path / "ann.json").write_text('{"images": [}')
    with pytest.raises(DataError, match=r"malformed JSON at line 1, column 13") as e:
        read_coco(spec, 32, 3)
    assert "\n" not in str(e.value)


def test_coco_metrics_through_the_evaluator():
    from attnlab.detect.coco_eval import coco_metrics

    gt = [{"size": (64, 64), "labels": torch.tensor([0, 1]), "boxes": torch.tensor([[2., 2., 20., 30.], [30., 30., 60., 50.]])},
          {"size": (64, 64), "labels": torch.tensor([1]), "boxes": torch.tensor([[10., 10., 40., 40.]])}]
    perfect = [{"scores": torch.tensor([0.9, 0.8]), "labels": g["labels"], "boxes": g["boxes"]} if i == 0 else
               {"scores": torch.tensor([0.7]), "labels": g["labels"], "boxes": g["boxes"]} for i, g in enumerate(gt)]
    m = coco_metrics(gt, perfect, [1, 2])
    assert m == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0})
    # the second image's box shifted to IoU 0.6: found at IoU 0.5, missed at 0.75
    shifted = [perfect[0], {**perfect[1], "boxes": torch.tensor([[10., 16., 40., 46.]])}]
    m = coco_metrics(gt, shifted, [1, 2])
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] < 0.8 and m["AP"] < 1.0
    wrong_class = [perfect[0], {**perfect[1], "labels": torch.tensor([0])}]
    assert coco_metrics(gt, wrong_class, [1, 2])["AP50"] < 1.0


@pytest.mark.slow
def test_mnist_canvases(shared_data):
    cfg = CanvasConfig(source=f"mnist:{shared_data / 'mnist'}", size=64, min_scale=20, max_scale=28)
    ds = make_canvases(cfg, 4, seed=0, split="val")
    assert ds.images.shape == (4, 1, 64, 64) and all(len(b) >= 1 for b in ds.boxes)
    # an MNIST digit fills more of its square than an 8x8 scikit-learn digit: boxes are still tight
    img, box = ds.images[0, 0], ds.boxes[0]
    cx, cy, w, h = (box[0] * 64).tolist()
    inside = img[round(cy - h / 2):round(cy + h / 2), round(cx - w / 2):round(cx + w / 2)] > 0
    assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
