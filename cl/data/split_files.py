"""CODA-Prompt / SMoPE ImageNet-R split lists (``dataset_options.split_dir``).

The CODA-Prompt code (GT-RIPL/CODA-Prompt ``dataloaders/dataloader.py``, class ``iIMAGENET_R``;
SMoPE reuses it) reads its train/test split from two YAML files of its repository,
``dataloaders/splits/imagenet-r_train.yaml`` and ``imagenet-r_test.yaml`` (CODA-Prompt @ 6417d4f;
SMoPE @ 27b982c ships the same two blobs). Each is a mapping with two lists of equal length::

    data:
    - data/imagenet-r/n01910747/tattoo_75.jpg
    ...
    targets:
    - 177
    ...

The official files list 24,000 train and 6,000 test images (all 30,000, 200 class folders) and
read in about 1 s here; their class ids are *not* the sorted-wnid index of ``ImageFolder``, so
they are kept as the labels.

``data`` holds image paths (only the last two components, ``<wnid>/<file name>``, are used, so
the files are found in the project's ImageNet-R tree wherever it lies) and ``targets`` their
class ids. The files are read with ``yaml.safe_load`` (no object construction, nothing
executed) and checked strictly; every problem is one ``SplitFileError`` line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAIN_FILE = "imagenet-r_train.yaml"
TEST_FILE = "imagenet-r_test.yaml"
EXPECTED = ("a YAML mapping with exactly the keys 'data' (list of image paths ending in "
            "'<wnid>/<file>') and 'targets' (list of integer class ids, same length)")


class SplitFileError(ValueError):
    """A split file that is missing or not in the CODA-Prompt format."""


@dataclass(frozen=True)
class SplitList:
    """One split file: ``keys[i]`` (``"<wnid>/<file name>"``) has class id ``targets[i]``."""

    path: Path
    keys: tuple[str, ...]
    targets: tuple[int, ...]


def read_split_file(path: Path, num_classes: int) -> SplitList:
    """Read and check one CODA-Prompt split file.

    Raises
    ------
    SplitFileError
        Missing or unreadable file, bad YAML, wrong keys or types, unequal lengths, a class id
        outside ``[0, num_classes)``, or the same image listed twice.
    """
    import yaml  # a dependency of timm; only this option needs it

    if not path.is_file():
        raise SplitFileError(f"{path}: split file not found (expected {EXPECTED})")
    try:
        text = path.read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        content = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SplitFileError(f"{path}: not readable as YAML ({first}); expected {EXPECTED}"
                             ) from None
    if not isinstance(content, dict) or set(content) != {"data", "targets"}:
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise SplitFileError(f"{path}: found {found}; expected {EXPECTED}")
    data, targets = content["data"], content["targets"]
    if not isinstance(data, list) or not isinstance(targets, list):
        raise SplitFileError(f"{path}: 'data' and 'targets' must be lists; expected {EXPECTED}")
    if len(data) != len(targets) or not data:
        raise SplitFileError(f"{path}: 'data' has {len(data)} entries and 'targets' "
                             f"{len(targets)}; expected the same non-zero number")
    keys = []
    for i, entry in enumerate(data):
        parts = entry.replace("\\", "/").split("/") if isinstance(entry, str) else []
        if len(parts) < 2 or not parts[-1] or not parts[-2]:
            raise SplitFileError(f"{path}: data[{i}] = {entry!r} is not an image path ending "
                                 f"in '<wnid>/<file>'")
        keys.append(f"{parts[-2]}/{parts[-1]}")
    for i, target in enumerate(targets):
        if type(target) is not int or not 0 <= target < num_classes:
            raise SplitFileError(f"{path}: targets[{i}] = {target!r} is not an integer class "
                                 f"id in [0, {num_classes})")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        twice = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise SplitFileError(f"{path}: image {twice!r} is listed twice")
    return SplitList(path, tuple(keys), tuple(targets))


def read_split_dir(directory: Path, num_classes: int) -> tuple[SplitList, SplitList]:
    """Read ``imagenet-r_train.yaml`` and ``imagenet-r_test.yaml`` from ``directory`` (CODA's
    ``dataloaders/splits/``) and check them together.

    Raises
    ------
    SplitFileError
        A bad file (:func:`read_split_file`), an image in both files, a class (wnid) with two
        ids or an id given to two classes, or a class id without training images.
    """
    if not directory.is_dir():
        raise SplitFileError(f"split_dir {directory}: not a directory (expected one holding "
                             f"{TRAIN_FILE} and {TEST_FILE}, CODA-Prompt's dataloaders/splits/)")
    train = read_split_file(directory / TRAIN_FILE, num_classes)
    test = read_split_file(directory / TEST_FILE, num_classes)
    both = set(train.keys) & set(test.keys)
    if both:
        raise SplitFileError(f"{test.path}: {len(both)} images are also in {train.path}, "
                             f"e.g. {sorted(both)[0]!r}; expected disjoint train and test lists")
    wnid_id: dict[str, int] = {}
    id_wnid: dict[int, str] = {}
    for split in (train, test):
        for key, target in zip(split.keys, split.targets, strict=True):
            wnid = key.split("/", 1)[0]
            if (wnid_id.setdefault(wnid, target) != target
                    or id_wnid.setdefault(target, wnid) != wnid):
                raise SplitFileError(
                    f"{split.path}: {key!r} has class id {target}, but class {wnid} has id "
                    f"{wnid_id[wnid]} and id {target} belongs to {id_wnid[target]} elsewhere; "
                    f"expected one id per class folder")
    missing = sorted(set(range(num_classes)) - set(train.targets))
    if missing:
        raise SplitFileError(f"{train.path}: class ids {missing[:5]} have no training image; "
                             f"expected every id in [0, {num_classes})")
    return train, test
