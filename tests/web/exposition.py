"""A strict reader of Prometheus text exposition format 0.0.4, for checking what we serve.

Written from the format's description, not from our renderer: every line must be a HELP,
a TYPE or a sample; a family's HELP and TYPE come before its samples, once; its samples
are together; label values use only the three escapes the format has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"# HELP ({NAME}) (.*)")
_TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE_NAME = re.compile(rf"({NAME})")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf|NaN)")


@dataclass
class ParsedFamily:
    name: str
    help: str | None = None
    type: str | None = None
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def value(self, **labels: str) -> float:
        found = [v for ls, v in self.samples if ls == labels]
        assert len(found) == 1, f"{self.name}{labels}: {self.samples}"
        return found[0]


def _unescape_help(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _labels(text: str, line: str) -> tuple[dict[str, str], str]:
    """Parse ``{a="x",b="y"}`` at the start of ``text``; returns (labels, rest)."""
    assert text.startswith("{"), line
    labels: dict[str, str] = {}
    i = 1
    while True:
        if text[i] == "}":
            return labels, text[i + 1 :]
        name = _LABEL_NAME.match(text, i)
        assert name, f"bad label name: {line}"
        i = name.end()
        assert text[i : i + 2] == '="', f'label needs =": {line}'
        i += 2
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                escaped = text[i + 1]
                assert escaped in '\\"n', f"bad escape \\{escaped}: {line}"
                value.append("\n" if escaped == "n" else escaped)
                i += 2
            else:
                assert text[i] != "\n", line
                value.append(text[i])
                i += 1
        i += 1
        assert name.group() not in labels, f"label twice: {line}"
        labels[name.group()] = "".join(value)
        if text[i] == ",":
            i += 1
        else:
            assert text[i] == "}", f"labels end with }}: {line}"


def parse_exposition(text: str) -> dict[str, ParsedFamily]:
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, ParsedFamily] = {}
    current: ParsedFamily | None = None
    finished: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            match = _HELP.fullmatch(line) or _TYPE.fullmatch(line)
            assert match, f"a comment line that is neither HELP nor TYPE: {line!r}"
            name = match.group(1)
            assert name not in finished, f"{name} continued after another family"
            family = families.setdefault(name, ParsedFamily(name))
            assert not family.samples, f"HELP/TYPE after samples: {line}"
            if line.startswith("# HELP"):
                assert family.help is None, f"HELP twice: {name}"
                family.help = _unescape_help(match.group(2))
            else:
                assert family.type is None, f"TYPE twice: {name}"
                family.type = match.group(2)
            if current is not None and current.name != name:
                finished.add(current.name)
            current = family
            continue
        name_match = _SAMPLE_NAME.match(line)
        assert name_match, f"not a sample line: {line!r}"
        name = name_match.group()
        rest = line[name_match.end() :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            labels, rest = _labels(rest, line)
        assert rest.startswith(" "), f"one space before the value: {line!r}"
        value_text = rest[1:]
        assert _VALUE.fullmatch(value_text), f"bad value {value_text!r}: {line!r}"
        assert current is not None and current.name == name, f"sample outside its family: {line}"
        assert current.help is not None and current.type is not None, f"{name}: HELP, TYPE first"
        value = float(value_text.replace("Inf", "inf"))
        assert not math.isnan(value) or value_text == "NaN"
        current.samples.append((labels, value))
    return families
