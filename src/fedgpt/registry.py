"""Registries: one line makes a component known by name.

``AGGREGATORS.register("median")`` on a class (as a decorator) is all it takes to make
``federation.aggregator = "median"`` (or ``{kind = "median", ...}``) build it; the same
holds for server optimisers, secure sums, privacy mechanisms, strategies and tasks. A
component's hyperparameters are the fields of its nested pydantic ``Config`` model, so
they live beside the code that uses them and are validated when the run is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedgpt.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named components of one kind (``what``: e.g. "aggregator")."""

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key  # key: the config key that names one
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call ``register(name)(obj)``): make ``obj`` known as ``name``."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = obj
            try:
                obj.name = name  # the name it is known by, for messages and metrics
            except (AttributeError, TypeError):
                pass
            return obj

        return add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(
                f"{self.key}: unknown {self.what} {name!r} (known: {known})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
