"""AdienceDataModule: fold files + aligned faces in the real format, label maps, subject exclusivity, CLI."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from data_fixtures import (
    ADIENCE_GROUPS,
    CONFIGS,
    REAL_ADIENCE,
    adience_user,
    needs_real_adience,
    write_adience,
)

from crl_lightning.cli import build_cli
from crl_lightning.data import AdienceDataModule
from crl_lightning.data.adience import (
    ADIENCE_AGE_GROUPS,
    ADIENCE_AGE_MAP,
    adience_label,
    nearest_age_group,
    read_adience_fold,
    read_adience_folds,
)

# Fixture: 5 folds x (4 subjects x 4 canonical faces + 3 extra rows: None/u, "35"/"", "(27, 32)"/m) = 95 rows.


@pytest.fixture
def adience(tmp_path):
    root = tmp_path / "adience"
    return root, write_adience(root)


def test_read_fold_keeps_none_and_empty_strings(adience):
    root, written = adience
    assert not (root / "fold_0_data.txt").read_text().endswith("\n")  # as the real files
    rows = read_adience_fold(root / "fold_3_data.txt", 3)
    assert len(rows) == 19
    assert [(r.age, r.gender) for r in rows[-3:]] == [("None", "u"), ("35", ""), ("(27, 32)", "m")]
    assert rows[0].user_id == adience_user(3, 0) and rows[0].fold == 3 and rows[0].line == 2
    assert [r.face_id for r in rows] == [w["face_id"] for w in written[3]]
    assert len(read_adience_folds(root)) == 95


def test_age_map_is_the_documented_rule():
    assert list(ADIENCE_AGE_MAP)[:8] == list(ADIENCE_AGE_GROUPS) == ADIENCE_GROUPS
    assert len(ADIENCE_AGE_MAP) == 30
    for i, group in enumerate(ADIENCE_AGE_GROUPS):
        assert ADIENCE_AGE_MAP[group] == i
    for age, group in ADIENCE_AGE_MAP.items():
        assert nearest_age_group(age) == group, age
    assert ADIENCE_AGE_MAP["None"] is None
    assert (ADIENCE_AGE_MAP["3"], ADIENCE_AGE_MAP["35"]) == (1, 5)  # ties go to the older group
    assert (ADIENCE_AGE_MAP["13"], ADIENCE_AGE_MAP["22"], ADIENCE_AGE_MAP["23"]) == (2, 3, 4)
    assert (ADIENCE_AGE_MAP["(8, 23)"], ADIENCE_AGE_MAP["(38, 48)"], ADIENCE_AGE_MAP["57"]) == (3, 5, 7)


def test_labels_per_policy_and_task(adience):
    root, _ = adience
    rows = read_adience_fold(root / "fold_0_data.txt", 0)
    none_row, row_35, row_27_32 = rows[-3:]
    assert adience_label(rows[0], "age") == (ADIENCE_GROUPS.index(rows[0].age), "")
    assert adience_label(none_row, "age", "nearest") == (None, "age None")
    assert adience_label(row_35, "age", "drop") == (None, "non-canonical age")
    assert adience_label(row_35, "age", "nearest") == (5, "")
    assert adience_label(row_27_32, "age", "nearest") == (4, "")
    assert adience_label(rows[0], "gender") == (0, "")  # f
    assert adience_label(rows[1], "gender") == (1, "")  # m
    assert adience_label(none_row, "gender") == (None, "gender u")
    assert adience_label(row_35, "gender") == (None, "gender empty")


def test_age_fold_sizes_drops_and_subject_exclusive_val(adience):
    root, _ = adience
    dm = AdienceDataModule(root, fold=2, image_size=8, batch_size=4, val_split=0.25)
    assert dm.num_classes == 8
    dm.setup("fit")
    dm.setup("test")
    assert dm.drop_counts == Counter({"age None": 5, "non-canonical age": 10})
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["test"] == 16 and sizes["train"] + sizes["val"] == 64
    groups = {k: {f.user_id for f in v.dataset.faces} for k, v in dm.datasets.items()}
    assert groups["test"] == {adience_user(2, j) for j in range(4)}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["train"]
    assert len(groups["val"]) == 4 and len(groups["train"]) == 12  # 1/4 of the 16 training subjects
    faces = dm.datasets["test"].dataset.faces
    assert dm.datasets["test"].targets == [ADIENCE_GROUPS.index(f.age) for f in faces]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_nearest_policy_and_gender_task(adience):
    root, _ = adience
    dm = AdienceDataModule(root, fold=0, age_policy="nearest", val_split=0.0)
    dm.setup("test")
    assert dm.drop_counts == Counter({"age None": 5})
    assert len(dm.datasets["test"]) == 18
    assert dm.datasets["test"].targets[-2:] == [5, 4]  # "35" -> (38, 43), "(27, 32)" -> (25, 32)
    gender = AdienceDataModule(root, task="gender", fold=0, val_split=0.0)
    assert gender.num_classes == 2
    gender.setup("test")
    assert gender.drop_counts == Counter({"gender u": 5, "gender empty": 5})
    assert len(gender.datasets["test"]) == 17 and Counter(gender.datasets["test"].targets) == {0: 8, 1: 9}


def test_drops_are_logged(adience, caplog):
    root, _ = adience
    dm = AdienceDataModule(root, fold=1, val_split=0.0)
    with caplog.at_level(logging.INFO):
        dm.setup("test")
    assert "95 rows, dropped 15 (age None: 5, non-canonical age: 10)" in caplog.text


def test_val_split_zero_validates_on_test_fold(adience):
    root, _ = adience
    dm = AdienceDataModule(root, fold=4, val_split=0.0, image_size=8)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 64 and len(dm.datasets["val"]) == 16


def test_subject_in_two_folds_raises(tmp_path):
    write_adience(tmp_path, leak_user=adience_user(1, 2))
    dm = AdienceDataModule(tmp_path, fold=4, val_split=0.0)
    with pytest.raises(ValueError, match=r"subject leak: .*train and test fold 4, got 1: \['1012@N01'\]"):
        dm.setup("test")
    AdienceDataModule(tmp_path, fold=0, val_split=0.0).setup("test")  # fold 0 vs the rest: no shared subject


def test_redrawn_folds_partition_subject_exclusive_and_seeded(adience):
    root, _ = adience
    tests = []
    for k in range(5):
        dm = AdienceDataModule(root, fold=k, redraw_folds=True, seed=3, val_split=0.0)
        rows = dm.split_rows()
        tests.append({(f.user_id, f.face_id) for f in rows["test"][0]})
        train_users = {f.user_id for f in rows["train"][0]}
        assert not train_users & {f.user_id for f in rows["test"][0]}
    assert sum(len(t) for t in tests) == 80 and len(set().union(*tests)) == 80
    again = AdienceDataModule(root, fold=2, redraw_folds=True, seed=3, val_split=0.0).split_rows()["test"][0]
    assert {(f.user_id, f.face_id) for f in again} == tests[2]
    official = AdienceDataModule(root, fold=2, val_split=0.0).split_rows()["test"][0]
    fold_2 = read_adience_fold(root / "fold_2_data.txt", 2)
    expected = {(r.user_id, r.face_id) for r in fold_2 if r.age in ADIENCE_GROUPS}
    assert {(f.user_id, f.face_id) for f in official} == expected


def test_missing_image_names_file_and_how_to_get_adience(adience):
    root, written = adience
    row = written[2][5]
    path = root / "faces" / row["user_id"] / f"coarse_tilt_aligned_face.{row['face_id']}.{row['original_image']}"
    path.unlink()
    dm = AdienceDataModule(root, fold=2, val_split=0.0)
    with pytest.raises(FileNotFoundError, match=rf"face images: 1 of 16 are missing.*{path.name}.*license-gated"):
        dm.setup("test")


def test_landmark_aligned_images_and_separate_folds_dir(adience, tmp_path):
    root, _ = adience
    folds = tmp_path / "folds"
    folds.mkdir()
    for k in range(5):
        (root / f"fold_{k}_data.txt").rename(folds / f"fold_{k}_data.txt")
    for path in (root / "faces").rglob("*.jpg"):
        name = path.name.replace("coarse_tilt_aligned_face", "landmark_aligned_face")
        target = root / "aligned" / path.parent.name / name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    with pytest.raises(FileNotFoundError, match=r"expected the fold file .*adience/fold_0_data\.txt"):
        AdienceDataModule(root, val_split=0.0).setup("test")
    with pytest.raises(FileNotFoundError, match=r"face images: 16 of 16 are missing.*faces/<user_id>/coarse_tilt"):
        AdienceDataModule(root, folds_dir=folds, val_split=0.0).setup("test")
    dm = AdienceDataModule(root, folds_dir=folds, image_set="landmark_aligned", val_split=0.0, image_size=8)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 16
    assert "/aligned/" in dm.datasets["test"].dataset.paths[0] and dm.datasets["test"][0][0].shape == (3, 8, 8)


def test_missing_fold_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fold_0_data\.txt.*license-gated.*talhassner"):
        AdienceDataModule(tmp_path).setup("fit")


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda lines: ["user_id\tage"] + lines[1:], ValueError, r"fold_1_data\.txt:1: expected the header"),
        (lambda lines: lines[:3] + ["1@N01\tx.jpg\t5"] + lines[4:], ValueError, r"fold_1_data\.txt:4: expected 12 tab"),
        (lambda lines: lines[:3] + [lines[3].replace("(", "[")] + lines[4:], ValueError,
         r"fold 1 line 4: expected an age string among .*got '\["),
        (lambda lines: lines[:3] + [lines[3].replace("\tf\t", "\tF\t").replace("\tm\t", "\tM\t")] + lines[4:],
         ValueError, r"fold 1 line 4: expected a gender among m, f, u or empty, got '[FM]'"),
    ],
)
def test_malformed_fold_file(adience, edit, error, match):
    root, _ = adience
    path = root / "fold_1_data.txt"
    path.write_text("\n".join(edit(path.read_text().split("\n"))))
    task = "gender" if "gender" in match else "age"
    with pytest.raises(error, match=match):
        AdienceDataModule(root, task=task, val_split=0.0).setup("test")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"fold: expected a test fold in 0\.\.4, got 5"):
        AdienceDataModule(fold=5)
    with pytest.raises(ValueError, match=r"task: expected one of \['age', 'gender'\], got 'race'"):
        AdienceDataModule(task="race")
    with pytest.raises(ValueError, match=r"val_split: expected a fraction of subjects in \[0, 0\.5\]"):
        AdienceDataModule(val_split=0.6)


def test_too_few_subjects_for_val_split(adience):
    root, _ = adience
    with pytest.raises(ValueError, match=r"expected at least 20 distinct groups \(subjects\), got 16"):
        AdienceDataModule(root, val_split=0.05).setup("fit")


@pytest.mark.usefixtures("one_thread")
def test_cli_fast_dev_run_on_fold_2(adience, tmp_path):
    root, written = adience
    cli = build_cli([
        "fit", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--data.fold", "2", "--trainer.fast_dev_run", "1",
        "--data.data_dir", str(root), "--data.image_size", "32", "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.pin_memory", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ])
    assert cli.trainer.global_step == 1 and cli.model.hparams.num_classes == 8
    # test_after_fit (no checkpoint under fast_dev_run: the weights in memory) on the first 4 faces of fold 2
    images, target = next(iter(cli.datamodule.test_dataloader()))
    assert target.tolist() == [ADIENCE_GROUPS.index(r["age"]) for r in written[2][:4]]
    model = cli.model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["test_top1_err"] == pytest.approx(25.0 * int((predicted != target).sum()))
    assert metrics["test_exact_acc"] == pytest.approx(100.0 - metrics["test_top1_err"])
    assert metrics["test_one_off_acc"] == pytest.approx(25.0 * int(((predicted - target).abs() <= 1).sum()))


@pytest.mark.usefixtures("one_thread")
def test_cli_gender_config_links_two_classes(adience, tmp_path):
    root, _ = adience
    cli = build_cli([
        "fit", "--config", str(CONFIGS / "adience_gender_crl.yaml"), "--trainer.fast_dev_run", "1",
        "--data.data_dir", str(root), "--data.image_size", "32", "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.pin_memory", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
        "--model.init_args.backbone", "preact_resnet20",
    ])
    assert cli.model.hparams.num_classes == 2 and cli.datamodule.task == "gender"


# ----- the real fold files (../shared/data/adience) -----------------------------------------------
REAL_FOLD_SIZES = [4_484, 3_730, 3_894, 3_446, 3_816]
REAL_AGE_COUNTS = {
    "(25, 32)": 5004, "(0, 2)": 2488, "(38, 43)": 2293, "(4, 6)": 2140, "(8, 12)": 2124, "(15, 20)": 1642,
    "(60, 100)": 872, "(48, 53)": 830, "None": 748, "35": 293, "13": 168, "22": 149, "34": 105, "23": 96,
    "45": 88, "(27, 32)": 77, "55": 76, "36": 56, "(38, 42)": 46, "57": 24, "3": 18, "29": 11, "(38, 48)": 6,
    "58": 5, "2": 3, "32": 3, "56": 2, "(8, 23)": 1, "42": 1, "46": 1,
}


@needs_real_adience
def test_real_fold_files():
    rows = read_adience_folds(REAL_ADIENCE)
    assert len(rows) == 19_370
    assert [sum(r.fold == k for r in rows) for k in range(5)] == REAL_FOLD_SIZES
    users = {r.user_id for r in rows}
    assert len(users) == 168
    folds_of = {}
    for r in rows:
        folds_of.setdefault(r.user_id, set()).add(r.fold)
    assert all(len(f) == 1 for f in folds_of.values())  # subject-exclusive
    assert Counter(r.age for r in rows) == REAL_AGE_COUNTS
    assert set(REAL_AGE_COUNTS) == set(ADIENCE_AGE_MAP)  # every real age string is mapped
    assert sum(REAL_AGE_COUNTS[g] for g in ADIENCE_AGE_GROUPS) == 17_393
    assert Counter(r.gender for r in rows) == {"f": 9_372, "m": 8_120, "u": 1_099, "": 779}


@needs_real_adience
def test_real_folds_through_the_datamodule_splits():
    test_sizes = []
    for k in range(5):
        dm = AdienceDataModule(REAL_ADIENCE, fold=k, val_split=0.1)
        rows = dm.split_rows()  # reads, labels, checks subject exclusivity (no images needed)
        assert dm.drop_counts == Counter({"age None": 748, "non-canonical age": 1_229})
        users = {s: {f.user_id for f in rows[s][0]} for s in rows}
        assert not users["train"] & users["test"] and not users["train"] & users["val"]
        assert len(users["train"]) + len(users["val"]) + len(users["test"]) == 162  # 6 have no age group
        test_sizes.append(len(rows["test"][0]))
        assert sum(len(r[0]) for r in rows.values()) == 17_393
        # val: whole subjects, about 10 % of the training faces and of every age group. Measured with the
        # stratified split: 9.9-12.4 % of the faces; each group 5-19 % of its faces, total variation
        # distance to the training folds' class mix 0.11-0.17. A split that ignores the classes (groups
        # balanced by size) gives exactly 10 % of the faces but 0.1-2.3 % of some group and 0.23-0.46.
        train_labels, val_labels = rows["train"][1], rows["val"][1]
        val_fraction = len(val_labels) / (len(train_labels) + len(val_labels))
        assert 0.095 < val_fraction < 0.13
        pooled = np.bincount(train_labels + val_labels, minlength=8)
        val_counts = np.bincount(val_labels, minlength=8)
        assert np.all(val_counts / pooled > 0.04), (val_counts / pooled).round(3)
        assert 0.5 * np.abs(val_counts / val_counts.sum() - pooled / pooled.sum()).sum() < 0.2
    assert test_sizes == [4_377, 3_092, 3_285, 2_963, 3_676]  # the 8-group benchmark folds
    nearest = AdienceDataModule(REAL_ADIENCE, fold=0, age_policy="nearest", val_split=0.1)
    nearest.split_rows()
    assert nearest.drop_counts == Counter({"age None": 748})
    gender = AdienceDataModule(REAL_ADIENCE, task="gender", fold=0, val_split=0.1)
    gender.split_rows()
    assert gender.drop_counts == Counter({"gender u": 1_099, "gender empty": 779})


@needs_real_adience
def test_real_redrawn_folds_are_stratified():
    """Re-drawn folds (subject_kfold over 162 subjects) hold 20 % +- 1.5 points of every age group's faces.

    Measured: 19.1-21.4 % per group and fold. A size-balanced split that ignores the classes gives
    2.3-36 %: some folds then hold almost none of an age group.
    """
    labels = None
    for k in range(5):
        rows = AdienceDataModule(REAL_ADIENCE, fold=k, redraw_folds=True, seed=0, val_split=0.0).split_rows()
        test_users = {f.user_id for f in rows["test"][0]}
        assert not test_users & {f.user_id for f in rows["train"][0]}
        pooled = np.bincount(rows["train"][1] + rows["test"][1], minlength=8)
        share = np.bincount(rows["test"][1], minlength=8) / pooled
        assert np.all(np.abs(share - 0.2) < 0.015), share.round(3)
        labels = pooled if labels is None else labels
        assert np.array_equal(pooled, labels)  # the same 17,393 labelled faces every time
    assert labels.sum() == 17_393
