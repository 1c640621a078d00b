"""One mechanism for the three tables of named entries the trainer is built from: the
backbones (`models/registry.py`), the distillation terms (`distillation/distill.py`) and
the run kinds (`engine/kinds.py`). A new entry is one `add` line beside the others."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Named entries of one kind, in the order they were added: a dict that refuses a name
    twice and, asked for a missing one, names the ones there are."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self[name] = entry
        return entry

    def entry(self, name: str) -> T:
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; choose from {tuple(self)}")
        return self[name]
