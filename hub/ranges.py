"""Inclusive seq ranges ``(first, last)``: the arithmetic of gaps and explanations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scanfleet.provisioning.remote import missing_ranges

Range = tuple[int, int]


def from_points(seqs: Iterable[int]) -> list[Range]:
    """Sorted distinct seqs collapsed into maximal ranges."""
    out: list[Range] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def subtract(ranges: Sequence[Range], remove: Sequence[Range]) -> list[Range]:
    """The parts of *ranges* not covered by *remove*."""
    out: list[Range] = []
    for first, last in ranges:
        out += missing_ranges(list(remove), last, first)
    return out


def intersect(ranges: Sequence[Range], keep: Sequence[Range]) -> list[Range]:
    """The parts of *ranges* covered by *keep*."""
    out: list[Range] = []
    for first, last in ranges:
        holes = missing_ranges(list(keep), last, first)
        out += missing_ranges(holes, last, first)
    return out


def size(ranges: Iterable[Range]) -> int:
    """Number of seqs in *ranges* (assumed disjoint)."""
    return sum(last - first + 1 for first, last in ranges)
