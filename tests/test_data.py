"""Data input formats, cache invalidation, and the deterministic disjoint splits."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from compressor.core.data import load_dataset, make_splits
from compressor.errors import CompressorError

from .conftest import DEMO_DATA


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgfolder")
    with tarfile.open(DEMO_DATA) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10-demo"


def test_folder_tar_and_npz_agree(folder, demo_dataset, tmp_path):
    ds_dir = load_dataset(folder)
    assert ds_dir.classes == demo_dataset.classes and len(ds_dir.classes) == 10
    assert np.array_equal(ds_dir.train.images, demo_dataset.train.images)
    assert np.array_equal(ds_dir.test.labels, demo_dataset.test.labels)
    assert demo_dataset.train.images.shape == (3000, 32, 32, 3) and len(demo_dataset.test) == 1500
    npz = tmp_path / "d.npz"
    np.savez(npz, train_images=ds_dir.train.images, train_labels=ds_dir.train.labels,
             test_images=ds_dir.test.images, test_labels=ds_dir.test.labels)
    ds_npz = load_dataset(npz)
    assert np.array_equal(ds_npz.test.images, ds_dir.test.images)


def test_val_folder_accepted_and_cache_invalidated(folder, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(folder, root)
    (root / "test").rename(root / "val")
    first = load_dataset(root)
    victim = next((root / "val" / "cat").iterdir())
    victim.unlink()
    second = load_dataset(root)
    assert len(second.test) == len(first.test) - 1


def test_splits_disjoint_deterministic_balanced(demo_dataset):
    a = make_splits(demo_dataset, seed=3, validation=500, calibration=400)
    b = make_splits(demo_dataset, seed=3, validation=500, calibration=400)
    c = make_splits(demo_dataset, seed=4, validation=500, calibration=400)
    assert np.array_equal(a.validation.images, b.validation.images)
    assert not np.array_equal(a.validation.images, c.validation.images)
    assert len(a.validation) == 500 and len(a.calibration) == 400 and len(a.reference) == 100
    assert np.bincount(a.reference.labels).tolist() == [10] * 10
    assert len(a.finetune) == 3000 - 100 - 500 - 400
    # Disjoint: no image (as bytes) in two train subsets.
    keys = [set(map(bytes, s.images.reshape(len(s), -1))) for s in (a.finetune, a.calibration, a.reference, a.validation)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not keys[i] & keys[j]
    with pytest.raises(CompressorError, match="too few"):
        make_splits(demo_dataset, seed=0, validation=2500, calibration=500)


def test_bad_data_sources(tmp_path, folder):
    with pytest.raises(CompressorError, match="empty"):
        (tmp_path / "empty").mkdir()
        load_dataset(tmp_path / "empty")
    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    (flat / "cat" / "a.jpg").write_bytes((folder / "test" / "cat").iterdir().__next__().read_bytes())
    with pytest.raises(CompressorError, match="no test/"):
        load_dataset(flat)
    broken = tmp_path / "broken"
    for split in ("train", "test"):
        (broken / split / "cat").mkdir(parents=True)
        (broken / split / "cat" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(CompressorError, match="unreadable image .*x.jpg"):
        load_dataset(broken)
    trunc = tmp_path / "t.tar.gz"
    trunc.write_bytes(DEMO_DATA.read_bytes()[:20000])
    with pytest.raises(CompressorError, match="cannot read archive"):
        load_dataset(trunc)
    with pytest.raises(CompressorError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    assert os.path.exists(DEMO_DATA)
