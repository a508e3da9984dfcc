"""zocli.data.userdata: folder:DIR and hf:ID benchmarks, written by the tests, through prepare → train → eval.

Each source is a few 8-px PNGs per class; the runs are zocli-tiny, random init, 1 epoch, 2 tasks.
A malformed folder is refused at `prepare` in one line, never later in `train`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from test_errors import assert_one_line_error, invoke

from zocli.config import ConfigError
from zocli.data import catalogue

CLASSES = ("cat", "dog", "red_fox", "sea_lion")  # sorted: label = index


def write_images(folder: Path, n: int, shade: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(shade + rng.integers(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(pixels).save(folder / f"{i}.png")


def write_folder(root: Path, classes=CLASSES, train: int = 3, test: int = 2) -> Path:
    for c, name in enumerate(classes):
        write_images(root / "train" / name, train, 50 * c, seed=c)
        write_images(root / "test" / name, test, 50 * c, seed=10 + c)
    return root


def train_and_eval(tmp: Path, spec: str, *extra: str) -> tuple[dict, dict]:
    """prepare'd spec → train (2 tasks of 2 classes) → eval; (train JSON, eval JSON)."""
    run = tmp / "run"
    trained = invoke(
        [
            "train",
            "--preset",
            "digits-demo",
            "--benchmark",
            spec,
            "--data-root",
            str(tmp / "root"),
            "--epochs",
            "1",
            "--out",
            str(run),
            "--json",
            *extra,
        ]
    )
    assert trained.exit_code == 0, trained.output
    again = invoke(["eval", str(run), "--json"])
    assert again.exit_code == 0, again.output
    return json.loads(trained.stdout), json.loads(again.stdout)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    source = write_folder(tmp / "pets")
    prepared = invoke(["prepare", "--benchmark", f"folder:{source}", "--data-root", str(tmp / "root"), "--json"])
    assert prepared.exit_code == 0, prepared.output
    (tmp / "order.json").write_text(json.dumps(["sea_lion", "cat", "red_fox", "dog"]))
    result, again = train_and_eval(tmp, f"folder:{source}", "--class-order", str(tmp / "order.json"))
    return tmp, json.loads(prepared.stdout), result, again


def test_a_folder_benchmark_goes_through_prepare_train_and_eval(folder_run):
    _tmp, prepared, result, again = folder_run
    record = json.loads((Path(prepared["data"]) / "zocli_benchmark.json").read_text())
    assert record["classes"] == list(CLASSES)
    assert record["names"] == ["cat", "dog", "red fox", "sea lion"]  # underscores → spaces
    assert len(result["acc_matrix"]) == 2 and result["task_sizes"] == [4, 4]
    assert again["acc_matrix"] == result["acc_matrix"]  # eval rebuilt the benchmark from the prepared copy


def test_a_class_order_file_applies(folder_run):
    tmp = folder_run[0]
    saved = json.loads((tmp / "run" / "config.json").read_text())
    assert saved["benchmark"]["spec"] == f"folder:{tmp / 'pets'}"
    assert saved["benchmark"]["order"] == [3, 0, 2, 1]  # sea_lion, cat, red_fox, dog as labels
    assert saved["config"]["class_order"] == str(tmp / "order.json")


def test_a_datasets_format_benchmark_goes_through_prepare_train_and_eval(tmp_path):
    # Parquet files under DIR/data/, read by the real datasets.load_dataset(DIR) path that hf:ID takes.
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"picture": Image(), "kind": ClassLabel(names=["sea_lion", "tree", "car", "owl"])})
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("validation", 2)):
        labels = [c for c in range(4) for _ in range(n)]
        pixels = [np.full((8, 8, 3), 50 * c, np.uint8) + rng.integers(0, 40, (8, 8, 3), dtype=np.uint8) for c in labels]
        (tmp_path / "set" / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"picture": pixels, "kind": labels}, features=features).to_parquet(
            str(tmp_path / "set" / "data" / f"{split}-00000-of-00001.parquet")
        )
    (tmp_path / "names.json").write_text(json.dumps({"car": "motor car"}))
    prepared = invoke(
        [
            "prepare",
            "--benchmark",
            f"hf:{tmp_path / 'set'}",
            "--data-root",
            str(tmp_path / "root"),
            "--names",
            str(tmp_path / "names.json"),
            "--json",
        ]
    )
    assert prepared.exit_code == 0, prepared.output
    record = json.loads((Path(json.loads(prepared.stdout)["data"]) / "zocli_benchmark.json").read_text())
    assert record["names"] == ["sea lion", "tree", "motor car", "owl"]
    assert record["split"] == "splits 'train' and 'validation'"
    result, again = train_and_eval(tmp_path, f"hf:{tmp_path / 'set'}", "--class-order", "seed:1", "--eval-future")
    assert result["task_sizes"] == [4, 4] and again["acc_matrix"] == result["acc_matrix"]
    # --eval-future: row 0 holds task 1 too, zero-shot; FWT compares it with the untouched model's
    assert [len(row) for row in result["acc_matrix"]] == [2, 2]
    assert result["forward_transfer"] == round(result["acc_matrix"][0][1] - result["zero_shot"][1], 2)
    assert again["forward_transfer"] == result["forward_transfer"]
    assert result["transfer"] == round(result["acc_matrix"][0][1], 2)
    if result["zero_shot"][1] > 0:  # retention is a ratio to the untouched model's accuracy on task 1
        assert result["zero_shot_retention"] == round(100 * result["acc_matrix"][0][1] / result["zero_shot"][1], 2)
    else:
        assert "zero_shot_retention" not in result


def test_the_full_matrix_renders_both_triangles(tmp_path):
    from zocli.cli import render
    from zocli.study import plots

    matrix, summary = (
        [[90.0, 20.0], [70.0, 80.0]],
        {
            "last": 75.0,
            "avg": 82.5,
            "forgetting": 20.0,
            "bwt": -20.0,
            "seen_accuracy": [90.0, 75.0],
            "forward_transfer": -5.0,
            "transfer": 20.0,
            "zero_shot_retention": 80.0,
        },
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render.accuracy_matrix(matrix, summary, "run"))
    text = console.export_text()
    assert "(20.0)" in text and "FWT -5.00" in text and "zero-shot retention 80.00%" in text
    pytest.importorskip("matplotlib")
    assert plots.accuracy_heatmap(matrix, tmp_path / "heat.png", "run").stat().st_size > 0


def _one_class(root: Path) -> None:
    write_folder(root, classes=("cat",))


def _non_image(root: Path) -> None:
    write_folder(root)
    (root / "train" / "dog" / "notes.txt").write_text("not a picture")


def _empty_class(root: Path) -> None:
    write_folder(root)
    (root / "train" / "owl").mkdir()


def _test_class_missing(root: Path) -> None:
    write_folder(root)
    for file in (root / "test" / "dog").iterdir():
        file.unlink()
    (root / "test" / "dog").rmdir()


def _too_few_to_split(root: Path) -> None:
    for c, name in enumerate(CLASSES):  # one folder, no train/ and test/: split 80/20 per class
        write_images(root / name, 2 if name == "dog" else 5, 50 * c)


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (_one_class, ["has 1 class (cat)", "needs at least 2"]),
        (_non_image, ["notes.txt is not an image"]),
        (_empty_class, ["class folder", "owl has no images"]),
        (_test_class_missing, ["test lacks class folder(s) dog", "every class needs test images"]),
        (_too_few_to_split, ["leaves class(es) dog without test images", "at least 3 images"]),
    ],
    ids=["one-class", "non-image", "empty-class", "test-class-missing", "too-few-to-split"],
)
def test_a_malformed_folder_is_refused_at_prepare_in_one_line(tmp_path, make, needles):
    make(tmp_path / "bad")
    result = invoke(
        ["prepare", "--benchmark", f"folder:{tmp_path / 'bad'}", "--data-root", str(tmp_path / "root"), "--json"]
    )
    assert_one_line_error(result, 1, *needles)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())  # nothing half-made


def test_an_unprepared_folder_benchmark_names_the_prepare_command(tmp_path):
    result = invoke(
        [
            "train",
            "--preset",
            "digits-demo",
            "--benchmark",
            f"folder:{tmp_path}",
            "--data-root",
            str(tmp_path / "root"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert_one_line_error(result, 1, "is not prepared", f"zocli prepare --benchmark folder:{tmp_path}")


def test_hf_options_do_not_apply_to_a_folder_or_a_shipped_benchmark(tmp_path):
    result = invoke(["prepare", "--benchmark", f"folder:{tmp_path}", "--label-column", "kind"])
    assert_one_line_error(result, 2, "--label-column apply to hf:ID only")
    result = invoke(["prepare", "--benchmark", "digits", "--names", str(tmp_path)])
    assert_one_line_error(result, 2, "--names apply to folder:DIR and hf:ID")


# ---------------------------------------------------------------------------------------------- class orders


def test_reorder_by_ids_indices_or_seed():
    digits = catalogue.get("digits")
    assert catalogue.reorder(digits, [str(d) for d in range(9, -1, -1)]).order == tuple(range(9, -1, -1))
    assert catalogue.reorder(digits, [1, 0, *range(2, 10)]).order[:2] == (1, 0)
    seeded = catalogue.reorder(digits, "seed:7")
    assert sorted(seeded.order) == list(range(10)) and seeded.order != digits.order
    assert catalogue.reorder(digits, "seed:7") == seeded  # seeded: the same every time
    assert seeded.prompt_names()[0] == digits.names[seeded.order[0]]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (["0", "1"], "lacks 2, 3"),
        ([0, 0, *range(2, 10)], "repeats 0"),
        (["zero", *map(str, range(1, 10))], "not digits classes (zero)"),
    ],
)
def test_a_bad_class_order_is_a_usage_error(order, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        catalogue.reorder(catalogue.get("digits"), order)


def test_a_user_spec_has_a_stable_storage_folder():
    name = catalogue.storage_name("folder:/data/my pets")
    assert name.startswith("folder-my_pets-") and name == catalogue.storage_name("folder:/data/my pets")
    assert catalogue.storage_name("folder:/other/my pets") != name
    assert catalogue.short_name("hf:user/set") == "hf-user-set"


def test_a_saved_dataset_with_string_labels_and_no_test_split_is_split_per_class(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk

    labels = [name for name in ("owl", "bee", "ant") for _ in range(5)]
    pixels = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(len(labels))]
    features = Features({"img": Image(), "species": Value("string")})
    DatasetDict({"train": Dataset.from_dict({"img": pixels, "species": labels}, features=features)}).save_to_disk(
        str(tmp_path / "saved")
    )
    args = ["prepare", "--benchmark", f"hf:{tmp_path / 'saved'}", "--data-root", str(tmp_path / "root"), "--json"]
    assert_one_line_error(invoke(args), 2, "has no ClassLabel columns", "--label-column")
    result = invoke([*args, "--label-column", "species"])
    assert result.exit_code == 0, result.output
    prepared = Path(json.loads(result.stdout)["data"])
    record = json.loads((prepared / "zocli_benchmark.json").read_text())
    assert record["classes"] == ["ant", "bee", "owl"] and record["split"].endswith("80/20 per class (seed 1993)")
    copy = load_from_disk(str(prepared))
    assert (len(copy["train"]), len(copy["test"])) == (12, 3)  # 4 + 1 of each class's 5
    assert sorted(copy["test"]["label"]) == [0, 1, 2]
