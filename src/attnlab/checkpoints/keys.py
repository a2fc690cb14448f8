"""Renaming state-dict keys between our layout and a foreign one.

A layout is described by ``(ours, theirs)`` name pairs. A name ending in ``.`` is a prefix
(``"blocks.{i}.mlp."`` renames every key under it), any other name must match the whole key;
``{i}`` stands for a block index. The same table renames both ways.
"""

from __future__ import annotations

import re


def _pattern(template: str) -> re.Pattern:
    exact = not template.endswith(".")
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile("^" + body + ("$" if exact else ""))


class Renames:
    """Two-way prefix renames, first matching pair wins."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._ours = [(_pattern(a), b) for a, b in pairs]
        self._theirs = [(_pattern(b), a) for a, b in pairs]

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for pat, target in rules:
            m = pat.match(key)
            if m:
                new = target.replace("{i}", m.groupdict().get("i") or "")
                return new + key[m.end():]
        return None

    def to_ours(self, key: str) -> str | None:
        """Our name for a foreign key, or None if no pair covers it."""
        return self._apply(self._theirs, key)

    def from_ours(self, key: str) -> str | None:
        """The foreign name for one of our keys, or None if the layout has no equivalent."""
        return self._apply(self._ours, key)

    def export(self, state: dict, target: str, advice: str = "export this model with format='attnlab'") -> dict:
        """All of ``state`` under the foreign names; refuses (UnsupportedError naming the keys,
        then ``advice`` if any) when the foreign layout has no place for some of them."""
        from attnlab.errors import UnsupportedError

        out, lost = {}, []
        for k, v in state.items():
            new = self.from_ours(k)
            if new is None:
                lost.append(k)
            else:
                out[new] = v
        if lost:
            more = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
            raise UnsupportedError(f"{target} has no place for {', '.join(lost[:5])}{more}" + (f"; {advice}" if advice else ""))
        return out


def block_indices(keys, prefix: str = "blocks.") -> set[int]:
    """The block numbers present under ``prefix`` (e.g. ``blocks.{i}.``)."""
    pat = re.compile("^" + re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for k in keys if (m := pat.match(k))}
