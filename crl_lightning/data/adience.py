"""Adience faces: the official five subject-exclusive folds, age groups (8) or gender (2).

Data layout (as distributed by the Open University of Israel, license-gated, no download):

    <data_dir>/fold_0_data.txt .. fold_4_data.txt
    <data_dir>/faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>     (faces.tar.gz)
    <data_dir>/aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>      (aligned.tar.gz)

The fold files are tab-separated with a header and 12 columns; the real ones have 19,370 rows of
168 subjects (``user_id``), no subject in two folds, 4,484 / 3,730 / 3,894 / 3,446 / 3,816 rows.
The benchmark (Levi & Hassner 2015, used by the paper, Sec. IV-A-1) keeps the rows whose age is one
of the 8 groups; see `ADIENCE_AGE_MAP` for every age string of the real files.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset
from torchvision.transforms import v2

from crl_lightning.data import transforms as T
from crl_lightning.data.datasets import BadImagePolicy, ImageFileDataset, check_files_exist
from crl_lightning.data.files import ImageFileDataModule
from crl_lightning.data.splits import check_subject_exclusive, subject_kfold, subject_train_val_split

__all__ = [
    "ADIENCE_AGE_GROUPS",
    "ADIENCE_AGE_MAP",
    "ADIENCE_FOLD_COLUMNS",
    "ADIENCE_GENDERS",
    "AdienceDataModule",
    "AdienceFace",
    "AdienceFaces",
    "adience_label",
    "nearest_age_group",
    "read_adience_fold",
    "read_adience_folds",
]

ADIENCE_URL = "https://talhassner.github.io/home/projects/Adience/Adience-data.html"
ADIENCE_HOWTO = (
    f"Adience is license-gated and is not downloaded by this package: request access at {ADIENCE_URL}, "
    "then extract the fold_{0..4}_data.txt files and faces.tar.gz (or aligned.tar.gz) into data_dir"
)

#: Header of every ``fold_{k}_data.txt`` (tab-separated).
ADIENCE_FOLD_COLUMNS = (
    "user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy", "tilt_ang",
    "fiducial_yaw_angle", "fiducial_score",
)
#: The 8 age groups of the benchmark, in class-index order 0..7 (ordinal).
ADIENCE_AGE_GROUPS = (
    "(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)",
)
#: Gender string -> class index (alphabetical); ``u`` (unknown) and empty rows are dropped.
ADIENCE_GENDERS = {"f": 0, "m": 1}

#: Every age string of the real fold files -> age group index (0..7) under ``age_policy="nearest"``,
#: ``None`` for ``"None"`` (no age). Under ``"drop"`` only the 8 canonical strings are kept.
#: Rule (`nearest_age_group`): a bare age, or the midpoint of a range, goes to the group interval at the
#: smallest distance; ties (3 and 35, equally far from two groups) go to the older group.
#: Row counts in the real files (19,370 rows) are in the comments; the 8 groups cover 17,393 rows.
ADIENCE_AGE_MAP: dict[str, int | None] = {
    "(0, 2)": 0,  # 2,488
    "(4, 6)": 1,  # 2,140
    "(8, 12)": 2,  # 2,124
    "(15, 20)": 3,  # 1,642
    "(25, 32)": 4,  # 5,004
    "(38, 43)": 5,  # 2,293
    "(48, 53)": 6,  # 830
    "(60, 100)": 7,  # 872
    "None": None,  # 748: no age annotated, dropped under every policy
    "2": 0,  # 3
    "3": 1,  # 18: tie (0, 2)/(4, 6) -> older
    "13": 2,  # 168
    "22": 3,  # 149
    "23": 4,  # 96
    "29": 4,  # 11
    "32": 4,  # 3
    "34": 4,  # 105
    "35": 5,  # 293: tie (25, 32)/(38, 43) -> older
    "36": 5,  # 56
    "42": 5,  # 1
    "45": 5,  # 88
    "46": 6,  # 1
    "55": 6,  # 76
    "56": 6,  # 2
    "57": 7,  # 24
    "58": 7,  # 5
    "(27, 32)": 4,  # 77
    "(38, 42)": 5,  # 46
    "(38, 48)": 5,  # 6: midpoint 43
    "(8, 23)": 3,  # 1: midpoint 15.5
}

_GROUP_BOUNDS = tuple(tuple(int(v) for v in g.strip("()").split(",")) for g in ADIENCE_AGE_GROUPS)
_RANGE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def nearest_age_group(age: str) -> int | None:
    """The age group nearest to an age string: a bare integer or a ``(lo, hi)`` range (its midpoint).

    Distance is from the age to the group's closed interval; ties go to the older group. ``"None"`` and
    unparseable strings give ``None``. `ADIENCE_AGE_MAP` is this rule written out for the real files.

    Example:
        >>> nearest_age_group("34"), nearest_age_group("35"), nearest_age_group("(38, 48)")
        (4, 5, 5)
    """
    match = _RANGE.fullmatch(age.strip())
    if match:
        value = (int(match.group(1)) + int(match.group(2))) / 2
    elif age.strip().isdigit():
        value = float(age)
    else:
        return None
    distances = [max(lo - value, 0.0, value - hi) for lo, hi in _GROUP_BOUNDS]
    best = min(distances)
    return max(i for i, d in enumerate(distances) if d == best)


class AdienceFace(NamedTuple):
    """One row of a fold file (strings as written; ``age``/``gender`` may be ``"None"`` or empty)."""

    user_id: str
    original_image: str
    face_id: str
    age: str
    gender: str
    fold: int
    line: int


def read_adience_fold(path: str | Path, fold: int) -> list[AdienceFace]:
    """Parse one ``fold_{k}_data.txt`` with the ``csv`` module (``"None"`` and empty strings kept as is).

    Args:
        path: the fold file.
        fold: its fold index, stored in every row.

    Returns:
        One `AdienceFace` per data row, in file order.

    Raises:
        FileNotFoundError: the file is missing (the message says how to obtain Adience).
        ValueError: the header is not `ADIENCE_FOLD_COLUMNS`, a row does not have 12 fields, or a
            ``user_id``/``original_image``/``face_id`` is empty or ``face_id`` is not an integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Adience: expected the fold file {path}, found none. {ADIENCE_HOWTO}")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != ADIENCE_FOLD_COLUMNS:
            raise ValueError(f"{path}:1: expected the header {list(ADIENCE_FOLD_COLUMNS)}, got {header}")
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != len(ADIENCE_FOLD_COLUMNS):
                raise ValueError(f"{path}:{line}: expected {len(ADIENCE_FOLD_COLUMNS)} tab-separated fields, "
                                 f"got {len(fields)}: {fields}")
            user_id, image, face_id, age, gender = (v.strip() for v in fields[:5])
            if not (user_id and image and face_id.isdigit()):
                raise ValueError(
                    f"{path}:{line}: expected a user_id, an original_image and an integer face_id, "
                    f"got {user_id!r}, {image!r}, {face_id!r}"
                )
            rows.append(AdienceFace(user_id, image, face_id, age, gender, fold, line))
    return rows


def read_adience_folds(folds_dir: str | Path, num_folds: int = 5) -> list[AdienceFace]:
    """All rows of ``fold_0_data.txt .. fold_{num_folds-1}_data.txt`` in ``folds_dir``, fold by fold.

    Raises:
        FileNotFoundError, ValueError: see `read_adience_fold`.
    """
    rows: list[AdienceFace] = []
    for k in range(num_folds):
        rows.extend(read_adience_fold(Path(folds_dir) / f"fold_{k}_data.txt", k))
    return rows


def adience_label(row: AdienceFace, task: str, age_policy: str = "drop") -> tuple[int | None, str]:
    """The class of a row and, when it has none, why: ``(label, "")`` or ``(None, reason)``.

    Args:
        row: a parsed fold-file row.
        task: ``"age"`` (8 groups, `ADIENCE_AGE_GROUPS` order) or ``"gender"`` (`ADIENCE_GENDERS`).
        age_policy: ``"drop"`` keeps only the 8 canonical age strings; ``"nearest"`` maps the others
            through `ADIENCE_AGE_MAP`. ``"None"`` ages are dropped under both.

    Raises:
        ValueError: an age or gender string that is not in the known vocabulary (names file line).
    """
    if task == "age":
        if row.age not in ADIENCE_AGE_MAP:
            raise ValueError(f"Adience fold {row.fold} line {row.line}: expected an age string among "
                             f"{list(ADIENCE_AGE_MAP)}, got {row.age!r}")
        group = ADIENCE_AGE_MAP[row.age]
        if group is None:
            return None, "age None"
        if row.age in ADIENCE_AGE_GROUPS or age_policy == "nearest":
            return group, ""
        return None, "non-canonical age"
    if task == "gender":
        if row.gender in ADIENCE_GENDERS:
            return ADIENCE_GENDERS[row.gender], ""
        if row.gender in ("u", ""):
            return None, f"gender {row.gender or 'empty'}"
        raise ValueError(
            f"Adience fold {row.fold} line {row.line}: expected a gender among m, f, u or empty, "
            f"got {row.gender!r}"
        )
    raise ValueError(f"task: expected 'age' or 'gender', got {task!r}")


#: image_set -> (folder, file prefix) of the face crops.
IMAGE_SETS = {
    "coarse_tilt_aligned": ("faces", "coarse_tilt_aligned_face"),
    "landmark_aligned": ("aligned", "landmark_aligned_face"),
}


class AdienceFaces(ImageFileDataset):
    """Adience face crops with their labels; ``dataset[i]`` is ``(PIL RGB image, int label)``.

    Args:
        root: ``data_dir`` holding ``faces/`` (or ``aligned/``).
        faces: the rows of the split.
        labels: one class per row.
        image_set: ``"coarse_tilt_aligned"`` (``faces/``, default) or ``"landmark_aligned"`` (``aligned/``).
        bad_images: ``"raise"`` or ``"skip"`` undecodable files.
        check_files: raise at construction when image files are missing.

    Attributes:
        faces: the rows.
        groups: the subject (``user_id``) of every sample, for subject-exclusive splitting.

    Raises:
        FileNotFoundError: image files are missing; names the first ones and how to obtain Adience.
    """

    def __init__(
        self,
        root: str | Path,
        faces: list[AdienceFace],
        labels: list[int],
        image_set: str = "coarse_tilt_aligned",
        bad_images: BadImagePolicy = "raise",
        check_files: bool = True,
    ) -> None:
        folder, prefix = IMAGE_SETS[image_set]
        base = Path(root) / folder
        paths = [base / f.user_id / f"{prefix}.{f.face_id}.{f.original_image}" for f in faces]
        if check_files:
            check_files_exist(paths, "Adience: face images",
                              f"expected {folder}/<user_id>/{prefix}.<face_id>.<original_image>. {ADIENCE_HOWTO}")
        super().__init__(paths, labels, bad_images)
        self.faces = faces
        self.groups = [f.user_id for f in faces]


def face_train(size: int, resize: int, stats: T.Stats = T.IMAGENET_STATS) -> v2.Compose:
    """Resize the short side to ``resize``, random ``size`` crop, flip, normalise (Levi & Hassner 2015)."""
    return v2.Compose([
        v2.ToImage(), v2.Resize(resize, antialias=True), v2.RandomCrop(size), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats),
    ])


class AdienceDataModule(ImageFileDataModule):
    """Adience age-group (8 classes) or gender (2 classes) classification, one fold of the five-fold protocol.

    ``fold`` is the test fold; the other four train. Validation holds out whole subjects (about
    ``val_split`` of the training faces, class-stratified, seeded) from the training folds; with
    ``val_split=0`` validation runs on the test fold (as a test curve only: do not select checkpoints on it).
    With ``redraw_folds`` the five folds are re-drawn from all labelled rows with `subject_kfold`
    (subject-exclusive, class-stratified, ``seed``) instead of the official files' folds.

    At setup the module reads all five fold files, drops unlabelled rows (logging how many, by reason,
    in `drop_counts`), verifies that no subject is in both train and test (and train and val), and that
    every image file exists. Train images: resize ``resize_size`` + random crop ``image_size`` + flip; eval:
    resize + center crop; ImageNet normalisation. Paper setting (Sec. IV-A-2): ResNet-34, 120 epochs,
    lr 0.1 divided by 10 after epoch 60 and by 100 after epoch 80; report exact and one-off accuracy
    (`crl_lightning.cv`).

    Args:
        data_dir: folder with ``faces/`` (or ``aligned/``) and, unless ``folds_dir`` is given, the fold files.
        task: ``"age"`` (8 groups in `ADIENCE_AGE_GROUPS` order) or ``"gender"`` (f=0, m=1).
        fold: test fold, 0..4.
        age_policy: ``"drop"`` (benchmark default) keeps only rows with one of the 8 group strings;
            ``"nearest"`` maps every other age string to its nearest group (`ADIENCE_AGE_MAP`). Rows with age
            ``None`` are dropped under both. Unused for ``task="gender"`` (rows with gender ``u`` or empty
            are dropped).
        redraw_folds: re-draw the five folds with `subject_kfold` instead of using the official ones.
        image_set: ``"coarse_tilt_aligned"`` (``faces/``) or ``"landmark_aligned"`` (``aligned/``).
        folds_dir: folder with ``fold_{k}_data.txt`` when not ``data_dir``.
        val_split: fraction in ``[0, 0.5]`` of the training faces held out, by subject, for validation.
        **kwargs: the other options of `ImageFileDataModule` (``image_size``; ``resize_size``, here the short
            side of train and eval images before the crop; ``batch_size``) and `ImageDataModule` (loader
            options, ``seed``: of the validation split and of re-drawn folds; ``bad_images``, ``augment``).

    Raises:
        ValueError: bad arguments; at setup, malformed fold files, unknown age/gender strings, a subject in
            two splits, or too few subjects for the validation split.
        FileNotFoundError: at setup, missing fold files or face images (the message says how to get Adience).
    """

    num_folds = 5

    def __init__(
        self,
        data_dir: str | Path = "data/adience",
        task: Literal["age", "gender"] = "age",
        fold: int = 0,
        age_policy: Literal["drop", "nearest"] = "drop",
        redraw_folds: bool = False,
        image_set: Literal["coarse_tilt_aligned", "landmark_aligned"] = "coarse_tilt_aligned",
        folds_dir: str | Path | None = None,
        val_split: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, val_split=val_split, **kwargs)
        checks = {
            "task": (task, ("age", "gender")),
            "age_policy": (age_policy, ("drop", "nearest")),
            "image_set": (image_set, tuple(IMAGE_SETS)),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
        if not 0 <= fold < self.num_folds:
            raise ValueError(f"fold: expected a test fold in 0..{self.num_folds - 1}, got {fold}")
        if val_split > 0.5:
            raise ValueError(f"val_split: expected a fraction of subjects in [0, 0.5], got {val_split}")
        self.task, self.fold, self.age_policy = task, fold, age_policy
        self.redraw_folds, self.image_set = redraw_folds, image_set
        self.folds_dir = Path(folds_dir).expanduser() if folds_dir is not None else self.data_dir
        #: rows dropped at setup, by reason (e.g. ``{"age None": 748, "non-canonical age": 1229}``).
        self.drop_counts: Counter[str] = Counter()
        self._split_rows: dict[str, tuple[list[AdienceFace], list[int]]] | None = None

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """8 age groups or 2 genders."""
        return len(ADIENCE_AGE_GROUPS) if self.task == "age" else len(ADIENCE_GENDERS)

    @property
    def classes(self) -> list[str]:
        """Class names in class-index order: the age groups (``0-2``, ..., ``60-100``) or ``f``, ``m``."""
        if self.task == "age":
            return [group.strip("()").replace(", ", "-") for group in ADIENCE_AGE_GROUPS]
        return sorted(ADIENCE_GENDERS, key=ADIENCE_GENDERS.__getitem__)

    @property
    def has_val_split(self) -> bool:  # type: ignore[override]
        """True when validation is drawn by subject from the training folds (``val_split > 0``)."""
        return self.val_split > 0

    def split_rows(self) -> dict[str, tuple[list[AdienceFace], list[int]]]:
        """``{"train" | "val" | "test": (rows, labels)}`` of the chosen fold, computed once and checked.

        Raises:
            ValueError: a subject is in both train and test (or train and val), or see `read_adience_fold`.
        """
        if self._split_rows is not None:
            return self._split_rows
        rows = read_adience_folds(self.folds_dir, self.num_folds)
        faces, labels = [], []
        self.drop_counts = Counter()
        for row in rows:
            label, reason = adience_label(row, self.task, self.age_policy)
            if label is None:
                self.drop_counts[reason] += 1
            else:
                faces.append(row)
                labels.append(label)
        groups = [f.user_id for f in faces]
        if self.redraw_folds:
            fold_of = np.empty(len(faces), dtype=np.int64)
            for k, (_, test_idx) in enumerate(subject_kfold(labels, groups, self.num_folds, seed=self.seed)):
                fold_of[test_idx] = k
        else:
            fold_of = np.asarray([f.fold for f in faces], dtype=np.int64)
        test_idx = np.flatnonzero(fold_of == self.fold)
        train_idx = np.flatnonzero(fold_of != self.fold)
        check_subject_exclusive(groups, train_idx.tolist(), test_idx.tolist(), ("train", f"test fold {self.fold}"))
        val_idx = np.empty(0, dtype=np.int64)
        if self.val_split > 0:
            tr, va = subject_train_val_split(
                [labels[i] for i in train_idx], [groups[i] for i in train_idx], self.val_split, self.seed
            )
            train_idx, val_idx = train_idx[tr], train_idx[va]
            check_subject_exclusive(groups, train_idx, val_idx, ("train", "val"))
        splits = {"train": train_idx, "val": val_idx, "test": test_idx}
        self._split_rows = {k: ([faces[i] for i in v], [labels[i] for i in v]) for k, v in splits.items()}
        dropped = sum(self.drop_counts.values())
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.drop_counts.items())) or "none"
        sizes = " / ".join(f"{k} {len(v):,}" for k, v in splits.items())
        subjects = " / ".join(str(len({groups[i] for i in v})) for v in splits.values())
        folds = "re-drawn" if self.redraw_folds else "official"
        policy = f", age_policy={self.age_policy}" if self.task == "age" else ""
        rank_zero_info(
            f"Adience {self.task} (test fold {self.fold}, {folds} folds{policy}): "
            f"{len(rows):,} rows, dropped {dropped:,} ({reasons}); {sizes} faces of {subjects} subjects"
        )
        return self._split_rows

    def build_dataset(self, split: str) -> Dataset:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        faces, labels = self.split_rows()[split]
        return AdienceFaces(self.data_dir, faces, labels, self.image_set, self.bad_images)

    def train_transform(self) -> Callable:
        return face_train(self.image_size, self.resize_size)
