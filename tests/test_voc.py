"""The Pascal VOC reader (attnlab.data.voc) against hand-written files: boxes, classes, layouts,
each kind of bad input (one clear line, or a counted skip), the split by region, the detection
set it makes; and the real neon-trees folder when ATTNLAB_DATA holds it."""

import pytest
import torch

from attnlab.data.voc import detection_set, read_voc, split_by_region
from attnlab.detect.scene import Scene
from attnlab.detect.tiles import tile_scene
from attnlab.errors import DataError


def voc_xml(filename: str, objects, size=(40, 30)) -> str:
    """A VOC annotation: objects are (name, xmin, ymin, xmax, ymax); ``size`` (width, height) or None."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return f"<annotation><folder>x</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def write_voc(root, files=None, image_size=(40, 30)):
    """Images and their XML files side by side; default: two images, three boxes of two classes."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    files = files if files is not None else {
        "a": [("tree", 2, 3, 12, 23), ("shrub", 20, 5, 30, 10)],
        "b": [("tree", 0, 0, 40, 30)],
    }
    for i, (stem, objects) in enumerate(files.items()):
        Image.new("RGB", image_size, (i * 50, 10, 20)).save(root / f"{stem}.png")
        (root / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", objects, image_size))
    return root


def test_voc_reader(tmp_path):
    root = write_voc(tmp_path / "voc")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    data = read_voc(f"voc:{root}")
    assert data.classes == ["shrub", "tree"] and data.category_ids == [1, 2]
    assert [s.name for s in data.scenes] == ["a.png", "b.png"]
    a, b = data.scenes
    assert a.image.shape == (3, 30, 40) and a.image.dtype == torch.uint8 and a.image[:, 0, 0].tolist() == [0, 10, 20]
    assert a.labels.tolist() == [1, 0] and b.labels.tolist() == [1]
    torch.testing.assert_close(a.boxes, torch.tensor([[2., 3., 12., 23.], [20., 5., 30., 10.]]))  # as written
    torch.testing.assert_close(b.boxes, torch.tensor([[0., 0., 40., 30.]]))
    assert data.counts == {"files": 2, "boxes": 3, "clipped": 0, "outside": 0, "zero_area": 0, "without_objects": 0}
    assert data.describe() == "2 images, 3 boxes of 2 classes"
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # read only: nothing written or changed
    # one file, and the classes of a training run (their order, not the file's)
    one = read_voc(f"voc:{root / 'b.xml'}", classes=["tree", "shrub"])
    assert len(one.scenes) == 1 and one.scenes[0].labels.tolist() == [0]


def test_voc_devkit_layout(tmp_path):
    root = tmp_path / "VOC2007"
    write_voc(root / "JPEGImages")
    (root / "Annotations").mkdir()
    for p in (root / "JPEGImages").glob("*.xml"):
        p.rename(root / "Annotations" / p.name)
    data = read_voc(f"voc:{root}")
    assert [s.name for s in data.scenes] == ["a.png", "b.png"] and data.counts["boxes"] == 3


def test_boxes_outside_or_of_zero_area_are_counted(tmp_path):
    root = write_voc(tmp_path / "voc", {
        "a": [("tree", -5, 3, 12, 35),  # partly outside: clipped to 0, 3, 12, 30
              ("tree", 41, 0, 50, 10),  # wholly outside (the image is 40 wide): skipped
              ("tree", 5, 5, 5, 20),  # zero width: skipped
              ("tree", 5, 9, 15, 8),  # ymax < ymin: skipped
              ("tree", 1, 1, 4, 4)],
        "empty": [],  # background only: kept
    })
    data = read_voc(f"voc:{root}")
    a, empty = data.scenes
    torch.testing.assert_close(a.boxes, torch.tensor([[0., 3., 12., 30.], [1., 1., 4., 4.]]))
    assert len(empty.boxes) == 0 and empty.boxes.shape == (0, 4) and empty.image.shape == (3, 30, 40)
    assert data.counts == {"files": 2, "boxes": 2, "clipped": 1, "outside": 1, "zero_area": 2, "without_objects": 1}
    assert data.describe() == ("2 images, 2 boxes of 1 classes (1 clipped to their image; 1 outside their image skipped; "
                               "2 of zero area skipped; 1 images without objects kept)")


def _replace(name, old, new):
    return lambda root: (root / name).write_text((root / name).read_text().replace(old, new))


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "a.png").unlink(), r"a.xml: its image .*a.png does not exist"),
    (lambda root: (root / "a.png").write_text("not a picture"), r"cannot read image .*a.png"),
    (lambda root: (root / "a.xml").write_text(""), r"a.xml is empty"),
    (lambda root: (root / "a.xml").write_text("<annotation><filename>a.png</filename>"), r"a.xml: malformed XML"),
    (lambda root: (root / "a.xml").write_text('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>'), r"a.xml has a DTD"),
    (lambda root: (root / "a.xml").write_text("<root/>"), r"the root element is <root>"),
    (_replace("a.xml", "<filename>a.png</filename>", ""), r"a.xml has no <filename>"),
    (_replace("a.xml", "<width>40</width>", "<width>41</width>"), r"a.png is 40x30 but <size> says 41x30"),
    (_replace("a.xml", "<width>40</width>", "<width>forty</width>"), r"<size> has width 'forty'"),
    (_replace("a.xml", "<xmax>12</xmax>", "<xmax>twelve</xmax>"), r"a.xml: object 1 \(tree\) has <xmax> 'twelve'"),
    (_replace("a.xml", "<xmax>12</xmax>", "<xmax>nan</xmax>"), r"object 1 \(tree\) has <xmax> 'nan'"),
    (_replace("a.xml", "<xmax>12</xmax>", ""), r"object 1 \(tree\) has <xmax> None"),
    (_replace("a.xml", "<name>shrub</name>", ""), r"a.xml: object 2 has no <name>"),
    (_replace("b.xml", "<filename>b.png</filename>", "<filename>a.png</filename>"), r"b.xml and .*a.xml both name the image"),
    (lambda root: [p.unlink() for p in root.glob("*.xml")], r"holds no .xml annotation files"),
])
def test_voc_refusals_one_line(tmp_path, change, message):
    root = write_voc(tmp_path / "voc")
    change(root)
    with pytest.raises(DataError, match=message) as e:
        read_voc(f"voc:{root}")
    assert "\n" not in str(e.value)


def test_voc_spec_and_classes_refusals(tmp_path):
    root = write_voc(tmp_path / "voc")
    with pytest.raises(DataError, match="write voc:DIR"):
        read_voc(str(root))
    with pytest.raises(DataError, match="does not exist"):
        read_voc(f"voc:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="object 2 is a 'shrub', not one of the classes tree"):
        read_voc(f"voc:{root}", classes=["tree"])


def test_split_by_region_assigns_boxes_by_centre_and_clips():
    image = torch.arange(100, dtype=torch.uint8).repeat(3, 50, 1)  # (3, 50, 100), pixel value = column
    boxes = torch.tensor([[10., 5., 30., 25.],  # left
                          [60., 5., 90., 25.],  # centre 75 < 80: training, clipped at the cut
                          [75., 30., 95., 45.],  # centre 85: validation, clipped at the cut
                          [85., 5., 99., 20.]])  # right
    train, val = split_by_region(Scene(image, torch.arange(4), boxes, "photo"), 0.2)  # cut at column 80
    assert train.size == (50, 80) and val.size == (50, 20) and val.origin == (80, 0) and val.image[0, 0, 0] == 80
    assert train.labels.tolist() == [0, 1] and val.labels.tolist() == [2, 3]
    torch.testing.assert_close(train.boxes, torch.tensor([[10., 5., 30., 25.], [60., 5., 80., 25.]]))
    torch.testing.assert_close(val.boxes, torch.tensor([[0., 30., 15., 45.], [5., 5., 19., 20.]]))
    for fraction in (0.0, 1.0, 0.001):
        with pytest.raises(DataError, match="validation strip"):
            split_by_region(Scene(image, torch.arange(4), boxes, "photo"), fraction)


def test_detection_set_from_scenes(tmp_path):
    data = read_voc(f"voc:{write_voc(tmp_path / 'voc')}")
    ds = detection_set(data.scenes, 32)  # squashed to a square, as the COCO reader does
    assert ds.images.shape == (2, 3, 32, 32) and ds.sizes == [(30, 40), (30, 40)] and ds.names == ["a.png", "b.png"]
    torch.testing.assert_close(ds.boxes[0], torch.tensor([[7 / 40, 13 / 30, 10 / 40, 20 / 30], [25 / 40, 7.5 / 30, 10 / 40,
                                                                                                 5 / 30]]))
    assert [lb.tolist() for lb in ds.labels] == [[1, 0], [1]]
    tiles = tile_scene(data.scenes[0], 20, 4)  # tiles of one size stack as they are
    ts = detection_set(tiles)
    assert ts.images.shape == (len(tiles), 3, 20, 20) and ts.sizes == [(20, 20)] * len(tiles)
    mixed = detection_set([data.scenes[0], tiles[0]], multiple=8)  # other sizes: padded at the right and bottom
    assert mixed.images.shape == (2, 3, 32, 40) and mixed.sizes == [(30, 40), (20, 20)]
    assert torch.equal(mixed.images[1, :, :20, :20], tiles[0].image) and not mixed.images[1, :, 20:].any()
    assert not mixed.images[1, :, :, 20:].any() and not mixed.images[0, :, 30:].any()


NEON = {"2019_YELL_2_528000_4978000_image_crop2": (574, (2472, 2299)),  # boxes, (height, width): the data README
        "2019_YELL_2_541000_4977000_image_crop": (279, (1035, 1249))}


def test_neon_trees(shared_data):
    root = shared_data / "neon-trees"
    if not root.is_dir():
        pytest.skip(f"{root} not found: ATTNLAB_DATA holds no neon-trees folder")
    data = read_voc(f"voc:{root}")
    assert data.classes == ["Tree"]
    assert data.counts == {"files": 2, "boxes": 853, "clipped": 0, "outside": 0, "zero_area": 0, "without_objects": 0}
    for stem, (boxes, size) in NEON.items():
        (scene,) = [s for s in data.scenes if s.name == f"{stem}.jpg"]
        assert len(scene.boxes) == boxes and scene.size == size and scene.image.shape[0] == 3
    train = next(s for s in data.scenes if s.name.startswith("2019_YELL_2_528000"))
    fit, val = split_by_region(train, 0.2)
    assert len(fit.boxes) + len(val.boxes) == 574 and len(val.boxes) > 50
    # tiles overlapping by more than the largest crown (108 px) see every crown whole at least once
    side = (train.boxes[:, 2:] - train.boxes[:, :2]).max()
    assert side <= 120
    tiles = tile_scene(train, 400, 120, min_visible=1.0)
    seen = torch.cat([t.boxes + torch.tensor(t.origin * 2, dtype=torch.float32) for t in tiles])
    assert {tuple(b) for b in seen.tolist()} == {tuple(b) for b in train.boxes.tolist()}
