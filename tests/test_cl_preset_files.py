"""The preset files (cl/configs/<dataset>/<method>.yaml): equal to the presets in the code, and
each one a config file that resolves to exactly the preset configuration."""

from __future__ import annotations

import pytest

from cl import cli
from cl.config import config_from_dict, default_backbone, resolve_config
from cl.config_files import read_config_file
from cl.methods import available_methods
from cl.preset_files import CONFIG_DIR, DATASETS, preset_path, preset_text

CASES = [(d, m) for d in DATASETS for m in available_methods()]


def test_every_benchmark_and_method_has_a_file_and_no_other_file_is_there() -> None:
    expected = {preset_path(d, m) for d, m in CASES}
    assert set(CONFIG_DIR.rglob("*.yaml")) == expected


@pytest.mark.parametrize("dataset, method", CASES)
def test_file_equals_the_presets_in_the_code(dataset: str, method: str) -> None:
    """Regenerate with ``python -m cl.preset_files`` after changing a preset."""
    assert preset_path(dataset, method).read_text(encoding="utf-8") == preset_text(dataset, method)


@pytest.mark.parametrize("dataset, method", CASES)
def test_file_is_a_config_file_of_the_preset(dataset: str, method: str) -> None:
    data = read_config_file(preset_path(dataset, method))
    assert config_from_dict(data) == resolve_config(dataset, method, default_backbone(dataset))


def test_the_cli_reads_a_preset_file(capsys) -> None:
    path = preset_path("cifar100", "norga")
    assert cli.main(["--config", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = [line.split("  #")[0] for line in printed.splitlines()[1:]]
    assert values == [line.split("  #")[0] for line in path.read_text().splitlines()[2:]]
    assert "epochs: 50  # file" in printed  # the preset's value, now from the file
