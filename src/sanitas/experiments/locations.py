"""Where a config key is: its YAML line, for error messages that name the file and the line
(``my.yaml:12: experiment 'x': images must be ...``)."""

from __future__ import annotations

import yaml


def yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """``{key path: 1-based line}`` for every mapping key and list item of a YAML document."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (str(key.value),)
                lines[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = path + (str(i),)
                lines[p] = item.start_mark.line + 1
                walk(item, p)

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except yaml.YAMLError:
        pass  # the parser reports it with its own line
    return lines


class _Where:
    """Formats ``file:line: experiment 'x': key``-style locations for error messages."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int] | None):
        self.source, self.lines = source, lines or {}

    def __call__(self, *path) -> str:
        p = tuple(str(k) for k in path)
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        return f"{self.source}:{line}" if line else self.source
