"""Continual-learning methods, registered by name (``get_method("norga")``).

Every module of this package is imported here, so a new method only needs its own module with a
``@register_method("name")`` class: its typed options as ``options_type`` (a dataclass derived
from :class:`cl.options.MethodOptions`) and, optionally, its presets declared on the class as
``presets`` / ``recipe_presets``, which :func:`cl.config.resolve_config` layers. Nothing else
has to be edited: ``--method`` lists the registry, ``--set method.NAME`` and config files reach
the options. (A class registered from anywhere else, e.g. a test module, works the same.)
"""

import importlib
import pkgutil

from cl.methods.base import Method, Task, available_methods, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from cl.methods.hide import HiDePrompt  # noqa: E402
from cl.methods.norga import NoRGa  # noqa: E402

__all__ = [
    "HiDePrompt",
    "Method",
    "NoRGa",
    "Task",
    "available_methods",
    "get_method",
    "register_method",
]
