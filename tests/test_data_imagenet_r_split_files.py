"""``dataset_options.split_dir``: CODA-Prompt / SMoPE ImageNet-R split lists, on a fixture tree.

The fixture lists are written in the format of GT-RIPL/CODA-Prompt
``dataloaders/splits/imagenet-r_{train,test}.yaml`` (read by ``dataloaders/dataloader.py``,
``iIMAGENET_R.load``: ``yaml.load(...)['data']`` / ``['targets']``, @ 6417d4f): a block list of
paths ``data/imagenet-r/<wnid>/<file>.jpg`` then a block list of integer ``targets``. Copies
edited by others put ``train/`` or ``test/`` before the wnid; a few test entries use that form.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_imagenet_r, source_path, spec_fixtures

from cl.data import imagenet_r
from cl.data.registry import build_benchmark
from cl.data.split_files import SplitFileError

fixture_spec, spec = spec_fixtures(imagenet_r, make_imagenet_r)


def _write(path: Path, data: list[str], targets: list[object]) -> None:
    lines = ["data:", *(f"- {d}" for d in data), "targets:", *(f"- {t}" for t in targets)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _lists(root: Path, tmp_path: Path) -> tuple[Path, list[str], list[str], list[int]]:
    """Split the extracted fixture tree: every 3rd image of a class is test; class ids are a
    fixed permutation of the sorted-wnid index (so they cannot be mistaken for it)."""
    wnids = sorted(p.name for p in (root / "imagenet-r").iterdir() if p.is_dir())
    perm = np.random.default_rng(7).permutation(len(wnids)).tolist()
    train, test = [], []
    for index, wnid in enumerate(wnids):
        for k, p in enumerate(sorted((root / "imagenet-r" / wnid).glob("*.jpg"))):
            where = "test" if k % 3 == 0 else "train"
            prefix = "data/imagenet-r/test" if k == 3 else "data/imagenet-r"
            (test if where == "test" else train).append(
                (f"{prefix}/{wnid}/{p.name}", perm[index]))
    order = np.random.default_rng(3)
    train = [train[i] for i in order.permutation(len(train))]  # yaml lists are shuffled
    test = [test[i] for i in order.permutation(len(test))]
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    _write(split_dir / "imagenet-r_train.yaml", [d for d, _ in train], [t for _, t in train])
    _write(split_dir / "imagenet-r_test.yaml", [d for d, _ in test], [t for _, t in test])
    return split_dir, [d for d, _ in train], [d for d, _ in test], perm


def _build(root: Path, split_dir: Path, **kw):
    return build_benchmark("imagenet-r", data_root=root, seed=0, image_size=32,
                           split_dir=str(split_dir), **kw)


@pytest.fixture()
def tree(spec, tmp_path: Path) -> Path:
    shutil.copy(source_path(spec.archive), tmp_path / "imagenet-r.tar")
    build_benchmark("imagenet-r", data_root=tmp_path, image_size=32)  # extracts the archive
    return tmp_path


def test_split_lists_give_their_images_order_and_class_ids(spec, tree: Path) -> None:
    split_dir, train, test, perm = _lists(tree, tree)
    bench = _build(tree, split_dir)
    key = lambda p: f"{p.parent.name}/{p.name}"  # noqa: E731
    assert [key(p) for p in bench.train.dataset.paths] == ["/".join(d.split("/")[-2:])
                                                           for d in train]
    assert [key(p) for p in bench.test.dataset.paths] == ["/".join(d.split("/")[-2:])
                                                          for d in test]
    # label = the yaml's id; the fixture image's red channel = the sorted-wnid index
    for i in (0, 5, len(test) - 1):
        image, label = bench.test.dataset[i]
        assert label == perm[round(float(image[0].mean()) * 255)]
    assert bench.info["class_names"][perm[0]] == sorted(
        p.name for p in (tree / "imagenet-r").iterdir() if p.is_dir())[0]
    assert "imagenet-r_train.yaml" in bench.info["split"]["rule"]
    assert bench.info["split"]["num_test"] == len(test)
    default = build_benchmark("imagenet-r", data_root=tree, seed=0, image_size=32)
    assert sorted(key(p) for p in default.test.dataset.paths) != sorted(
        key(p) for p in bench.test.dataset.paths)




def test_bad_split_files_are_refused_with_one_line(spec, tree: Path) -> None:
    split_dir, train, test, perm = _lists(tree, tree)
    wnid0 = train[0].split("/")[-2]
    cases = {
        "length": (train, [0] * (len(train) - 1), "entries"),
        "text id": (train, ["'3'"] * len(train), "targets[0] = '3'"),
        "bool id": (train, ["true"] * len(train), "targets[0] = True"),
        "range": (train, [spec.num_classes] * len(train), f"[0, {spec.num_classes})"),
        "duplicate": (train + train[:1], [0] * (len(train) + 1), "listed twice"),
        "not a path": (["x.jpg"] + train[1:], [0] * len(train), "data[0] = 'x.jpg'"),
        "absent": ([f"data/imagenet-r/train/{wnid0}/nope.jpg"] + train[1:],
                   [0] * len(train), "not in the ImageNet-R tree"),
    }
    for name, (data, targets, expected) in cases.items():
        sub = tree / f"case-{name.replace(' ', '_')}"
        shutil.copytree(split_dir, sub)
        if name == "absent":  # consistent ids, so the tree check is reached
            base = (split_dir / "imagenet-r_train.yaml").read_text().replace(
                train[0], data[0], 1)
            (sub / "imagenet-r_train.yaml").write_text(base)
        else:
            _write(sub / "imagenet-r_train.yaml", data, targets)
        with pytest.raises(SplitFileError) as err:
            _build(tree, sub)
        message = str(err.value)
        assert "\n" not in message and "imagenet-r_train.yaml" in message, name
        assert expected in message, (name, message)


def test_structure_overlap_consistency_and_no_code_execution(spec, tree: Path) -> None:
    split_dir, train, test, perm = _lists(tree, tree)
    marker = tree / "executed"

    def refused(text: str, which: str, expected: str) -> None:
        sub = tree / f"s{len(list(tree.glob('s*')))}"
        shutil.copytree(split_dir, sub)
        (sub / which).write_text(text)
        with pytest.raises(SplitFileError, match=expected) as err:
            _build(tree, sub)
        assert "\n" not in str(err.value) and which in str(err.value)

    refused(f"!!python/object/apply:os.system ['touch {marker}']\n", "imagenet-r_test.yaml",
            "not readable as YAML")
    assert not marker.exists()
    refused("data: [a/b.jpg]\n", "imagenet-r_test.yaml", "exactly the keys")
    refused("- a\n- b\n", "imagenet-r_test.yaml", "found list")
    refused("data: [\n", "imagenet-r_test.yaml", "not readable as YAML")
    # an image in both lists
    text = (split_dir / "imagenet-r_test.yaml").read_text().replace(
        test[0], train[0].replace("imagenet-r/", "imagenet-r/test/"), 1)
    refused(text, "imagenet-r_test.yaml", "also in")
    # one class folder with two ids
    lines = (split_dir / "imagenet-r_test.yaml").read_text().splitlines()
    at = lines.index("targets:") + 1
    lines[at] = f"- {(int(lines[at][2:]) + 1) % spec.num_classes}"
    refused("\n".join(lines) + "\n", "imagenet-r_test.yaml", "one id per class folder")
    (split_dir / "imagenet-r_test.yaml").unlink()
    with pytest.raises(SplitFileError, match="imagenet-r_test.yaml: split file not found"):
        _build(tree, split_dir)
    with pytest.raises(SplitFileError, match="not a directory"):
        _build(tree, tree / "nowhere")
    with pytest.raises(ValueError, match="two different splits"):
        _build(tree, split_dir, split="hide")


def test_dualprompt_original_port_runs_on_the_coda_split(spec, tree: Path) -> None:
    """Both new switches end to end: DualPrompt with ``recipe=original-port`` (ImageNet-R port
    config) trained on the split read from the CODA-Prompt lists (tiny random ViT, 1 epoch)."""
    import json

    from cl.config import resolve_config
    from cl.run.engine import run_experiment

    split_dir, train, test, perm = _lists(tree, tree)
    cfg = resolve_config("imagenet-r", "dualprompt", "vit-tiny-random", overrides={
        "recipe": "original-port", "epochs": 1, "data_root": str(tree), "seed": 3,
        "dataset_options": {"image_size": 16, "num_tasks": 2, "split_dir": str(split_dir)},
        "method_options.e_length": 2})
    assert (cfg.batch_size, cfg.lr, cfg.method_options.batchwise_prompt) == (24, 0.005, False)
    result = run_experiment(cfg, tree / "run")
    assert result.finished and 0.0 <= result.metrics["FA"] <= 100.0
    saved = json.loads((tree / "run" / "config.json").read_text())
    assert saved["recipe"] == "original-port"
    assert saved["dataset_options"]["split_dir"] == str(split_dir)
