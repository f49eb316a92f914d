"""A name -> criterion-class registry, filled by the `register_criterion` decorator (as timm's models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["create_criterion", "criterion_class", "list_criteria", "register_criterion"]

_CRITERIA: dict[str, Callable[..., nn.Module]] = {}


def register_criterion(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a criterion under ``name``.

    Args:
        name: lower-case registry key, e.g. ``"crl"``.

    Returns:
        The decorator; it returns the class unchanged.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered (to {_CRITERIA[name].__qualname__})")
        _CRITERIA[name] = cls
        return cls

    return decorator


def list_criteria() -> list[str]:
    """Return the sorted names of all registered criteria."""
    return sorted(_CRITERIA)


def criterion_class(name: str) -> Callable[..., nn.Module]:
    """The class registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in _CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; expected one of {list_criteria()}")
    return _CRITERIA[name]


def create_criterion(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered criterion; ``None``-valued kwargs are dropped (the class default applies).

    Args:
        name: a key from `list_criteria`, e.g. ``"crl"``, ``"ce"``, ``"focal"``.
        **kwargs: constructor arguments, e.g. ``alpha=1.5, beta=1.0`` for CRL.

    Returns:
        The criterion module; call it as ``criterion(logits, target)``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    return criterion_class(name)(**{k: v for k, v in kwargs.items() if v is not None})
