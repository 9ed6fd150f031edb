"""Dataset loading, caching and the deterministic splits every pass draws from.

Accepted sources: an ImageFolder directory, a ``.tar``/``.tar.gz`` of one, or an ``.npz`` with ``images``
(N, H, W, C uint8) and ``labels``; each with a ``train/`` and a ``test/`` (or ``val/``) split (an npz holds
``train_images``/``train_labels``/``test_images``/``test_labels`` or a single ``images``/``labels`` pair used as
test only). Decoded images are cached as npz keyed by the source's path, size and modification time, so editing
the source invalidates the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from compressor.core.files import atomic_path
from compressor.errors import CompressorError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
TEST_NAMES = ("test", "val")


@dataclass
class Split:
    """Images as uint8 NHWC plus integer labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """The decoded train and test splits with class names, before normalisation."""

    train: Split | None
    test: Split
    classes: list[str]
    source: str = ""


def _cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def _fingerprint(path: Path) -> str:
    """Path + size + mtime of the source (every file of a directory), so any change misses the cache."""
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise CompressorError(f"unreadable image {name}: {exc}; remove or replace the file") from None


def _collect(entries: dict[str, dict[str, list[tuple[str, bytes]]]], source: str) -> Dataset:
    """entries: split -> class -> [(name, bytes)] into a Dataset with a shared, sorted class list."""
    test_name = next((n for n in TEST_NAMES if n in entries), None)
    if test_name is None:
        found = ", ".join(sorted(entries)) or "nothing"
        raise CompressorError(
            f"data at {source} has no test/ (or val/) split (found: {found}); "
            "lay it out as train/<class>/*.jpg and test/<class>/*.jpg"
        )
    classes = sorted(entries[test_name])
    if "train" in entries and sorted(entries["train"]) != classes:
        raise CompressorError(f"data at {source}: train/ and {test_name}/ have different class folders")

    def build(split: str) -> Split:
        images, labels = [], []
        total = sum(len(v) for v in entries[split].values())
        with tqdm(total=total, desc=f"decode {split}", disable=total < 5000, leave=False) as bar:
            for label, cls in enumerate(classes):
                for name, blob in sorted(entries[split].get(cls, [])):
                    images.append(_decode(blob, name))
                    labels.append(label)
                    bar.update()
        if not images:
            raise CompressorError(f"data at {source}: split {split}/ holds no images ({', '.join(IMAGE_SUFFIXES)})")
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise CompressorError(f"data at {source}: images in {split}/ differ in size {sorted(shapes)[:3]}; resize them")
        return Split(np.stack(images), np.asarray(labels, dtype=np.int64))

    return Dataset(build("train") if "train" in entries else None, build(test_name), classes, source)


def _read_folder(root: Path) -> Dataset:
    entries: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = [f for f in cls_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
            entries.setdefault(split_dir.name, {})[cls_dir.name] = [(str(f), f.read_bytes()) for f in files]
    return _collect(entries, str(root))


def _read_tar(path: Path) -> Dataset:
    entries: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                # Accept an optional single top-level folder above train/ and test/.
                split_at = next((i for i, p in enumerate(parts) if p in ("train",) + TEST_NAMES), None)
                if split_at is None or len(parts) - split_at != 3:
                    continue
                split, cls = parts[split_at], parts[split_at + 1]
                blob = tar.extractfile(member).read()
                entries.setdefault(split, {}).setdefault(cls, []).append((member.name, blob))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CompressorError(f"cannot read archive {path}: {exc}; check that it is a complete .tar/.tar.gz") from None
    return _collect(entries, str(path))


def _read_npz(path: Path) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompressorError(f"cannot read {path}: {exc}") from None

    def pair(prefix: str) -> Split | None:
        if f"{prefix}images" not in z:
            return None
        images, labels = np.asarray(z[f"{prefix}images"]), np.asarray(z[f"{prefix}labels"]).astype(np.int64)
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or len(images) == 0:
            raise CompressorError(f"{path}: {prefix}images must be non-empty uint8 (N, H, W, C) matching {prefix}labels")
        return Split(images, labels)

    train, test = pair("train_"), pair("test_") or pair("")
    if test is None:
        raise CompressorError(f"{path}: npz needs arrays test_images/test_labels (and train_*), or images/labels")
    n_classes = int(max(test.labels.max(), train.labels.max() if train else 0)) + 1
    classes = [str(c) for c in z["classes"]] if "classes" in z else [str(i) for i in range(n_classes)]
    return Dataset(train, test, classes, str(path))


def load_dataset(path: str | Path, use_cache: bool = True) -> Dataset:
    """Decode a dataset (cached); raises CompressorError naming the problem for any bad source."""
    path = Path(path)
    if not path.exists():
        raise CompressorError(f"data path {path} does not exist; pass --data with an ImageFolder dir, .tar(.gz) or .npz")
    if path.is_dir() and not any(path.iterdir()):
        raise CompressorError(f"data folder {path} is empty; it needs train/<class>/ and test/<class>/ image folders")
    if path.suffix == ".npz":
        return _read_npz(path)
    cache = _cache_dir() / f"{path.name}-{_fingerprint(path)}.npz"
    if use_cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        train = Split(z["train_images"], z["train_labels"]) if "train_images" in z else None
        return Dataset(train, Split(z["test_images"], z["test_labels"]), [str(c) for c in z["classes"]], str(path))
    if path.is_dir():
        ds = _read_folder(path)
    elif tarfile.is_tarfile(path):
        ds = _read_tar(path)
    else:
        raise CompressorError(f"data path {path} is neither a folder, a .tar/.tar.gz nor an .npz")
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"test_images": ds.test.images, "test_labels": ds.test.labels, "classes": np.asarray(ds.classes)}
        if ds.train is not None:
            arrays.update(train_images=ds.train.images, train_labels=ds.train.labels)
        with atomic_path(cache) as tmp:
            np.savez(tmp, **arrays)
    return ds


@dataclass
class Preprocess:
    """uint8 NHWC → normalised float NCHW, with the per-channel mean and std the model was trained with."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised images of all-black and all-white pixels: the input box LRP's zB rule needs."""
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (0 - mean) / std, (1 - mean) / std


@dataclass
class Splits:
    """Disjoint subsets of train (finetune, calibration, reference, validation) and the test split.

    The test split is only ever used for reported accuracy; searches score on ``validation``.
    """

    finetune: Split
    calibration: Split
    reference: Split
    validation: Split
    test: Split
    classes: list[str] = field(default_factory=list)


def make_splits(
    ds: Dataset, seed: int, validation: int = 1000, calibration: int = 1000, reference_per_class: int = 10
) -> Splits:
    """Seeded, class-balanced reference set first, then validation and calibration; the rest fine-tunes."""
    if ds.train is None:
        raise CompressorError(f"data at {ds.source} has no train/ split; passes need it for calibration and search")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds.train))
    labels = ds.train.labels[order]
    ref = np.concatenate([order[labels == c][:reference_per_class] for c in np.unique(labels)])
    rest = order[~np.isin(order, ref)]
    need = validation + calibration + 1
    if len(rest) < need:
        raise CompressorError(
            f"train split has {len(ds.train)} images, too few for {len(ref)} reference + {validation} validation + "
            f"{calibration} calibration images; lower data.validation / data.calibration in the recipe"
        )
    val, cal, fine = rest[:validation], rest[validation : validation + calibration], rest[validation + calibration :]
    return Splits(
        ds.train.subset(fine), ds.train.subset(cal), ds.train.subset(np.sort(ref)),
        ds.train.subset(val), ds.test, ds.classes,
    )
