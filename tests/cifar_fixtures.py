"""Write tiny CIFAR-10 / CIFAR-100 folders in the exact on-disk format of the python-version archives.

The real ``cifar-10-batches-py`` / ``cifar-100-python`` files are Python 2 pickles: dicts whose keys
(and label names) are Python 2 ``str``, so they load as ``str`` with ``encoding="latin1"`` (what
torchvision uses) and as ``bytes`` (``b"data"``) with ``encoding="bytes"`` (what the CIFAR web page
shows). `write_cifar10` and `write_cifar100` reproduce that: strings are written with the Python 2
``SHORT_BINSTRING`` opcode, images are a ``uint8`` array of shape (N, 3072) (1024 R, then G, then B
values per row, row-major 32x32), labels a list of ``int``.

torchvision checks each file's md5 against the real archive's; `trust_fixture_md5` points the dataset
class at the fixture files' own md5s (the integrity check still runs, on these files).

Usage in a test::

    root = write_cifar10(tmp_path)                     # tmp_path/cifar-10-batches-py/...
    trust_fixture_md5(monkeypatch, CIFAR10, root)
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CIFAR10_FILES", "CIFAR100_FILES", "trust_fixture_md5", "write_cifar10", "write_cifar100"]

#: data files of each layout, in torchvision's order: (folder, train files, test files, meta file).
CIFAR10_FILES = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta")
CIFAR100_FILES = ("cifar-100-python", ["train"], ["test"], "meta")

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us override how str is written
    """Protocol-2 pickler writing ``str`` as Python 2 byte strings (``SHORT_BINSTRING``/``BINSTRING``)."""

    def save_str(self, obj: str) -> None:
        self._write_binstring(obj.encode("latin1"))
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:  # numpy's raw array buffer: a Python 2 str as well
        self._write_binstring(obj)
        self.memoize(obj)

    def _write_binstring(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_str
    dispatch[bytes] = save_bytes


def _dump_py2(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def _images(rng: np.random.Generator, n: int, min_pixel: int = 0) -> np.ndarray:
    return rng.integers(min_pixel, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: str | Path, per_batch: int = 4, n_test: int = 10, seed: int = 0, min_pixel: int = 0) -> Path:
    """Write ``<root>/cifar-10-batches-py`` with ``5 * per_batch`` train and ``n_test`` test images.

    Labels cycle through the 10 classes, so every class appears once ``n >= 10``.

    Args:
        root: parent folder (the DataModule's ``data_dir``).
        per_batch: images in each of ``data_batch_1`` .. ``data_batch_5``.
        n_test: images in ``test_batch``.
        seed: seed of the random pixels.
        min_pixel: smallest pixel value (1: no black pixel, so a 0 can only come from padding).

    Returns:
        ``root`` as a `Path`.
    """
    root = Path(root)
    folder = root / CIFAR10_FILES[0]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = [(name, per_batch) for name in CIFAR10_FILES[1]] + [("test_batch", n_test)]
    for k, (name, n) in enumerate(batches):
        _dump_py2(
            {
                "batch_label": f"{'testing' if name == 'test_batch' else 'training'} batch {k + 1} of 5",
                "labels": [int(i % 10) for i in range(n)],
                "data": _images(rng, n, min_pixel),
                "filenames": [f"fixture_{k}_{i}.png" for i in range(n)],
            },
            folder / name,
        )
    _dump_py2({"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072},
              folder / "batches.meta")
    return root


#: The real CIFAR-100 fine -> coarse mapping (fine ids and coarse ids in alphabetical order of their names, as in
#: the dataset's meta file): fine 0-4 (apple, aquarium_fish, baby, bear, beaver) -> 4, 1, 14, 8, 0.
CIFAR100_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]
CIFAR100_COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]


def write_cifar100(root: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python`` (``train``, ``test``, ``meta``) with 100 fine / 20 coarse classes.

    Image i has the fine label ``7 i mod 100`` (every fine class once in 100 images) and its real coarse label
    (`CIFAR100_COARSE_OF_FINE`); the meta file has the real coarse names.

    Args:
        root: parent folder (the DataModule's ``data_dir``).
        n_train: images in ``train``.
        n_test: images in ``test``.
        seed: seed of the random pixels.

    Returns:
        ``root`` as a `Path`.
    """
    root = Path(root)
    folder = root / CIFAR100_FILES[0]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(i * 7 % 100) for i in range(n)]
        _dump_py2(
            {
                "filenames": [f"fixture_{name}_{i}.png" for i in range(n)],
                "batch_label": f"{'training' if name == 'train' else 'testing'} batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [CIFAR100_COARSE_OF_FINE[f] for f in fine],
                "data": _images(rng, n),
            },
            folder / name,
        )
    _dump_py2(
        {"fine_label_names": [f"fine_{i}" for i in range(100)],
         "coarse_label_names": CIFAR100_COARSE_NAMES},
        folder / "meta",
    )
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_fixture_md5(monkeypatch: Any, dataset_cls: type, root: str | Path) -> None:
    """Make torchvision's ``CIFAR10``/``CIFAR100`` (``dataset_cls``) accept the fixture files under ``root``.

    Replaces the class's ``train_list``, ``test_list`` and ``meta`` md5s by those of the files written
    under ``root`` (undone by ``monkeypatch`` at the end of the test).

    Raises:
        FileNotFoundError: a file of the layout is missing under ``root``.
    """
    folder = Path(root) / dataset_cls.base_folder
    missing = [f for f, _ in dataset_cls.train_list + dataset_cls.test_list if not (folder / f).is_file()]
    if missing or not (folder / dataset_cls.meta["filename"]).is_file():
        raise FileNotFoundError(f"expected the fixture files {missing or [dataset_cls.meta['filename']]} in {folder}")
    monkeypatch.setattr(dataset_cls, "train_list", [[f, _md5(folder / f)] for f, _ in dataset_cls.train_list])
    monkeypatch.setattr(dataset_cls, "test_list", [[f, _md5(folder / f)] for f, _ in dataset_cls.test_list])
    meta = dict(dataset_cls.meta, md5=_md5(folder / dataset_cls.meta["filename"]))
    monkeypatch.setattr(dataset_cls, "meta", meta)
