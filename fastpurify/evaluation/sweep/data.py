"""Data for sweeps, read from files the user already has (nothing is downloaded).

A sample id is the index of the image in the full split (never a position in a shard or a subset):
  digits    the embedded split (`fastpurify.zoo.embedded.load_split`): index in that split;
  cifar10   the python-pickle batches of `cifar-10-batches-py` (test_batch, or data_batch_1..5 in order), or an
            images `.npy` (N, 32, 32, 3) uint8 / (N, 3, H, W) float in [0, 1] with a labels `.npy`;
  cifar100  the `cifar-100-python` pickles (`test` or `train`; fine labels, or coarse on request), or an images
            `.npy` with a labels `.npy` as for CIFAR-10;
  imagenet  a torchvision ImageFolder tree (class folders), index in its sorted sample list, resized to 256
            (shorter side) and center-cropped to 224 (RobustBench's Res256Crop224).  Labels are ImageNet-1k class
            indices of the folder names (WordNet ids, imagenet_synsets.txt), whichever folders are present;
            folders that are not ImageNet-1k synsets need data.class_map.
Images come back as float32 NCHW in [0, 1].  `label_rule` says how labels were assigned (report.json carries it).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_SPLIT, ConfigError, DataConfig


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: the CIFAR batches are dicts of bytes keys, lists and
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
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold numpy arrays only")


def read_cifar_batch(path: Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle → (images (N, 3, 32, 32) uint8, labels (N,) int64).  label_key: 'labels'
    (cifar-10-batches-py), 'fine_labels' or 'coarse_labels' (cifar-100-python)."""
    what = "CIFAR-10 python batch" if label_key == "labels" else "cifar-100-python pickle"
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ConfigError(f"{path}: not a {what} ({e})") from None
    key = label_key.encode()
    if not isinstance(d, dict) or b"data" not in d or key not in d:
        raise ConfigError(f"{path}: not a {what} (expected a dict with b'data' and {key!r})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    labels = np.asarray(d[key], dtype=np.int64)
    if len(labels) != len(data):
        raise ConfigError(f"{path}: {len(data)} images but {len(labels)} {label_key}")
    return data.reshape(-1, 3, 32, 32), labels


class Dataset:
    """A split of images with stable integer ids 0..size-1."""

    name: str
    size: int
    n_classes: int | None = None     # the classes of the label set (None: not known from the data files)
    label_rule: str = ""             # how labels were assigned (report.json)

    def notes(self, ids: list[int]) -> list[str]:
        """What `sweep check` tells the user about the selection."""
        return [f"data: {self.name}, {len(ids)} of {self.size} images; labels: {self.label_rule}"]

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
    LABEL_RULE = "the digit (0-9) of the embedded scikit-learn split"

    def __init__(self, split: str):
        from ...zoo.embedded import load_split

        self.x, self.y = load_split(split)
        self.name, self.size = f"digits/{split}", len(self.y)
        self.n_classes, self.label_rule = 10, self.LABEL_RULE

    def labels(self):
        return self.y.numpy()

    def images(self, ids):
        return self.x[torch.tensor(ids, dtype=torch.long)].clone()


class ArrayData(Dataset):
    """uint8 NCHW / NHWC or float NCHW / NHWC arrays in memory or memory-mapped."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, n_classes: int | None = None, label_rule: str = ""):
        if x.ndim != 4 or len(x) != len(y):
            raise ConfigError(f"{name}: images {x.shape} and labels {y.shape} do not match (need (N, H, W, C) or "
                              "(N, C, H, W) with N labels)")
        self.name, self.x, self.y, self.size = name, x, np.asarray(y, dtype=np.int64).reshape(-1), len(y)
        self.channels_last = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
        self.n_classes, self.label_rule = n_classes, label_rule
        if n_classes is not None and len(self.y) and not 0 <= int(self.y.min()) <= int(self.y.max()) < n_classes:
            raise ConfigError(f"{name}: labels span {int(self.y.min())}..{int(self.y.max())}, outside the "
                              f"{n_classes} classes")

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


CIFAR10_RULE = "CIFAR-10 class index (b'labels' of the batches)"
IMAGENET_RULE = ("ImageNet-1k class index of the folder's WordNet id (imagenet_synsets.txt order), whichever "
                 "folders are present")


def cifar100_rule(label_type: str) -> str:
    return f"CIFAR-100 {label_type} label (b'{label_type}_labels', {100 if label_type == 'fine' else 20} classes)"


def cifar10(path: str, split: str, labels: str = "") -> ArrayData:
    p = Path(path)
    if p.suffix == ".npy":
        return ArrayData(f"cifar10/{p.name}", np.load(p, mmap_mode="r", allow_pickle=False),
                         np.load(labels, allow_pickle=False), 10, f"the labels file {Path(labels).name} as given")
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [f for f in files if not (p / f).is_file()]
    if missing:
        raise ConfigError(f"data.path {p}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    parts = [read_cifar_batch(p / f) for f in files]
    return ArrayData(f"cifar10/{split}", np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]),
                     10, CIFAR10_RULE)


def cifar100(path: str, split: str, labels: str = "", label_type: str = "fine") -> ArrayData:
    """`cifar-100-python/{test,train}`: 100 fine classes (default) or 20 coarse superclasses."""
    p, n = Path(path), 100 if label_type == "fine" else 20
    if p.suffix == ".npy":
        return ArrayData(f"cifar100/{p.name}", np.load(p, mmap_mode="r", allow_pickle=False),
                         np.load(labels, allow_pickle=False), n,
                         f"the labels file {Path(labels).name} as given, taken as {label_type} labels ({n} classes)")
    if not (p / split).is_file():
        raise ConfigError(f"data.path {p}: no cifar-100-python file {split!r} (expected {p / split})")
    x, y = read_cifar_batch(p / split, f"{label_type}_labels")
    return ArrayData(f"cifar100/{split}", x, y, n, cifar100_rule(label_type))


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (imagenet_synsets.txt; its header names the source)."""
    text = (Path(__file__).parent / "imagenet_synsets.txt").read_text()
    return [s.strip() for s in text.splitlines() if s.strip() and not s.startswith("#")]


def read_class_map(path: str) -> dict[str, int]:
    """data.class_map: 'folder index' per line ('#' comments)."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(f"data.class_map {path}:{n}: expected 'folder index', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


class ImageFolderData(Dataset):
    """torchvision ImageFolder order (classes sorted, files sorted within a class); Res256Crop224 on load.  A
    folder's label is its ImageNet-1k class index (or its entry in class_map), never its position in the tree."""

    def __init__(self, root: str, class_map: str = ""):
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
        classes = self.folder.classes
        if class_map:
            index = read_class_map(class_map)
            self.n_classes, self.label_rule = None, f"the class map {Path(class_map).name} (folder → index)"
            where = f"data.class_map {class_map}"
        else:
            index = {w: k for k, w in enumerate(imagenet_synsets())}
            self.n_classes = 1000
            self.label_rule = IMAGENET_RULE
            where = "the ImageNet-1k synsets (give data.class_map for other folders)"
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ConfigError(f"data.path {root}: class folder(s) {', '.join(unknown[:5])}"
                              f"{' …' if len(unknown) > 5 else ''} not in {where}")
        self.folder_labels = {c: index[c] for c in classes}
        self._labels = np.asarray([index[classes[t]] for t in self.folder.targets], dtype=np.int64)

    def notes(self, ids):
        used = sorted({self.source(i).split("/")[0] for i in ids})
        shown = ", ".join(f"{c} → {self.folder_labels[c]}" for c in used[:4]) + (" …" if len(used) > 4 else "")
        return [*super().notes(ids), f"data: {len(used)} class folder(s) in the selection: {shown}"]

    def labels(self):
        return self._labels

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


def label_rule(d: dict) -> str:
    """How the labels of a stored [data] config were assigned (for report.json; the datasets set the same text)."""
    npy = str(d.get("path", "")).endswith(".npy")
    if d["dataset"] == "digits":
        return DigitsData.LABEL_RULE
    if npy:
        return f"the labels file {Path(d['labels']).name} as given" + (
            f", taken as {d.get('label_type') or 'fine'} labels" if d["dataset"] == "cifar100" else "")
    if d["dataset"] == "cifar10":
        return CIFAR10_RULE
    if d["dataset"] == "cifar100":
        return cifar100_rule(d.get("label_type") or "fine")
    return (f"the class map {Path(d['class_map']).name} (folder → index)" if d.get("class_map")
            else IMAGENET_RULE)


def open_dataset(d: DataConfig) -> Dataset:
    split = d.split or DEFAULT_SPLIT[d.dataset]
    if d.dataset == "digits":
        return DigitsData(split)
    if d.dataset == "cifar10":
        return cifar10(d.path, split, d.labels)
    if d.dataset == "cifar100":
        return cifar100(d.path, split, d.labels, d.label_type or "fine")
    return ImageFolderData(d.path, d.class_map)


def select_ids(d: DataConfig, data: Dataset) -> list[int]:
    """The subset, in canonical order: explicit ids, an id list file, the first n, or n seeded ids (sorted)."""
    if d.ids:
        ids = list(d.ids)
    elif d.ids_file:
        lines = [s.strip() for s in Path(d.ids_file).read_text().splitlines()]
        ids = [data.id_of(s) for s in lines if s and not s.startswith("#")]
        if d.n > len(ids):
            raise ConfigError(f"data.n = {d.n} exceeds the {len(ids)} ids of data.ids_file; lower n or give 0 (all)")
        ids = ids[:d.n] if d.n else ids
    elif d.n > data.size:  # more images than there are would silently give fewer: refused, whatever the subset
        raise ConfigError(f"data.n = {d.n} exceeds the {data.size} images of {data.name}; lower n or give 0 "
                          "(the whole split)")
    elif d.subset == "first":
        ids = list(range(d.n or data.size))
    else:
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
