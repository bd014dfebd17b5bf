"""Data sets: CIFAR-10/100 from the standard python-pickle folders, and the embedded digits set.

Everything lives in memory as uint8 NHWC tensors (CIFAR is 180 MB at most) and augmentation runs
batched in torch from an explicit generator, so a resumed run draws exactly the same batches.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from micronet_onnx.fileio import file_hash

DATASETS = ("digits", "cifar10", "cifar100")
DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class ArchiveSpec:
    """Where the standard archive lives, its checksum and what it unpacks to."""

    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int


CIFAR = {
    "cifar10": ArchiveSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": ArchiveSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        num_classes=100,
    ),
}

# Normalization statistics (over 255) from the reference code for CIFAR.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


class DataError(ValueError):
    """A data set that is missing, malformed or fails its checksum."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, H, W, 3]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """The reference CIFAR recipe by default; every part can be switched off."""

    crop_padding: int = 4
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.075)  # brightness, contrast, saturation, hue
    cutout: int = 16

    @classmethod
    def for_dataset(cls, name: str) -> AugmentConfig:
        if name == "digits":
            # Mirrored digits are other symbols and the images are tiny: shifts only.
            return cls(crop_padding=4, flip=False, jitter=(0.0, 0.0, 0.0, 0.0), cutout=0)
        return cls()

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(crop_padding=0, flip=False, jitter=(0.0, 0.0, 0.0, 0.0), cutout=0)


# ----------------------------------------------------------------------------------------------
# Loading


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickled dicts of numpy arrays; allow exactly what they need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}")


def _load_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"missing CIFAR file {path}") from None
    except DataError:
        raise
    except Exception as e:  # truncated or foreign file
        raise DataError(f"cannot read CIFAR file {path}: {e}") from None
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DataError(f"{path} is not a CIFAR batch (no data/{label_key.decode()} keys)")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path} has data {data.shape} and {labels.shape[0]} labels, expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _find_folder(data_dir: Path, spec: ArchiveSpec) -> Path:
    for cand in (data_dir / spec.folder, data_dir):
        if (cand / spec.test_files[0]).exists():
            return cand
    raise DataError(f"no {spec.folder}/ under {data_dir} (use --download, or point --data-dir at it)")


def load_cifar(name: str, data_dir: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test) arrays of a CIFAR python-pickle folder."""
    spec = CIFAR[name]
    folder = _find_folder(Path(data_dir), spec)
    parts = [_load_batch(folder / f, spec.label_key) for f in spec.train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _load_batch(folder / spec.test_files[0], spec.label_key)
    for labels in (train[1], test[1]):
        if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise DataError(f"{name} labels outside [0, {spec.num_classes})")
    return train, test


def download(spec: ArchiveSpec, data_dir: Path) -> Path:
    """Fetch and unpack ``spec``'s archive into ``data_dir`` unless it is already there.

    The archive is verified against its published MD5 before anything is unpacked, and unpacked
    into a temporary folder that is renamed into place, so an interrupted download leaves nothing
    half-written.
    """
    data_dir = Path(data_dir)
    target = data_dir / spec.folder
    if (target / spec.test_files[0]).exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except Exception as e:
            raise DataError(f"cannot download {spec.url}: {e}") from None
        got = file_hash(archive, "md5")
        if got != spec.md5:
            raise DataError(f"checksum mismatch for {spec.url}: md5 {got}, expected {spec.md5}")
        unpack = Path(tmp) / "unpacked"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpack, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot unpack {spec.url}: {e}") from None
        if not (unpack / spec.folder / spec.test_files[0]).exists():
            raise DataError(f"archive {spec.url} has no {spec.folder}/{spec.test_files[0]}")
        (unpack / spec.folder).rename(target)
    return target


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits as CIFAR-shaped uint8 [N, 32, 32, 3] images and int64 labels."""
    with np.load(Path(__file__).parent / "_data" / "digits.npz") as z:
        small, labels = z["images"], z["labels"]
    x = torch.from_numpy(small.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1)
    return x.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy(), labels.astype(np.int64)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return perm[k:], perm[:k]


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None, *, download_missing: bool = False,
                 val_fraction: float = 0.1, split_seed: int = 0) -> Dataset:
    """Load ``name`` with a validation split held out of its training set.

    The test split is only for the final report; model selection uses ``val``. Digits has no
    official split: a fixed 20 % (seed 0) is its test set.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not (0.0 <= val_fraction < 1.0):
        raise DataError(f"val fraction must be in [0, 1), got {val_fraction}")
    if name == "digits":
        images, labels = load_digits_arrays()
        train_idx, test_idx = _split(len(labels), 0.2, 0)
        train = (images[train_idx], labels[train_idx])
        test = (images[test_idx], labels[test_idx])
        num_classes = 10
    else:
        spec = CIFAR[name]
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir (the folder holding {spec.folder}/)")
        if download_missing:
            download(spec, Path(data_dir))
        train, test = load_cifar(name, Path(data_dir))
        num_classes = spec.num_classes
    keep, val = _split(len(train[1]), val_fraction, split_seed)
    to_split = lambda x, y: Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))  # noqa: E731
    if name == "digits":
        mean = tuple(float(v) for v in train[0][keep].reshape(-1, 3).mean(0) / 255)
        std = tuple(float(v) for v in train[0][keep].reshape(-1, 3).std(0) / 255)
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
    return Dataset(
        name=name,
        num_classes=num_classes,
        train=to_split(train[0][keep], train[1][keep]),
        val=to_split(train[0][val], train[1][val]),
        test=to_split(*test),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------------------------
# Batches and augmentation


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, per image) through HSV, as torchvision does."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        sel = (i == k).unsqueeze(1)
        out = torch.where(sel, torch.stack((rr, gg, bb), 1), out)
    return out


def _draws(gen: torch.Generator, total: int | None, rows: slice | None):
    """Random draws for a whole batch of ``total`` images, kept for ``rows`` only.

    A shard of a batch (one rank's part under DDP) draws exactly what the whole batch draws and
    keeps its own rows, so the generator advances identically on every rank and each image gets
    the augmentation it would get in a single process (`make_batch`'s ``shard``)."""
    keep = slice(None) if rows is None else rows

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n if total is None else total, generator=gen)[keep]

    def randint(high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n if total is None else total,), generator=gen)[keep]

    return rand, randint


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, *, total: int | None = None,
            rows: slice | None = None) -> torch.Tensor:
    """Augment a float NCHW batch in [0, 1] (before normalization); every draw comes from ``gen``
    (``x`` is rows ``rows`` of a batch of ``total`` images when both are given: `_draws`)."""
    n = x.shape[0]
    bri, con, sat, hue = cfg.jitter
    rand, _ = _draws(gen, total, rows)

    def factors(amount: float) -> torch.Tensor:
        return (1 - amount + 2 * amount * rand(n)).view(n, 1, 1, 1)

    if bri > 0:
        x = (x * factors(bri)).clamp_(0, 1)
    if con > 0:
        mean = _rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + factors(con) * (x - mean)).clamp_(0, 1)
    if sat > 0:
        gray = _rgb_to_gray(x)
        x = (gray + factors(sat) * (x - gray)).clamp_(0, 1)
    if hue > 0:
        x = _adjust_hue(x, (rand(n) * 2 - 1) * hue)
    return x


def spatial_augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, *, total: int | None = None,
                    rows: slice | None = None) -> torch.Tensor:
    """Random crop with zero padding, horizontal flip and Cutout on a normalized NCHW batch (a shard
    of a batch as in `augment`)."""
    n, _, h, w = x.shape
    rand, randint = _draws(gen, total, rows)
    p = cfg.crop_padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p))
        dy = randint(2 * p + 1, n)
        dx = randint(2 * p + 1, n)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * p)
        padded = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = padded.gather(3, cols)
    if cfg.flip:
        flip = rand(n) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if cfg.cutout > 0:
        cy = randint(h, n).view(n, 1, 1)
        cx = randint(w, n).view(n, 1, 1)
        yy = torch.arange(h).view(1, h, 1)
        xx = torch.arange(w).view(1, 1, w)
        half = cfg.cutout // 2
        # Cutout's hole spans [c - half, c + half) and is clipped at the borders.
        hole = (yy >= cy - half) & (yy < cy + cfg.cutout - half) & (xx >= cx - half) & (xx < cx + cfg.cutout - half)
        x = x.masked_fill(hole.unsqueeze(1), 0.0)
    return x


def make_batch(split: Split, idx: torch.Tensor, ds: Dataset, cfg: AugmentConfig | None,
               gen: torch.Generator | None, shard: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized float batch (augmented when ``cfg`` and ``gen`` are given) and its labels.

    ``shard``: only these rows of the batch ``idx`` (one rank's part under DDP); the generator
    draws for the whole batch all the same, so every rank's generator stays identical and the
    shards put together are the batch a single process would make."""
    total = len(idx) if shard is not None else None
    if shard is not None:
        idx = idx[shard]
    x = to_float(split.images[idx])
    if cfg is not None and gen is not None:
        x = augment(x, cfg, gen, total=total, rows=shard)
        x = spatial_augment(normalize(x, ds.mean, ds.std), cfg, gen, total=total, rows=shard)
    else:
        x = normalize(x, ds.mean, ds.std)
    return x, split.labels[idx]


def iterate(split: Split, batch_size: int, *, shuffle_gen: torch.Generator | None = None,
            drop_last: bool = False):
    """Index batches over a split, shuffled by ``shuffle_gen`` when given."""
    n = len(split)
    order = torch.randperm(n, generator=shuffle_gen) if shuffle_gen is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    """Write images (uint8 [N, 32, 32, 3]) as a CIFAR python-pickle batch (used by tests and tools)."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072), dtype=np.uint8)
    buf = io.BytesIO()
    pickle.dump({b"data": data, label_key: [int(v) for v in labels], b"batch_label": b"synthetic"}, buf, protocol=2)
    Path(path).write_bytes(buf.getvalue())
