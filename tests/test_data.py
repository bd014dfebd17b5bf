import hashlib
import io
import pickle
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from micronet_onnx import data
from micronet_onnx.data import CIFAR, AugmentConfig, DataError, load_dataset, make_batch


def write_tiny_cifar(root, name, n_train=12, n_test=6, seed=0):
    """A CIFAR folder in the real python-pickle format, with a few real-sized images."""
    spec = CIFAR[name]
    rng = np.random.default_rng(seed)
    folder = root / spec.folder
    folder.mkdir(parents=True)
    per_file = max(1, n_train // len(spec.train_files))
    all_imgs, all_labels = [], []
    for f in spec.train_files:
        imgs = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, per_file)
        data.write_cifar_batch(folder / f, imgs, labels, spec.label_key)
        all_imgs.append(imgs)
        all_labels.append(labels)
    timgs = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    tlabels = rng.integers(0, spec.num_classes, n_test)
    data.write_cifar_batch(folder / spec.test_files[0], timgs, tlabels, spec.label_key)
    return np.concatenate(all_imgs), np.concatenate(all_labels), timgs, tlabels


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_folder_roundtrip(tmp_path, name):
    imgs, labels, timgs, tlabels = write_tiny_cifar(tmp_path, name)
    (train, test) = data.load_cifar(name, tmp_path)
    np.testing.assert_array_equal(train[0], imgs)  # HWC order restored from CIFAR's CHW rows
    np.testing.assert_array_equal(train[1], labels)
    np.testing.assert_array_equal(test[0], timgs)
    ds = load_dataset(name, tmp_path, val_fraction=0.25)
    assert ds.num_classes == CIFAR[name].num_classes
    assert len(ds.train) + len(ds.val) == len(labels) and len(ds.test) == len(tlabels)


def test_cifar_missing_and_malicious(tmp_path):
    with pytest.raises(DataError, match="no cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for f in ("test_batch", "data_batch_1"):
        (folder / f).write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        data.load_cifar("cifar10", tmp_path)
    (folder / "data_batch_1").write_bytes(b"\x80\x02truncated")
    with pytest.raises(DataError):
        data.load_cifar("cifar10", tmp_path)


def _tiny_archive(tmp_path, name):
    src = tmp_path / "src"
    write_tiny_cifar(src, name)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / CIFAR[name].folder, arcname=CIFAR[name].folder)
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(buf.getvalue())
    return archive, hashlib.md5(buf.getvalue()).hexdigest()


def test_download_verifies_checksum_and_unpacks(tmp_path):
    archive, md5 = _tiny_archive(tmp_path, "cifar10")
    spec = replace(CIFAR["cifar10"], url=archive.as_uri(), md5=md5)
    target = data.download(spec, tmp_path / "data")
    assert (target / "data_batch_1").exists() and (target / "test_batch").exists()
    assert data.download(spec, tmp_path / "data") == target  # already there: no second fetch

    bad = replace(spec, md5="0" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download(bad, tmp_path / "other")
    assert not (tmp_path / "other" / spec.folder).exists()  # nothing half-unpacked left behind


def test_digits_is_real_and_split():
    ds = load_dataset("digits")
    assert ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == torch.uint8
    # real handwriting: every class present, images not noise (mostly dark background)
    assert set(ds.test.labels.tolist()) == set(range(10))
    assert float((ds.train.images < 20).float().mean()) > 0.3
    # the held-out sets are disjoint from training
    train_set = {bytes(x.numpy().tobytes()) for x in ds.train.images}
    assert not any(bytes(x.numpy().tobytes()) in train_set for x in ds.val.images[:50])


def test_augmentation_is_deterministic_and_shapes_hold():
    ds = load_dataset("digits")
    idx = torch.arange(16)
    a, _ = make_batch(ds.train, idx, ds, AugmentConfig(), torch.Generator().manual_seed(3))
    b, _ = make_batch(ds.train, idx, ds, AugmentConfig(), torch.Generator().manual_seed(3))
    c, _ = make_batch(ds.train, idx, ds, AugmentConfig(), torch.Generator().manual_seed(4))
    plain, _ = make_batch(ds.train, idx, ds, None, None)
    assert a.shape == plain.shape == (16, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


def test_cutout_and_crop():
    x = torch.ones(4, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = data.spatial_augment(x, AugmentConfig(crop_padding=0, flip=False, cutout=16), gen)
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 256)).all()
    out = data.spatial_augment(x, AugmentConfig(crop_padding=4, flip=False, cutout=0), gen)
    assert out.shape == x.shape and (out == 0).any()  # zero padding shifted in
