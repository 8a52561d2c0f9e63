"""How a figure quoted in the docs is tied to the committed run it comes from.

A `Quote` names a doc, a short stretch of its text ending in the figure, and where the figure is in
a JSON under docs/bench/ (`path`: keys joined by dots, `*` for every item, `**` for a key at any
depth; paths joined by `+` pool their values; then optionally `|min` or `|max`). The figure is
the last number in the text; it matches when the JSON's value, rounded to as many decimals as the
docs print, is that number. A text value (a commit) matches when the text contains it.
`measurements` finds what looks like a measured figure in a doc, so one left without a source is
caught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from tests import ROOT

BENCH = ROOT / "docs" / "bench"
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# What looks measured: a decimal, a number with thousands separators, or a rate or a size. Integers
# of seconds or percents are mostly settings and thresholds; a measured one is quoted all the same.
MEASURE = re.compile(
    r"(?<![\w./])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+(?=\s?(?:jobs/s|req/s|jobs/h|MB|MiB|GB|KB|kB)\b))"
    r"(?![\w.]*\w)"
)
CODE = re.compile(r"```.*?```|`[^`]*`|\]\([^)]*\)", re.S)


@dataclass(frozen=True)
class Quote:
    """`text` in `doc` ends with a figure that is `path` in docs/bench/`source`."""

    doc: str
    text: str
    source: str
    path: str


@dataclass(frozen=True)
class Allowed:
    """`text` in `doc` holds figures that are not measurements (a default, a version, a limit)."""

    doc: str
    text: str
    why: str


def flat(text: str) -> str:
    """The doc with every run of white space one space, so a quote may span a line break."""
    return " ".join(text.split())


@cache
def doc_text(doc: str) -> str:
    path = ROOT / "README.md" if doc == "README.md" else ROOT / "docs" / doc
    return flat(path.read_text())


@cache
def report(source: str) -> Any:
    return json.loads((BENCH / source).read_text())


def _step(values: list[Any], key: str) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if key == "*":
            out += list(value.values()) if isinstance(value, dict) else list(value)
        elif key == "**":
            out += list(_descend(value))
        elif isinstance(value, list) and key.isdigit():
            out.append(value[int(key)])
        elif isinstance(value, dict) and key in value:
            out.append(value[key])
    return out


def _descend(value: Any) -> list[Any]:
    found = [value]
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        found += _descend(child)
    return found


def resolve(source: str, path: str) -> Any:
    """The value at `path` in docs/bench/`source`; KeyError if the path finds nothing."""
    paths, _, reducer = path.partition("|")
    values: list[Any] = []
    for one in paths.split("+"):
        found = [report(source)]
        for key in one.split("."):
            found = _step(found, key)
        values += found
    if reducer:
        return {"min": min, "max": max}[reducer](v for v in values if isinstance(v, int | float))
    if len(values) != 1:
        raise KeyError(f"{source}: {path} finds {len(values)} values")
    return values[0]


def matches(quote: Quote) -> tuple[bool, str]:
    """Whether the figure printed at the end of `quote.text` is the JSON's value, and both."""
    value = resolve(quote.source, quote.path)
    if isinstance(value, str):
        return bool(value) and value in quote.text, f"{value!r} in {quote.text!r}"
    printed = NUMBER.findall(quote.text)[-1].replace(",", "")
    decimals = len(printed.partition(".")[2])
    tolerance = Decimal(5) * Decimal(10) ** -(decimals + 1) + Decimal("1e-9")
    return abs(Decimal(str(value)) - Decimal(printed)) <= tolerance, f"docs {printed}, JSON {value}"


def spans(text: str, needle: str) -> list[range]:
    """Every stretch of `text` that is `needle`."""
    return [range(m.start(), m.end()) for m in re.finditer(re.escape(flat(needle)), text)]


def measurements(text: str) -> list[re.Match[str]]:
    """The measured-looking figures of a doc's prose (code and link targets left out)."""
    prose = CODE.sub(lambda m: " " * len(m.group()), text)
    return list(MEASURE.finditer(prose))
