"""Config files: reading one (YAML or JSON, a run's saved ``config.json`` included) and writing
a resolved configuration as YAML with the source of every value (``--print-config``).

The printed text is itself a valid config file: fed back with ``--config`` it resolves to the
same configuration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cl.config import OPTIONS_FIELD, Resolved, upgrade_saved

#: File name endings ``--config`` reads, and how.
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigFileError(ValueError):
    """A config file that cannot be read (missing, unparsable, not a mapping); one line."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of config fields in ``path`` (``.yaml``/``.yml`` or ``.json``), in the
    current shape (:func:`cl.config.upgrade_saved`).

    Raises
    ------
    ConfigFileError
        Naming the file and what is wrong.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigFileError(f"{path}: unknown file type {suffix or '(none)'!r}; allowed: "
                              f"{', '.join(CONFIG_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigFileError(f"{path}: cannot be read ({reason})") from None
    if suffix == ".json":
        data = _read_json(path, text)
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigFileError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigFileError(f"{path}: expected a mapping of config fields (KEY: VALUE), got "
                              f"{type(data).__name__}")
    return upgrade_saved(data)


def _read_json(path: Path, text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise ConfigFileError(f"{path}: not valid JSON ({exc})") from None


def _yaml_value(value: Any) -> str:
    """One value as YAML flow text that reads back as the same value and type (JSON, with
    floats written so that a YAML 1.1 reader sees a float, e.g. ``1.0e-05``)."""
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return json.dumps(value)


def format_resolved(resolved: Resolved, sources: dict[str, str] | None = None) -> str:
    """``resolved`` as YAML, every value followed by ``# SOURCE`` (default, preset, recipe,
    protocol, quick, file or flag); ``sources`` adds to or replaces ``resolved.sources`` (e.g.
    for the dataset, method and backbone, which the caller chose)."""
    where = {**resolved.sources, **(sources or {})}
    data = resolved.config.to_dict()
    lines = ["# norga-cl configuration: every value, and after # where it comes from "
             "(default < preset < recipe < protocol < quick < file < flag)"]
    for key, value in data.items():
        if key in (OPTIONS_FIELD, "dataset_options"):
            source = "" if value else f"  # {where.get(key, 'default')}"
            lines.append(f"{key}:{' {}' if not value else ''}{source}")
            lines.extend(f"  {name}: {_yaml_value(item)}  # {where.get(f'{key}.{name}', '?')}"
                         for name, item in value.items())
        else:
            lines.append(f"{key}: {_yaml_value(value)}  # {where.get(key, 'default')}")
    return "\n".join(lines) + "\n"
