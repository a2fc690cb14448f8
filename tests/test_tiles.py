"""Tiles of large photographs (attnlab.detect.tiles): windows cover the image, a tile's boxes are
clipped to it by the visible-fraction rule, and merging the tiles' detections recovers every
object once, including those cut by a tile border."""

import pytest
import torch
from torchvision.ops import masks_to_boxes

from attnlab.detect.scene import Scene
from attnlab.detect.tiles import merge_detections, predict_tiled, tile_scene, tile_starts, tile_windows, visible_fraction
from attnlab.errors import ConfigError, ShapeError


@pytest.mark.parametrize("length, size, overlap, starts", [
    (1000, 400, 100, [0, 300, 600]),
    (1001, 400, 100, [0, 300, 600, 601]),
    (400, 400, 0, [0]),
    (300, 400, 50, [0]),
    (401, 400, 0, [0, 1]),
])
def test_tile_starts(length, size, overlap, starts):
    assert tile_starts(length, size, overlap) == starts


def test_tile_starts_refuses_an_overlap_as_large_as_the_tile():
    with pytest.raises(ConfigError, match="0 <= overlap < size"):
        tile_starts(1000, 400, 400)


@pytest.mark.parametrize("height, width, size, overlap", [(1035, 1249, 400, 100), (2472, 2299, 512, 64), (90, 700, 128, 30),
                                                          (37, 41, 64, 8)])
def test_windows_cover_the_image_flush_and_overlap(height, width, size, overlap):
    win = tile_windows(height, width, size, overlap)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for x0, y0, x1, y1 in win.tolist():
        covered[y0:y1, x0:x1] += 1
    assert (covered >= 1).all()
    assert len({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in win.tolist()}) == 1  # one size: the tiles stack
    assert win[:, 2].max() == width and win[:, 3].max() == height and win[:, :2].min() == 0  # the last ones flush
    for length in (height, width):
        starts, side = tile_starts(length, size, overlap), min(size, length)
        assert all(a + side - b >= overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap by >= O


def test_visible_fraction():
    boxes = torch.tensor([[0., 0., 10., 10.], [5., 5., 15., 15.], [20., 20., 30., 30.], [3., 3., 3., 8.]])
    torch.testing.assert_close(visible_fraction(boxes, torch.tensor([0, 0, 10, 10])), torch.tensor([1.0, 0.25, 0.0, 0.0]))


def test_tile_boxes_are_clipped_in_tile_coordinates_and_slivers_dropped():
    image = torch.arange(3 * 100 * 140, dtype=torch.int64).view(3, 100, 140).to(torch.uint8)
    boxes = torch.tensor([[10., 10., 30., 30.],  # tile 0 only
                          [70., 20., 90., 40.],  # x 70..90 across tile 0's border at 80: 50% in tile 0, whole in tile 1
                          [76., 50., 96., 70.]])  # 20% in tile 0, whole in tile 1
    scene = Scene(image, torch.tensor([0, 1, 2]), boxes, "photo")
    tiles = tile_scene(scene, size=80, overlap=20, min_visible=0.5)  # windows x 0..80, 60..140; y 0..80, 20..100
    assert [t.origin for t in tiles] == [(0, 0), (60, 0), (0, 20), (60, 20)]
    assert [t.name for t in tiles] == ["photo@0,0", "photo@60,0", "photo@0,20", "photo@60,20"]
    assert torch.equal(tiles[1].image, image[:, 0:80, 60:140])
    assert tiles[0].labels.tolist() == [0, 1]
    torch.testing.assert_close(tiles[0].boxes, torch.tensor([[10., 10., 30., 30.], [70., 20., 80., 40.]]))
    assert tiles[1].labels.tolist() == [1, 2]
    torch.testing.assert_close(tiles[1].boxes, torch.tensor([[10., 20., 30., 40.], [16., 50., 36., 70.]]))
    with pytest.raises(ConfigError, match="min_visible"):
        tile_scene(scene, 80, 20, min_visible=0.0)


def test_crop_outside_the_image_is_refused():
    scene = Scene(torch.zeros(3, 10, 10, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), "x")
    with pytest.raises(ShapeError, match="not inside x"):
        scene.crop([5, 0, 11, 10], torch.zeros(0, dtype=torch.bool))


def perfect_detections(tiles: list[Scene], scores: list[float]) -> list[dict]:
    return [{"scores": torch.full((len(t.labels),), s), "labels": t.labels, "boxes": t.boxes} for t, s in zip(tiles, scores)]


def test_a_box_cut_by_a_tile_border_is_recovered_once():
    # two tiles: x 0..400 and 300..700 (overlap 100, more than any object)
    boxes = torch.tensor([[50., 50., 90., 90.],  # tile 0 only
                          [376., 100., 436., 150.],  # cut by tile 0's border at 400 (40% inside it); whole in tile 1
                          [320., 200., 380., 260.],  # whole in both
                          [600., 300., 650., 350.]])  # tile 1 only
    scene = Scene(torch.zeros(3, 400, 700, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), boxes)
    tiles = tile_scene(scene, 400, 100, min_visible=0.3)
    windows = tile_windows(400, 700, 400, 100)
    assert len(tiles) == 2 and len(tiles[0].boxes) == 3  # the cut box is in tile 0, clipped to 376..400
    dets = perfect_detections(tiles, [0.9, 0.8])  # the cut copy scores higher than the whole one
    merged = merge_detections(dets, windows, iou_threshold=0.3, edge=1.0)
    assert sorted(map(tuple, merged["boxes"].tolist())) == sorted(map(tuple, boxes.tolist()))
    # without the border rule, NMS keeps the higher-scored cut copy in place of the whole box
    nms_only = merge_detections(dets, windows, iou_threshold=0.3)
    assert (376., 100., 400., 150.) in map(tuple, nms_only["boxes"].tolist())
    assert (376., 100., 436., 150.) not in map(tuple, nms_only["boxes"].tolist())
    # and at a higher IoU threshold both copies survive
    assert len(merge_detections(dets, windows, iou_threshold=0.5)["boxes"]) == 5
    # the rule trusts the uncut view: with nothing found in tile 1, the cut copy still goes
    none = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    only0 = merge_detections([dets[0], none], windows, iou_threshold=0.3, edge=1.0)
    assert sorted(map(tuple, only0["boxes"].tolist())) == [(50., 50., 90., 90.), (320., 200., 380., 260.)]


def test_predict_tiled_recovers_every_object_once():
    """A detector that sees exactly the object pixels of each tile (each object painted with its own
    id), so objects cut by a tile border give cut boxes: merged, each object comes back once, exactly."""
    g = torch.Generator().manual_seed(0)
    h, w = 500, 700
    ids = torch.zeros(h, w, dtype=torch.int64)
    truth = []
    while len(truth) < 60:
        bw, bh = (int(v) for v in torch.randint(15, 61, (2,), generator=g))
        x0, y0 = int(torch.randint(0, w - bw + 1, (1,), generator=g)), int(torch.randint(0, h - bh + 1, (1,), generator=g))
        if (ids[max(y0 - 2, 0):y0 + bh + 2, max(x0 - 2, 0):x0 + bw + 2] == 0).all():  # apart from the others
            truth.append([x0, y0, x0 + bw, y0 + bh])
            ids[y0:y0 + bh, x0:x0 + bw] = len(truth)
    image = ids[None].to(torch.int32)  # (1, H, W)

    def detect(tiles):
        out = []
        for t in tiles:
            present = [int(i) for i in t[0].unique() if i > 0]
            masks = torch.stack([t[0] == i for i in present]) if present else torch.zeros(0, *t.shape[-2:], dtype=torch.bool)
            boxes = masks_to_boxes(masks) + torch.tensor([0., 0., 1., 1.])  # pixel edges: x1 past the last pixel
            out.append({"scores": masks.flatten(1).sum(1).float() / 3600, "labels": torch.zeros(len(present), dtype=torch.long),
                        "boxes": boxes})
        return out

    merged = predict_tiled(image, detect, size=200, overlap=64, batch_size=5, iou_threshold=0.5, edge=0.5)
    assert sorted(map(tuple, merged["boxes"].tolist())) == sorted(tuple(map(float, b)) for b in truth)
    cut = predict_tiled(image, detect, size=200, overlap=64, iou_threshold=0.5)
    assert len(cut["boxes"]) > len(truth)  # some objects are cut: without the rule their pieces stay
