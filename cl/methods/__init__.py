"""Continual-learning methods, registered by name (``get_method("norga")``)."""

from cl.methods.base import Method, Task, available_methods, get_method, register_method
from cl.methods.hide import HiDePrompt
from cl.methods.norga import NoRGa

__all__ = [
    "HiDePrompt",
    "Method",
    "NoRGa",
    "Task",
    "available_methods",
    "get_method",
    "register_method",
]
