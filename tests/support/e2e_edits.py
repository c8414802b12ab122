"""A temporary edit of a file in the working tree, undone on exit, for tests that make a tool
react to a change (Tilt's live update, a rebuild): ``with TemporaryEdit(path, old, new): ...``.

The first occurrence of OLD becomes NEW. On exit the file gets its original text back; if
somebody else changed the file meanwhile (a shared working tree), only NEW is turned back into
OLD, leaving their change alone. Either way the exit checks that NEW is gone."""
from __future__ import annotations

from pathlib import Path


class TemporaryEdit:
    def __init__(self, path: Path, old: str, new: str):
        self.path, self.old, self.new = Path(path), old, new
        self.original: str | None = None
        self.written: str | None = None

    def __enter__(self) -> TemporaryEdit:
        self.original = self.path.read_text()
        assert self.old in self.original, f"{self.path} no longer contains {self.old!r}: update the test"
        assert self.new not in self.original, f"{self.path} already contains {self.new!r} (an earlier run not undone?)"
        self.written = self.original.replace(self.old, self.new, 1)
        self.path.write_text(self.written)
        return self

    def __exit__(self, *exc) -> None:
        current = self.path.read_text()
        if current == self.written:
            self.path.write_text(self.original)
        elif self.new in current:  # edited by someone else meanwhile: take only ours out again
            self.path.write_text(current.replace(self.new, self.old, 1))
        assert self.new not in self.path.read_text(), f"{self.path}: the test's edit was not undone"
