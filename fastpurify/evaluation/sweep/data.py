"""Data for sweeps, read from files the user already has (nothing is downloaded).

A sample id is the index of the image in the full split (never a position in a shard or a subset):
  digits    the embedded split (`fastpurify.zoo.embedded.load_split`): index in that split;
  cifar10   the python-pickle batches of `cifar-10-batches-py` (test_batch, or data_batch_1..5 in order), or an
            images `.npy` (N, 32, 32, 3) uint8 / (N, 3, H, W) float in [0, 1] with a labels `.npy`;
  imagenet  a torchvision ImageFolder validation tree (class folders), index in its sorted sample list,
            resized to 256 (shorter side) and center-cropped to 224 (RobustBench's Res256Crop224).
Images come back as float32 NCHW in [0, 1].
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, DataConfig


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: the CIFAR-10 batches are dicts of bytes keys, lists and
    ndarrays.  Any other global (a function, a class with side effects) is refused instead of being imported."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes (str → latin-1 bytes)
    })

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR-10 batches hold numpy arrays only")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One `cifar-10-batches-py` file → (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ConfigError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ConfigError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], dtype=np.int64)


class Dataset:
    """A split of images with stable integer ids 0..size-1."""

    name: str
    size: int

    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def images(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def source(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def id_of(self, line: str) -> int:
        """An entry of an id list: an integer id (other formats override this)."""
        try:
            return int(line)
        except ValueError:
            raise ConfigError(f"data.ids_file: {line!r} is not an integer id") from None


class DigitsData(Dataset):
    def __init__(self, split: str):
        from ...zoo.embedded import load_split

        self.x, self.y = load_split(split)
        self.name, self.size = f"digits/{split}", len(self.y)

    def labels(self):
        return self.y.numpy()

    def images(self, ids):
        return self.x[torch.tensor(ids, dtype=torch.long)].clone()


class ArrayData(Dataset):
    """uint8 NCHW / NHWC or float NCHW / NHWC arrays in memory or memory-mapped."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray):
        if x.ndim != 4 or len(x) != len(y):
            raise ConfigError(f"{name}: images {x.shape} and labels {y.shape} do not match (need (N, H, W, C) or "
                              "(N, C, H, W) with N labels)")
        self.name, self.x, self.y, self.size = name, x, np.asarray(y, dtype=np.int64).reshape(-1), len(y)
        self.channels_last = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)

    def labels(self):
        return self.y

    def images(self, ids):
        a = np.asarray(self.x[np.asarray(ids, dtype=np.int64)])
        t = torch.from_numpy(a.copy())
        if self.channels_last:
            t = t.permute(0, 3, 1, 2)
        t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
        if float(t.min()) < 0 or float(t.max()) > 1:
            raise ValueError(f"{self.name}: float images must lie in [0, 1] (got [{float(t.min())}, {float(t.max())}])")
        return t.contiguous()


def cifar10(path: str, split: str, labels: str = "") -> ArrayData:
    p = Path(path)
    if p.suffix == ".npy":
        x = np.load(p, mmap_mode="r", allow_pickle=False)
        y = np.load(labels, allow_pickle=False)
        return ArrayData(f"cifar10/{p.name}", x, y)
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [f for f in files if not (p / f).is_file()]
    if missing:
        raise ConfigError(f"data.path {p}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    parts = [read_cifar_batch(p / f) for f in files]
    return ArrayData(f"cifar10/{split}", np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]))


class ImageFolderData(Dataset):
    """torchvision ImageFolder order (classes sorted, files sorted within a class); Res256Crop224 on load."""

    def __init__(self, root: str):
        try:
            from torchvision.datasets import ImageFolder
        except ImportError as e:
            raise ConfigError("data.dataset = 'imagenet' needs torchvision (pip install torchvision)") from e
        self.root = Path(root)
        try:
            self.folder = ImageFolder(str(self.root))
        except (FileNotFoundError, RuntimeError) as e:
            raise ConfigError(f"data.path {root}: not an ImageFolder tree ({e})") from None
        self.name, self.size = f"imagenet/{self.root.name}", len(self.folder.samples)
        self._index = {Path(f).relative_to(self.root).as_posix(): i for i, (f, _) in enumerate(self.folder.samples)}

    def labels(self):
        return np.asarray(self.folder.targets, dtype=np.int64)

    def images(self, ids):
        from torchvision import transforms

        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
        return torch.stack([tf(self.folder.loader(self.folder.samples[i][0]).convert("RGB")) for i in ids])

    def source(self, i):
        return Path(self.folder.samples[i][0]).relative_to(self.root).as_posix()

    def id_of(self, line):
        """RobustBench's list holds relative paths ('n01440764/ILSVRC2012_val_00000293.JPEG', optionally under
        'val/'); integers are ids as they are."""
        if line.isdigit():
            return int(line)
        key = line.removeprefix("val/")
        if key not in self._index:
            raise ConfigError(f"data.ids_file: {line!r} is not an image of {self.root}")
        return self._index[key]


def open_dataset(d: DataConfig) -> Dataset:
    if d.dataset == "digits":
        return DigitsData(d.split)
    if d.dataset == "cifar10":
        return cifar10(d.path, d.split, d.labels)
    return ImageFolderData(d.path)


def select_ids(d: DataConfig, data: Dataset) -> list[int]:
    """The subset, in canonical order: explicit ids, an id list file, the first n, or n seeded ids (sorted)."""
    if d.ids:
        ids = list(d.ids)
    elif d.ids_file:
        lines = [s.strip() for s in Path(d.ids_file).read_text().splitlines()]
        ids = [data.id_of(s) for s in lines if s and not s.startswith("#")]
        ids = ids[:d.n] if d.n else ids
    elif d.subset == "first":
        ids = list(range(min(d.n, data.size) if d.n else data.size))
    else:
        if d.n > data.size:
            raise ConfigError(f"data.n = {d.n} exceeds the {data.size} images of {data.name}")
        # RandomState's stream is frozen by numpy's compatibility policy: the same subset on every version.
        ids = sorted(np.random.RandomState(d.data_seed).permutation(data.size)[:d.n or data.size].tolist())
    bad = [i for i in ids if not 0 <= i < data.size]
    if bad:
        raise ConfigError(f"data: ids {bad[:5]} are outside 0..{data.size - 1} of {data.name}")
    if len(set(ids)) != len(ids):
        raise ConfigError("data: the id list has duplicates")
    if not ids:
        raise ConfigError("data: the subset is empty")
    return ids
