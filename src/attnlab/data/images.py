"""Image-classification datasets, read from local files only (nothing is downloaded).

A dataset is named by a spec string:

``digits``
    scikit-learn's bundled 8x8 digits (1,797 images, 16 grey levels; read from the CSV inside
    the scikit-learn wheel, so no data files are needed). Split 80/20 per class with a fixed
    seed: 1,437 training and 360 test images.
``mnist[:DIR]``
    the IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally ``.gz``) in DIR,
    ``DIR/MNIST/raw`` or ``DIR/raw``; DIR defaults to ``$ATTNLAB_DATA/mnist``.
``cifar10[:DIR]``
    either the JPEG archives ``*train*.tar.gz`` / ``*test*.tar.gz`` of
    ``{train,test}/<class>/*.jpg`` (decoded once, then cached as ``.npz`` in
    ``$ATTNLAB_CACHE``, default ``~/.cache/attnlab``), or the official python batches
    ``data_batch_1..5``/``test_batch`` (in DIR, ``DIR/cifar-10-batches-py`` or the
    ``cifar-10-python.tar.gz`` archive), read with a restricted unpickler that only rebuilds
    numpy arrays and plain containers (never code). DIR defaults to ``$ATTNLAB_DATA/cifar10``.
``folder:DIR``
    one sub-folder per class holding any images Pillow reads; ``DIR/train`` and ``DIR/test``
    (or ``DIR/val``) sub-folders give the split, otherwise 20% of each class is held out with a
    fixed seed. Images are resized to the model's size and read as the model's channels:
    greyscale images are repeated into RGB for colour models, while colour images for a
    greyscale model are refused.

Images are kept in memory as uint8 tensors (N, C, H, W); labels int64 (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.errors import DataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, idx: torch.Tensor) -> ImageDataset:
        return ImageDataset(self.images[idx], self.labels[idx], self.classes)


@dataclass
class ImageSplits:
    """A dataset's training and test sets."""

    name: str  # digits, mnist, cifar10, folder
    spec: str
    train: ImageDataset
    test: ImageDataset
    notes: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def data_root() -> Path:
    """``$ATTNLAB_DATA``, default ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("ATTNLAB_DATA", "../shared/data"))


def cache_dir() -> Path:
    if os.environ.get("ATTNLAB_CACHE"):
        return Path(os.environ["ATTNLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "attnlab"


DATASETS = ("digits", "mnist", "cifar10", "folder")


def parse_spec(spec: str) -> tuple[str, Path | None]:
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in DATASETS:
        raise DataError(f"unknown dataset {spec!r}; use digits, mnist[:DIR], cifar10[:DIR] or folder:DIR")
    if name == "digits":
        if arg:
            raise DataError("the digits dataset is built in and takes no directory (use folder:DIR for your own images)")
        return name, None
    if name == "folder" and not arg:
        raise DataError("folder needs a directory: folder:DIR with one sub-folder of images per class")
    return name, Path(arg).expanduser() if arg else data_root() / name


def load(spec: str, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
         progress: bool = True) -> ImageSplits:
    """Load the dataset named by ``spec`` (see the module docstring).

    ``image_size`` resizes every image (required to build a folder dataset of mixed sizes);
    ``channels`` picks greyscale (1) or RGB (3) for folder datasets; ``progress`` shows a bar
    while decoding many images (on a terminal only).
    """
    name, path = parse_spec(spec)
    if path is not None:
        _check_dir(path, spec)
    if name == "digits":
        splits = load_digits()
    elif name == "mnist":
        splits = load_mnist(path)
    elif name == "cifar10":
        splits = load_cifar10(path, progress)
    else:
        splits = load_folder(path, image_size=image_size, channels=channels)
    splits.spec = spec
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        splits.train = resize(splits.train, size)
        splits.test = resize(splits.test, size)
    return splits


def _check_dir(path: Path, spec: str) -> None:
    if not path.exists():
        hint = " (set ATTNLAB_DATA or pass NAME:DIR)" if ":" not in spec else ""
        raise DataError(f"data directory {path} does not exist{hint}")
    if not path.is_dir():
        raise DataError(f"{path} is not a directory")
    if not any(path.iterdir()):
        raise DataError(f"data directory {path} is empty")


def resize(ds: ImageDataset, size: tuple[int, int]) -> ImageDataset:
    """Resize (antialiased bilinear) when the size differs."""
    if ds.size == tuple(size):
        return ds
    out = []
    for chunk in ds.images.split(4096):
        x = F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return ImageDataset(torch.cat(out), ds.labels, ds.classes)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices, held-out indices): ``fraction`` of each class held out, chosen with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


# --- digits -------------------------------------------------------------------------------------

def load_digits() -> ImageSplits:
    """scikit-learn's 8x8 digits; 0..16 grey levels scaled to 0..255."""
    arr = None
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        csv = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():  # read the bundled file directly: importing sklearn.datasets takes seconds
            arr = np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.float32)
    if arr is None:
        try:
            from sklearn.datasets import load_digits as skl
        except ImportError as e:
            raise DataError("the digits dataset comes with scikit-learn, which is not installed "
                            "(pip install scikit-learn)") from e
        d = skl()
        arr = np.concatenate([d.data, d.target[:, None]], axis=1).astype(np.float32)
    images = torch.from_numpy(np.round(arr[:, :64] * (255.0 / 16.0))).to(torch.uint8).view(-1, 1, 8, 8)
    labels = torch.from_numpy(arr[:, 64].astype(np.int64))
    full = ImageDataset(images, labels, [str(i) for i in range(10)])
    tr, te = stratified_split(labels, 0.2, seed=0)
    return ImageSplits("digits", "digits", full.subset(tr), full.subset(te),
                       notes={"source": "scikit-learn's bundled UCI 8x8 digits", "split": "80/20 per class, seed 0"})


# --- MNIST --------------------------------------------------------------------------------------

def _find(path: Path, stem: str) -> Path | None:
    for d in (path, path / "MNIST" / "raw", path / "raw"):
        for suffix in ("", ".gz"):
            p = d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _read_maybe_gz(p: Path) -> bytes:
    try:
        raw = p.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{p}: cannot read ({e}); the file is corrupt or truncated") from e


def read_idx(p: Path, magic: int, dims: int) -> np.ndarray:
    """An IDX file (unsigned bytes) after checking its magic number and its length."""
    data = _read_maybe_gz(p)
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{p}: too short for an IDX header ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{p}: wrong IDX magic number {got} (expected {magic}); is it the right file?")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    n = int(np.prod(shape))
    if len(data) - header != n:
        raise DataError(f"{p}: header says {'x'.join(map(str, shape))} = {n} bytes of data but the file has "
                        f"{len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_mnist(path: Path) -> ImageSplits:
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ip, lp = _find(path, f"{prefix}-images-idx3-ubyte"), _find(path, f"{prefix}-labels-idx1-ubyte")
        if ip is None or lp is None:
            missing = f"{prefix}-images-idx3-ubyte" if ip is None else f"{prefix}-labels-idx1-ubyte"
            raise DataError(f"{path} has no MNIST file {missing}[.gz]")
        x = read_idx(ip, 2051, 3)
        y = read_idx(lp, 2049, 1)
        if len(x) != len(y):
            raise DataError(f"{ip.name} has {len(x)} images but {lp.name} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{ip} holds no images")
        if y.max() > 9:
            raise DataError(f"{lp}: label {int(y.max())} is not a digit")
        parts[split] = ImageDataset(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)),
                                    [str(i) for i in range(10)])
    return ImageSplits("mnist", f"mnist:{path}", parts["train"], parts["test"], notes={"source": str(path)})


# --- CIFAR-10 -----------------------------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers only; refuses any other global (functions,
    classes), so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _codecs_encode,
        }
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _np_reconstruct()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    import codecs

    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError("refusing an unusual _codecs.encode call")
    return codecs.encode(obj, encoding, errors)


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def safe_unpickle(data: bytes, source: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{source}: not a CIFAR-10 python batch ({e})") from e


def _cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(data, source)
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a CIFAR-10 python batch (a {type(d).__name__}, not a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    x, y = d.get("data"), d.get("labels")
    if not isinstance(x, np.ndarray) or y is None:
        raise DataError(f"{source}: not a CIFAR-10 python batch (no data/labels)")
    y = np.asarray(y, dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise DataError(f"{source}: expected uint8 data of shape (N, 3072) and N labels, got {x.dtype} {x.shape} and {len(y)}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{source}: labels outside 0..9")
    return x.reshape(-1, 3, 32, 32), y


def _load_cifar_batches(files: dict[str, bytes], where: str) -> ImageSplits:
    tr = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in tr + ["test_batch"] if n not in files]
    if missing:
        raise DataError(f"{where}: missing CIFAR-10 python batch(es) {', '.join(missing)}")
    xs, ys = zip(*[_cifar_batch(files[n], f"{where}/{n}") for n in tr])
    xt, yt = _cifar_batch(files["test_batch"], f"{where}/test_batch")
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in files:
        meta = safe_unpickle(files["batches.meta"], f"{where}/batches.meta")
        names = meta.get(b"label_names") if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    mk = lambda x, y: ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), classes)  # noqa: E731
    return ImageSplits("cifar10", f"cifar10:{where}", mk(np.concatenate(xs), np.concatenate(ys)), mk(xt, yt),
                       notes={"source": f"{where} (python batches)"})


def load_cifar10(path: Path, progress: bool = False) -> ImageSplits:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for d in (path, path / "cifar-10-batches-py"):
        if (d / "data_batch_1").is_file():
            return _load_cifar_batches({n: (d / n).read_bytes() for n in names if (d / n).is_file()}, str(d))
    arch = path / "cifar-10-python.tar.gz"
    if arch.is_file():
        files = {}
        try:
            with tarfile.open(arch) as tf:
                for m in tf.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names:
                        files[base] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{arch}: cannot read the archive ({e})") from e
        return _load_cifar_batches(files, str(arch))
    archives = sorted(path.glob("*.tar.gz")) + sorted(path.glob("*.tgz"))
    train = [a for a in archives if "train" in a.name]
    test = [a for a in archives if "test" in a.name]
    if not train or not test:
        raise DataError(f"{path} holds neither the CIFAR-10 JPEG archives (*train*.tar.gz and *test*.tar.gz) "
                        "nor the python batches (data_batch_1..5, test_batch)")
    tr = _cached_jpeg_archive(train[0], progress=progress)
    te = _cached_jpeg_archive(test[0], classes=tr.classes, progress=progress)
    return ImageSplits("cifar10", f"cifar10:{path}", tr, te,
                       notes={"source": f"{train[0].name}, {test[0].name} (JPEG q75 copies: lossy)"})


def _cached_jpeg_archive(arch: Path, classes: list[str] | None = None, progress: bool = False) -> ImageDataset:
    st = arch.stat()
    key = hashlib.sha256(f"{arch.resolve()}|{st.st_size}|{st.st_mtime_ns}|v1".encode()).hexdigest()[:16]
    cache = cache_dir() / f"{arch.name.split('.')[0]}-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                ds = ImageDataset(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), [str(c) for c in z["classes"]])
            if classes is None or ds.classes == classes:
                return ds
        except (OSError, ValueError, KeyError, zlib.error):
            pass  # a bad cache is rebuilt
    ds = read_image_archive(arch, classes, progress=progress)
    try:
        from attnlab.io import atomic_write

        with atomic_write(cache, "wb") as f:
            np.savez(f, images=ds.images.numpy(), labels=ds.labels.numpy(), classes=np.array(ds.classes))
    except OSError:
        pass  # no writable cache: decode again next time
    return ds


def read_image_archive(arch: Path, classes: list[str] | None = None, progress: bool = False) -> ImageDataset:
    """A tar archive of ``<split>/<class>/<image>``; the label is the class folder's name."""
    from PIL import Image

    items: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(arch) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = m.name.strip("/").split("/")
                if len(parts) < 2 or Path(parts[-1]).suffix.lower() not in IMAGE_EXTS:
                    continue
                items.append((parts[-2], tf.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{arch}: cannot read the archive ({e})") from e
    if not items:
        raise DataError(f"{arch} contains no images")
    classes = classes or sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    xs, ys = [], []
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"decoding {arch.name} (once; then cached)", unit="img", disable=None, leave=False)
    for c, data in items:
        if c not in index:
            raise DataError(f"{arch}: class folder {c!r} is not one of the training classes")
        try:
            with Image.open(io.BytesIO(data)) as im:
                xs.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{arch}: an image of class {c!r} is corrupt ({e})") from e
        ys.append(index[c])
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise DataError(f"{arch}: images of different sizes {sorted(shapes)[:3]}")
    images = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(images, torch.tensor(ys, dtype=torch.int64), list(classes))


# --- folders of images --------------------------------------------------------------------------

def to_mode(im, channels: int | None):
    """A Pillow image as 'L' (1 channel) or 'RGB' (3), alpha composited on white."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        from PIL import Image

        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    if channels is None:
        channels = 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
    return im.convert("L" if channels == 1 else "RGB")


def image_channels(im) -> int:
    """Channels of a Pillow image once alpha is dropped: 1 (greyscale) or 3 (colour)."""
    if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return 1
    if im.mode == "P":
        pal = im.convert("RGB")
        arr = np.asarray(pal)
        return 1 if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all() else 3
    return 3


def open_image(path: str | Path):
    """Open and fully decode an image; a corrupt or truncated file raises DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason}; is it corrupt or truncated?") from e


def image_to_tensor(im, size: tuple[int, int] | None, channels: int) -> torch.Tensor:
    """uint8 (C, H, W): alpha composited on white (:func:`to_mode`), then resized to ``size``
    (H, W) with Pillow's antialiased bilinear filter, the one the training data is resized with
    (:func:`resize`), so a trained model reads a file as it read its training images."""
    from PIL import Image

    im = to_mode(im, channels)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=None)
    arr = np.array(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_images(root: Path) -> dict[str, list[Path]]:
    out = {}
    for d in _class_dirs(root):
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
        out[d.name] = files
    return out


def load_folder(path: Path, image_size=None, channels: int | None = None) -> ImageSplits:
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        train_files, test_files = _list_images(path / "train"), _list_images(test_dir)
    else:
        train_files, test_files = _list_images(path), None
    train_files = {c: f for c, f in train_files.items() if f}
    if not train_files:
        raise DataError(f"{path} has no class sub-folders with images (expected {path}/<class>/<image>)")
    classes = sorted(train_files)
    if len(classes) < 2:
        raise DataError(f"folder dataset {path} has only one class ({classes[0]!r}); a classifier needs at least two "
                        "sub-folders, one per class")
    if test_files is not None:
        extra = sorted(set(test_files) - set(classes))
        if extra:
            raise DataError(f"{test_dir} has class folder(s) {', '.join(extra)} that {path / 'train'} does not have")
    if image_size is None:
        raise DataError("a folder dataset needs an image size (the model's)")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    all_files = [p for files in (train_files, test_files or {}) for fs in files.values() for p in fs]
    opened = {}
    for p in all_files:
        opened[p] = open_image(p)
    colour = next((p for p, im in opened.items() if image_channels(im) == 3), None)
    if channels is None:
        channels = 1 if colour is None else 3
    elif channels == 1 and colour is not None:
        raise DataError(f"{colour} is a colour (3-channel) image but the model takes greyscale (1-channel) images; "
                        "convert the folder to greyscale or choose a model for RGB images")

    def build(files: dict[str, list[Path]]) -> ImageDataset:
        xs, ys = [], []
        for c, fs in files.items():
            for p in fs:
                xs.append(image_to_tensor(opened[p], size, channels))
                ys.append(classes.index(c))
        if not xs:
            return ImageDataset(torch.zeros(0, channels, *size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), classes)
        return ImageDataset(torch.stack(xs), torch.tensor(ys), classes)

    train = build(train_files)
    if test_files is not None:
        test = build(test_files)
        notes = {"split": f"{path / 'train'} / {test_dir}"}
    else:
        tr, te = stratified_split(train.labels, 0.2, seed=0)
        train, test = train.subset(tr), train.subset(te)
        notes = {"split": "20% of each class held out, seed 0"}
    if len(test) == 0:
        raise DataError(f"folder dataset {path}: no test images (add more images per class or a test/ folder)")
    return ImageSplits("folder", f"folder:{path}", train, test, notes=notes)


def model_image_size(model) -> tuple[int, int]:
    """(H, W) of the images ``model`` reads (its config's ``img_size``)."""
    s = model.cfg.img_size
    return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def read_model_images(paths: list[str], model, convert: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W): image files as ``model`` reads them, at its size and channels; the one
    path from a user's image file to a model (predict, viz attention, viz explore). Normalise
    with :func:`attnlab.data.transforms.choose_normalization`."""
    return read_images(paths, model_image_size(model), int(model.cfg.in_chans), convert)


def read_images(paths: list[str], size: tuple[int, int] | None, in_chans: int, convert: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) from image files (:func:`image_to_tensor`; ``size`` None keeps each
    file's own). A colour image for a greyscale model is refused unless ``convert`` (greyscale
    images are repeated into RGB for colour models)."""
    xs = []
    for p in paths:
        im = open_image(p)
        ch = image_channels(im)
        if ch == 3 and in_chans == 1 and not convert:
            rgb = im.convert("RGB")
            a = np.asarray(rgb)
            if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
                raise DataError(f"{p} is a colour (3-channel) image but the model takes greyscale (1-channel) images; "
                                "pass --convert to convert it to greyscale")
        if in_chans not in (1, 3):
            raise DataError(f"the model takes {in_chans}-channel images; only 1 and 3 are supported from image files")
        xs.append(image_to_tensor(im, size, in_chans))
    return torch.stack(xs)
