"""Image datasets from local files: digits, MNIST IDX, CIFAR-10 (python batches with a
restricted unpickler, JPEG archives with a cache), folders; augmentation and normalisation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data import images as D
from attnlab.errors import DataError
from attnlab.tasks.image import Augment, Normalize, channel_stats

DATA = Path(os.environ.get("ATTNLAB_DATA", "../shared/data"))


def test_digits_split_is_fixed_and_stratified():
    s = D.load("digits")
    assert s.train.images.shape == (1438, 1, 8, 8) and s.test.images.shape == (359, 1, 8, 8)
    assert s.train.images.dtype == torch.uint8 and int(s.train.images.max()) == 255
    assert s.classes == [str(i) for i in range(10)]
    counts = torch.bincount(s.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert torch.equal(D.load("digits").test.labels, s.test.labels)
    big = D.load("digits", image_size=16)
    assert big.train.images.shape[-2:] == (16, 16)


def write_idx(path: Path, magic: int, arr: np.ndarray, gz: bool = True, truncate: int = 0) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if truncate:
        data = data[:-truncate]
    path = path.with_name(path.name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_mnist(d: Path, n=20, gz=True, **bad) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(d / f"{prefix}-images-idx3-ubyte", bad.get("magic", 2051), rng.integers(0, 256, (n, 28, 28)), gz,
                  bad.get("truncate", 0) if prefix == "train" else 0)
        write_idx(d / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n) % 10, gz)
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    s = D.load(f"mnist:{fake_mnist(tmp_path / 'm', gz=gz)}")
    assert s.train.images.shape == (20, 1, 28, 28) and s.test.labels.tolist() == [i % 10 for i in range(20)]


def test_mnist_bad_files(tmp_path):
    with pytest.raises(DataError, match="wrong IDX magic number 2049"):
        D.load(f"mnist:{fake_mnist(tmp_path / 'a', magic=2049)}")
    with pytest.raises(DataError, match="truncated"):
        D.load(f"mnist:{fake_mnist(tmp_path / 'b', truncate=100)}")
    d = fake_mnist(tmp_path / "c")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no MNIST file t10k-labels"):
        D.load(f"mnist:{d}")
    d = fake_mnist(tmp_path / "e")
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00" * 50)[:-8])
    with pytest.raises(DataError, match="corrupt or truncated|too short"):
        D.load(f"mnist:{d}")


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        D.load(f"mnist:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        D.load(f"cifar10:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="unknown dataset"):
        D.load("imagenet")


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="no MNIST copy in ATTNLAB_DATA")
def test_real_mnist():
    s = D.load("mnist")
    assert s.train.images.shape == (60000, 1, 28, 28) and s.test.images.shape == (10000, 1, 28, 28)
    mean, std = channel_stats(s.train.images)
    assert mean[0] == pytest.approx(0.1307, abs=1e-3) and std[0] == pytest.approx(0.3081, abs=1e-3)


# --- CIFAR-10 -----------------------------------------------------------------------------------

def fake_cifar_batches(d: Path, n=10) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"labels": [int(v) for v in np.arange(n) % 10],
                 b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"f"] * n}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in D.CIFAR10_CLASSES]}, protocol=2))
    return d


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/attnlab-pwned",))


def test_cifar_python_batches(tmp_path):
    s = D.load(f"cifar10:{fake_cifar_batches(tmp_path / 'c')}")
    assert s.train.images.shape == (50, 3, 32, 32) and s.test.images.shape == (10, 3, 32, 32)
    assert s.classes[0] == "airplane"
    raw = pickle.loads((tmp_path / "c" / "test_batch").read_bytes(), encoding="bytes")
    assert np.array_equal(s.test.images[3].numpy().reshape(-1), raw[b"data"][3])


def test_cifar_batches_never_run_code(tmp_path):
    d = fake_cifar_batches(tmp_path / "c")
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load posix.system|refusing to load os.system"):
        D.load(f"cifar10:{d}")
    assert not Path("/tmp/attnlab-pwned").exists()


def fake_jpeg_archives(d: Path, per_class=3) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        with tarfile.open(d / f"cifar10-jpg-{split}.tar.gz", "w:gz") as tf:
            for c in ("cat", "dog"):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
    return d


def test_cifar_jpeg_archives_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    d = fake_jpeg_archives(tmp_path / "j")
    a = D.load(f"cifar10:{d}")
    assert a.train.images.shape == (6, 3, 32, 32) and a.classes == ["cat", "dog"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    monkeypatch.setattr(D, "read_image_archive", lambda *a, **k: pytest.fail("decoded again instead of using the cache"))
    b = D.load(f"cifar10:{d}")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)


@pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason="no CIFAR-10 copy in ATTNLAB_DATA")
def test_real_cifar10_archive_layout():
    arch = next((DATA / "cifar10").glob("*test*.tar.gz"))
    with tarfile.open(arch) as tf:
        names = [m.name for m in tf if m.isfile()]
    assert len(names) == 10000 and sorted({n.split("/")[1] for n in names}) == D.CIFAR10_CLASSES


# --- folders ------------------------------------------------------------------------------------

def make_folder(root: Path, classes=("a", "b"), n=5, mode="RGB", size=(20, 12)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
            Image.fromarray(arr).convert(mode).save(root / c / f"{i}.png")
    return root


def test_folder_dataset(tmp_path):
    root = make_folder(tmp_path / "f", n=5)
    Image.new("L", (7, 9), 128).save(root / "a" / "grey.png")  # mixed sizes and modes
    s = D.load(f"folder:{root}", image_size=16)
    assert s.classes == ["a", "b"] and s.train.images.shape[1:] == (3, 16, 16)
    assert len(s.train) + len(s.test) == 11 and len(s.test) == 2
    g = D.load(f"folder:{make_folder(tmp_path / 'g', mode='L')}", image_size=8)
    assert g.train.channels == 1
    assert D.load(f"folder:{tmp_path / 'g'}", image_size=8, channels=3).train.channels == 3
    with pytest.raises(DataError, match="colour .* image but the model takes greyscale"):
        D.load(f"folder:{root}", image_size=8, channels=1)


def test_folder_with_split_subfolders(tmp_path):
    make_folder(tmp_path / "s" / "train", n=3)
    make_folder(tmp_path / "s" / "test", n=2)
    s = D.load(f"folder:{tmp_path / 's'}", image_size=8)
    assert len(s.train) == 6 and len(s.test) == 4


def test_folder_bad_input(tmp_path):
    with pytest.raises(DataError, match="only one class"):
        D.load(f"folder:{make_folder(tmp_path / 'one', classes=('only',))}", image_size=8)
    root = make_folder(tmp_path / "bad")
    data = (root / "a" / "0.png").read_bytes()
    (root / "a" / "0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image \S*0\.png: .*corrupt or truncated"):
        D.load(f"folder:{root}", image_size=8)
    (tmp_path / "nocls").mkdir()
    (tmp_path / "nocls" / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="no class sub-folders"):
        D.load(f"folder:{tmp_path / 'nocls'}", image_size=8)
    with pytest.raises(DataError, match="folder needs a directory"):
        D.load("folder")


# --- augmentation and normalisation ---------------------------------------------------------------

def test_augment_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    aug = Augment(padding=1, flip=True)
    prm = {"dy": torch.tensor([1, 0]), "dx": torch.tensor([1, 2]), "flip": torch.tensor([False, True])}
    y = aug.apply(x, prm)
    assert torch.equal(y[0], x[0])  # offset (1, 1) with padding 1 is the identity
    shifted = torch.zeros(4, 4, dtype=torch.uint8)  # up by one row padded, left by one column
    shifted[1:, :3] = x[1, 0, :3, 1:]
    assert torch.equal(y[1, 0], shifted.flip(-1))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(aug.params(8, g1).values(), aug.params(8, g2).values()))
    assert not Augment()


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(x)
    y = Normalize(mean, std)(x)
    ref = (x.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
