"""Dataset loading, caching and the deterministic splits every pass draws from.

Accepted sources: an ImageFolder directory, a ``.tar``/``.tar.gz`` of one, or an ``.npz`` with ``images``
(N, H, W, C uint8) and ``labels``; each with a ``train/`` and a ``test/`` (or ``val/``) split (an npz holds
``train_images``/``train_labels``/``test_images``/``test_labels`` or a single ``images``/``labels`` pair used as
test only). Decoded images are cached as npz keyed by the source's resolved path, size and modification time
(every file of a folder, through symlinks), so editing the source invalidates the cache.

:func:`check_against_model` checks labels, channels and image size against the model before any work: a label
the model has no logit for, or images broadcast to the wrong channel count, would otherwise only show as a
meaningless accuracy.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zipfile
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
PROGRESS_MIN = 5000  # decoding fewer images than this shows no progress bar


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
    classes_named: bool = True  # False for an npz without ``classes``: its class count is only known from labels
    label_keys: dict[str, str] = field(default_factory=dict)  # split -> where its labels came from, for messages


def _cache_dir() -> Path:
    """The decoded-data cache folder (``COMPRESSOR_CACHE``), created here so a bad one fails before decoding."""
    env = os.environ.get("COMPRESSOR_CACHE")
    cache = Path(env) if env else Path.home() / ".cache" / "compressor"
    what = f"COMPRESSOR_CACHE={env}" if env else f"the data cache folder {cache}"
    if cache.exists() and not cache.is_dir():
        raise CompressorError(f"{what} is a file, not a folder; point COMPRESSOR_CACHE at a folder")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompressorError(f"{what} cannot be created ({exc.strerror}); point COMPRESSOR_CACHE at a writable "
                              "folder") from None
    return cache


def source_fingerprint(path: Path) -> str:
    """Resolved path + size + mtime of the source (every file of a directory, following symlinked folders and
    files to what they point at), so any change misses the cache."""
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_dir():
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath, name)
                try:
                    st = p.stat()
                except OSError:
                    continue  # a dangling symlink is not read either
                h.update(f"{p.relative_to(path)}:{os.path.realpath(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice that; a data set image that large is a mistake.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CompressorError(f"image {name} claims more than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                              "bomb or a mistake); remove it from the data") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CompressorError(f"unreadable image {name}: {exc}; remove or replace the file") from None
    except Exception as exc:  # Pillow raises assorted errors on malformed files
        raise CompressorError(f"unreadable image {name}: {type(exc).__name__}: {exc}; remove or replace the file") from None


def _collect(entries: dict[str, dict[str, list[tuple[str, bytes]]]], source: str, progress: bool = True) -> Dataset:
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
        with tqdm(total=total, desc=f"decode {split}", disable=not progress or total < PROGRESS_MIN, leave=False) as bar:
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


def _read_folder(root: Path, progress: bool = True) -> Dataset:
    entries: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = [f for f in cls_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
            entries.setdefault(split_dir.name, {})[cls_dir.name] = [(str(f), f.read_bytes()) for f in files]
    return _collect(entries, str(root), progress)


def _read_tar(path: Path, progress: bool = True) -> Dataset:
    entries: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    root: tuple[str, ...] | None = None
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = Path(member.name).parts
                # A name that climbs out of the archive's folder (or starts at /) is a crafted archive: refuse it
                # whole rather than guess which of its images are the data.
                if ".." in parts or Path(member.name).is_absolute():
                    raise CompressorError(f"archive {path} has a member outside its folder ({member.name}); "
                                          "refusing a crafted archive: pack the data set again")
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                # Accept one folder (at any depth, the same for every image) above train/ and test/.
                split_at = next((i for i, p in enumerate(parts) if p in ("train",) + TEST_NAMES), None)
                if split_at is None or len(parts) - split_at != 3:
                    continue
                if root is None:
                    root = parts[:split_at]
                elif parts[:split_at] != root:
                    raise CompressorError(
                        f"archive {path} holds splits under two folders ({'/'.join(root) or '.'}/ and "
                        f"{'/'.join(parts[:split_at]) or '.'}/); pack one data set per archive")
                split, cls = parts[split_at], parts[split_at + 1]
                blob = tar.extractfile(member).read()
                entries.setdefault(split, {}).setdefault(cls, []).append((member.name, blob))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CompressorError(f"cannot read archive {path}: {exc}; check that it is a complete .tar/.tar.gz") from None
    return _collect(entries, str(path), progress)


def _npz_array(z: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(z[key])
    except ValueError:  # an object array, which only unpickling could read
        raise CompressorError(f"{path}: {key} holds Python objects; save it as a numeric array") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CompressorError(f"{path}: cannot read {key} ({type(exc).__name__}); the file is damaged") from None


def _npz_labels(z: np.lib.npyio.NpzFile, key: str, n: int, path: Path) -> np.ndarray:
    """Class indices, shape (n,): integers, or floats that are whole numbers; never truncated, never negative."""
    labels = _npz_array(z, key, path)
    if labels.ndim != 1 or len(labels) != n:
        raise CompressorError(f"{path}: {key} has shape {labels.shape}; it must be ({n},) class indices, one per image "
                              "(not one-hot, not (N, 1))")
    whole_floats = labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)))
    if labels.dtype.kind not in "iu" and not whole_floats:
        bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))] if labels.dtype.kind == "f" else labels
        example = f" (e.g. {bad[0].item()!r})" if bad.size else ""
        raise CompressorError(f"{path}: {key} are {labels.dtype}{example}; they must be integer class indices 0..K-1")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise CompressorError(f"{path}: {key} holds class {labels.min()}; classes are indices 0..K-1")
    return labels


def _read_npz(path: Path) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CompressorError(f"cannot read {path}: {exc}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CompressorError(f"{path} holds one array, not the named arrays of an npz (np.savez)")
    label_keys: dict[str, str] = {}

    def pair(prefix: str, split: str) -> Split | None:
        ikey, lkey = f"{prefix}images", f"{prefix}labels"
        if ikey not in z.files and lkey not in z.files:
            return None
        if ikey not in z.files or lkey not in z.files:
            have, need = (ikey, lkey) if ikey in z.files else (lkey, ikey)
            raise CompressorError(f"{path}: npz has {have} but no {need}; save both")
        images = _npz_array(z, ikey, path)
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
            raise CompressorError(f"{path}: {ikey} must be non-empty uint8 (N, H, W, C), got {images.dtype} "
                                  f"{images.shape}")
        label_keys[split] = lkey
        return Split(images, _npz_labels(z, lkey, len(images), path))

    train = pair("train_", "train")
    test = pair("test_", "test") or pair("", "test")
    if test is None:
        raise CompressorError(f"{path}: npz needs arrays test_images/test_labels (and train_*), or images/labels; "
                              f"it has {', '.join(z.files) or 'none'}")
    n_classes = int(max(test.labels.max(), train.labels.max() if train else 0)) + 1
    named = "classes" in z.files
    classes = [str(c) for c in _npz_array(z, "classes", path)] if named else [str(i) for i in range(n_classes)]
    return Dataset(train, test, classes, str(path), named, label_keys)


def load_dataset(path: str | Path, use_cache: bool = True, progress: bool = True) -> Dataset:
    """Decode a dataset (cached); raises CompressorError naming the problem for any bad source. ``progress``:
    show a bar while decoding a large one."""
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:
        raise CompressorError(f"data path {str(path)[:60]}... cannot be used ({exc.strerror}); give a shorter "
                              "--data / data.path") from None
    if not exists:
        raise CompressorError(f"data path {path} does not exist; pass --data with an ImageFolder dir, .tar(.gz) or .npz")
    if path.is_dir() and not any(path.iterdir()):
        raise CompressorError(f"data folder {path} is empty; it needs train/<class>/ and test/<class>/ image folders")
    if path.suffix == ".npz":
        return _read_npz(path)
    cache = _cache_dir() / f"{path.name}-{source_fingerprint(path)}.npz" if use_cache else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                train = Split(z["train_images"], z["train_labels"]) if "train_images" in z else None
                return Dataset(train, Split(z["test_images"], z["test_labels"]), [str(c) for c in z["classes"]],
                               str(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # a damaged cache entry: decode again and replace it
    if path.is_dir():
        ds = _read_folder(path, progress)
    elif tarfile.is_tarfile(path):
        ds = _read_tar(path, progress)
    else:
        raise CompressorError(f"data path {path} is neither a folder, a .tar/.tar.gz nor an .npz")
    if cache is not None:
        arrays = {"test_images": ds.test.images, "test_labels": ds.test.labels, "classes": np.asarray(ds.classes)}
        if ds.train is not None:
            arrays.update(train_images=ds.train.images, train_labels=ds.train.labels)
        with atomic_path(cache) as tmp:
            np.savez(tmp, **arrays)
    return ds


def check_against_model(ds: Dataset, outputs: int | None, input_shape: tuple[int, ...]) -> None:
    """Refuse data the model cannot be measured on: images of another channel count or size than
    ``input_shape`` (C, H, W), a class count other than the model's ``outputs`` logits, or a label with no logit."""
    channels, height, width = input_shape
    for name, split in (("train", ds.train), ("test", ds.test)):
        if split is None:
            continue
        _, h, w, c = split.images.shape
        if c != channels:
            raise CompressorError(
                f"data at {ds.source}: {name} images have {c} channel(s) but the model input has {channels}; set "
                "model.input_shape (--input-shape) to match the data, or convert the images")
        if (h, w) != (height, width):
            raise CompressorError(
                f"data at {ds.source}: {name} images are {h}x{w} but the model input is {channels},{height},{width}; "
                "set model.input_shape (--input-shape) to match the data, or resize the images")
    if outputs is None:
        return
    if ds.classes_named and len(ds.classes) != outputs:
        raise CompressorError(
            f"data at {ds.source} has {len(ds.classes)} classes but the model outputs {outputs} logits; give data with "
            "one class per model output (sorted class folder names map to outputs 0, 1, ...)")
    for name, split in (("train", ds.train), ("test", ds.test)):
        if split is not None and split.labels.max() >= outputs:
            where = ds.label_keys.get(name, f"{name} labels")
            raise CompressorError(
                f"data at {ds.source}: {where} holds class {split.labels.max()} but the model outputs {outputs} logits "
                f"(classes 0..{outputs - 1}); fix the labels or the model")


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
            f"{calibration} calibration images; lower data.validation / data.calibration (--validation / --calibration)"
        )
    val, cal, fine = rest[:validation], rest[validation : validation + calibration], rest[validation + calibration :]
    return Splits(
        ds.train.subset(fine), ds.train.subset(cal), ds.train.subset(np.sort(ref)),
        ds.train.subset(val), ds.test, ds.classes,
    )
