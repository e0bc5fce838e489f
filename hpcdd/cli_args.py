"""argparse flags generated from the config dataclasses (help text = each field's docstring)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import typing
from functools import lru_cache
from typing import Any

from hpcdd.config import ExecConfig, RunConfig


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring line under each dataclass field, read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


def _parser_for(tp: Any):
    """(argparse type, is_list, is_bool) for a field type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else tp
    if typing.get_origin(base) is tuple:
        return str, True, False
    return base, False, base is bool


def _list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One ``--kebab-name`` flag per field; unset flags are absent from the namespace."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, is_list, is_bool = _parser_for(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{docs.get(f.name, '')} (default: {shown})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if is_bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif is_list:
            group.add_argument(flag, type=_list, metavar="A,B", **kw)
        else:
            group.add_argument(flag, type=tp, metavar=tp.__name__.upper(), **kw)


def values_for(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


__all__ = ["add_config_flags", "values_for", "field_docs", "RunConfig", "ExecConfig"]
