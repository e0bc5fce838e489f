"""Reading config and grid YAML safely: every problem is one line of :class:`ConfigError`.

Built on ``yaml.SafeLoader`` (no Python objects are ever constructed), with four changes made on
a subclass only, so PyYAML's global loaders are untouched:

* a duplicate key in a mapping is refused (PyYAML silently keeps the last one);
* ``1e-3``, ``5e-6``, ``1E+2``, ``.5e-1`` are floats, as in YAML 1.2 (YAML 1.1, which PyYAML
  follows, reads a float without a dot or without an exponent sign as a string);
* nesting deeper than :data:`MAX_DEPTH` collections is refused before PyYAML's recursive
  composer can hit Python's recursion limit;
* a document whose aliases expand to more than :data:`MAX_NODES` values (an alias bomb: nine
  levels of ten references each are 10^9 leaves in a few hundred bytes) is refused before it is
  built, so nothing downstream expands or prints it;
* a bad value such as the date ``2024-13-01`` is an error with its line, not a ``ValueError``.

``.nan`` and ``.inf`` still parse as floats; range checks belong to the config validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from hpcdd.errors import ConfigError

MAX_DEPTH = 100
"""Most nested collections (mappings/lists inside each other) a YAML document may have."""
MAX_NODES = 1_000_000
"""Most values (scalars and collections, every alias counted as the copy it stands for) a YAML
document may expand to."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
"""YAML 1.2 floats with an exponent (those without one are floats in YAML 1.1 already)."""


class _Refused(yaml.MarkedYAMLError):
    """A document PyYAML would accept but hpcdd refuses (duplicate key, too deep)."""


class SafeConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` + YAML 1.2 exponent floats, no duplicate keys, bounded depth."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        nested = self.check_event(MappingStartEvent, SequenceStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep",
                               problem_mark=mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1

    def construct_document(self, node: Any) -> Any:  # noqa: D102 - PyYAML hook
        if expanded_size(node, MAX_NODES) > MAX_NODES:
            raise _Refused(problem=f"expands to more than {MAX_NODES:,} values through its aliases",
                           problem_mark=node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # '<<: *base' may be overridden by the keys after it
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: PyYAML's own error follows
                if duplicate:
                    raise _Refused(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:  # noqa: D102
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as e:
            what = f"value {node.value!r}" if isinstance(node, ScalarNode) else node.tag
            raise ConstructorError(problem=f"cannot read {what}: {e}",
                                   problem_mark=node.start_mark) from None


def expanded_size(node: Any, limit: int) -> int:
    """How many values the composed ``node`` stands for once every alias is expanded (a node
    reached twice counts twice), counted once per distinct node, so an alias bomb costs as many
    steps as it has lines; stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(n: Any) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        total = 1
        if isinstance(n, MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, SequenceNode):
            children = list(n.value)
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


SafeConfigLoader.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT, list("-+.0123456789"))


def _line_of(e: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(e, "position", None)  # ReaderError (e.g. a control character)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return None


def _problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        text = e.problem or e.context or "error"
        if e.context and e.problem and e.problem.startswith("but "):
            text = f"{e.context}, {e.problem}"  # e.g. a second document in the file
    else:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, (_Refused, ConstructorError)):
        return text
    return f"not valid YAML: {text}"


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document (``None`` if empty); ``where`` (e.g. the file) starts messages.

    Raises :class:`ConfigError` with one line, e.g. ``grid.yaml line 7: duplicate key 'ipc'``.
    """
    try:
        return yaml.load(text, Loader=SafeConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        line = _line_of(e, text)
        at = f"{where} line {line}" if line is not None else where
        raise ConfigError(f"{at}: {_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read") from None


def load_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Read and parse the YAML file ``path`` (see :func:`load_yaml_text`).

    A missing or unreadable file, or one that is not UTF-8 text, is a one-line
    :class:`ConfigError` naming ``what`` and the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {data[e.start]:#04x} "
                          f"on line {line})") from None
    return load_yaml_text(text, str(path))
