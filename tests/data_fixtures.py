"""Tiny datasets written in the exact on-disk formats of SVHN, CUB-200-2011, Adience and ImageNet.

Every writer returns what it wrote (paths, labels) so tests can assert exact values. Images are tiny
(16x16 by default) JPEGs written with PIL. ``REAL_DATA`` is the shared folder of real metadata:
``../shared/data`` beside the repository, or the folder named by the environment variable
``CRL_SHARED_DATA``; tests that read it skip when it is absent, saying what to put where.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
REAL_DATA = Path(os.environ.get("CRL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_ADIENCE = REAL_DATA / "adience"
REAL_CUB = REAL_DATA / "cub" / "CUB_200_2011"

needs_real_adience = pytest.mark.skipif(
    not all((REAL_ADIENCE / f"fold_{k}_data.txt").is_file() for k in range(5)),
    reason=f"real Adience fold files not found: put fold_0_data.txt .. fold_4_data.txt (the five official "
    f"fold files of the Adience benchmark, license-gated: https://talhassner.github.io/home/projects/Adience/"
    f"Adience-data.html; no images needed) in {REAL_ADIENCE}, i.e. ../shared/data/adience beside the "
    f"repository, or set CRL_SHARED_DATA to a folder holding adience/",
)
needs_real_cub = pytest.mark.skipif(
    not all((REAL_CUB / name).is_file() for name in ("image_class_labels.txt", "train_test_split.txt")),
    reason=f"real CUB metadata not found: put image_class_labels.txt and train_test_split.txt from "
    f"CUB_200_2011.tgz (https://data.caltech.edu/records/65de6-vp158; no images needed) in {REAL_CUB}, "
    f"i.e. ../shared/data/cub/CUB_200_2011 beside the repository, or set CRL_SHARED_DATA to a folder holding "
    f"cub/CUB_200_2011/",
)


def write_jpeg(path: Path, size: tuple[int, int] = (16, 16), mode: str = "RGB", seed: int = 0) -> Path:
    """A random ``size`` (W, H) JPEG in ``mode`` (``RGB``, ``L`` or ``CMYK``) at ``path``."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut the file at ``path`` to ``keep`` of its bytes (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ----- SVHN ---------------------------------------------------------------------------------------
def write_svhn_mat(root: Path, split: str, labels: list[int], seed: int = 0) -> np.ndarray:
    """``<root>/<split>_32x32.mat`` with ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) uint8 (10 = digit 0).

    Returns the images as (N, 32, 32, 3).
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0),
                                          "y": np.asarray(labels, dtype=np.uint8).reshape(-1, 1)})
    return images


def trust_svhn_md5(monkeypatch, root: Path) -> None:
    """Make torchvision's SVHN accept the fixture ``.mat`` files under ``root`` (their MD5s replace the official)."""
    import hashlib

    from torchvision.datasets import SVHN

    table = {split: [url, name, hashlib.md5((root / name).read_bytes()).hexdigest() if (root / name).is_file() else md5]
             for split, (url, name, md5) in SVHN.split_list.items()}
    monkeypatch.setattr(SVHN, "split_list", table)


# ----- CUB-200-2011 -------------------------------------------------------------------------------
CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 200: "200.Common_Yellowthroat"}


def write_cub(root: Path, per_class: tuple[int, int] = (3, 2), gray: int = 1, cmyk: int = 2,
              size: tuple[int, int] = (20, 16)) -> Path:
    """``<root>/CUB_200_2011`` with classes 1, 2, 200; ``per_class`` = (train, test) images per class.

    Image ids run 1..N class by class, train images first within a class. Image ``gray`` is grayscale,
    ``cmyk`` is CMYK. Boxes: ``x = y = 2, w = 10, h = 8`` except image 3 whose box runs past the edge
    (``x = 15, y = 10, w = 30, h = 30``). Returns the ``CUB_200_2011`` folder.
    """
    cub = root / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for class_id, folder in CUB_CLASSES.items():
        for j in range(sum(per_class)):
            image_id += 1
            name = f"{folder}/{folder.split('.')[1]}_{image_id:04d}_{j}.jpg"
            mode = "L" if image_id == gray else "CMYK" if image_id == cmyk else "RGB"
            write_jpeg(cub / "images" / name, size, mode, seed=image_id)
            images.append(f"{image_id} {name}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(j < per_class[0])}")
            box = "15.0 10.0 30.0 30.0" if image_id == 3 else "2.0 2.0 10.0 8.0"
            boxes.append(f"{image_id} {box}")
    cub.mkdir(parents=True, exist_ok=True)
    (cub / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in CUB_CLASSES.items()))
    for name, lines in [("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)]:
        (cub / name).write_text("\n".join(lines) + "\n")
    return cub


# ----- Adience ------------------------------------------------------------------------------------
ADIENCE_HEADER = ("user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
                  "fiducial_yaw_angle\tfiducial_score")
ADIENCE_GROUPS = ["(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)"]
#: Extra rows of every fold: (age, gender, group under age_policy="nearest" or None).
ADIENCE_EXTRA = [("None", "u", None), ("35", "", 5), ("(27, 32)", "m", 4)]


def adience_user(fold: int, j: int) -> str:
    return f"{1000 + 10 * fold + j}@N0{fold}"


def write_adience(root: Path, subjects_per_fold: int = 4, faces_per_subject: int = 4, images: bool = True,
                  leak_user: str | None = None) -> dict[int, list[dict[str, str]]]:
    """Five fold files ``<root>/fold_{k}_data.txt`` (no final newline) and ``faces/`` JPEGs (8x8).

    Fold k has ``subjects_per_fold`` subjects (`adience_user`), each with ``faces_per_subject`` faces of
    canonical age groups ``(2j + i + k) % 8`` and genders alternating f, m; then the 3 rows of
    `ADIENCE_EXTRA` (first subject). ``leak_user`` adds a row of that user to fold 4. Returns the rows.
    """
    folds: dict[int, list[dict[str, str]]] = {}
    face_id = 0
    for k in range(5):
        rows = []
        for j in range(subjects_per_fold):
            for i in range(faces_per_subject):
                face_id += 1
                rows.append({"user_id": adience_user(k, j), "original_image": f"{9000 + face_id}_ab{face_id:02d}_o.jpg",
                             "face_id": str(face_id), "age": ADIENCE_GROUPS[(2 * j + i + k) % 8],
                             "gender": "fm"[i % 2]})
        for age, gender, _ in ADIENCE_EXTRA:
            face_id += 1
            rows.append({"user_id": adience_user(k, 0), "original_image": f"{9000 + face_id}_cd_o.jpg",
                         "face_id": str(face_id), "age": age, "gender": gender})
        if k == 4 and leak_user is not None:
            face_id += 1
            rows.append({"user_id": leak_user, "original_image": f"{9000 + face_id}_ef_o.jpg",
                         "face_id": str(face_id), "age": "(0, 2)", "gender": "f"})
        folds[k] = rows
        lines = [ADIENCE_HEADER] + [
            "\t".join([r["user_id"], r["original_image"], r["face_id"], r["age"], r["gender"],
                       "0", "414", "1086", "1383", "-115", "30", "17"]) for r in rows
        ]
        root.mkdir(parents=True, exist_ok=True)
        (root / f"fold_{k}_data.txt").write_text("\n".join(lines))  # the real files have no final newline
        if images:
            for r in rows:
                path = root / "faces" / r["user_id"] / f"coarse_tilt_aligned_face.{r['face_id']}.{r['original_image']}"
                write_jpeg(path, (8, 8), seed=int(r["face_id"]))
    return folds


# ----- ImageNet -----------------------------------------------------------------------------------
SYNSETS = ("n01440764", "n01443537", "n02119789")


def write_imagenet(root: Path, train_per_class: int = 3, val_per_class: int = 2, flat_val: bool = True,
                   size: tuple[int, int] = (20, 16)) -> dict[str, list[tuple[str, str]]]:
    """``train/<synset>/<synset>_<i>.JPEG`` and a val folder, flat (+ ``LOC_val_solution.csv`` in ``root``)
    or class folders. Val images are numbered so that synsets interleave (file order != class order).

    Returns ``{"train": [(path, synset)], "val": [(path, synset)]}``.
    """
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for c, synset in enumerate(SYNSETS):
        for i in range(train_per_class):
            path = write_jpeg(root / "train" / synset / f"{synset}_{i}.JPEG", size, seed=100 * c + i)
            out["train"].append((str(path), synset))
    rows = []
    for i in range(val_per_class * len(SYNSETS)):
        synset = SYNSETS[(len(SYNSETS) - 1 - i) % len(SYNSETS)]
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        folder = root / "val" if flat_val else root / "val" / synset
        path = write_jpeg(folder / f"{stem}.JPEG", size, seed=1000 + i)
        out["val"].append((str(path), synset))
        rows.append(f"{stem},{synset} 1 2 10 12 {synset} 3 4 8 9 ")
    if flat_val:
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    return out


# ----- ImageFolder trees --------------------------------------------------------------------------
#: Class folders in a deliberately unsorted creation order; sorted (torchvision's order) they are
#: ["Zebra", "apple", "mango"] (upper case sorts first).
FOLDER_CLASSES = ("mango", "Zebra", "apple")


def write_image_folder(root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (8, 8),
                       fmt: str = "PNG") -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """``<root>/<split>/<class>/<i>.png`` for the `FOLDER_CLASSES`; ``counts``: images per class per split.

    Default ``{"train": 10, "test": 4}``. Pixels are random (seeded by split, class and index); PNG is
    lossless, so the returned arrays are exactly what a decoder reads. Returns
    ``{split: [(path, class, (H, W, 3) uint8 array)]}``.
    """
    counts = counts or {"train": 10, "test": 4}
    out: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for s, (split, n) in enumerate(counts.items()):
        out[split] = []
        for c, name in enumerate(FOLDER_CLASSES):
            for i in range(n):
                rng = np.random.default_rng(10_000 * s + 100 * c + i)
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                path = root / split / name / f"{i:03d}.{fmt.lower()}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, format=fmt)
                out[split].append((str(path), name, pixels))
    return out
