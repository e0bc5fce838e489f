"""argparse flags generated from the config dataclasses and the method/sampler parameter specs
(help text = each field's docstring). Torch-free: specs are declarations, not implementations."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from functools import lru_cache
from typing import Any

from hpcdd.config import EVAL_PREFIX, EvalConfig, ExecConfig, RunConfig, type_hints
from hpcdd.registry import unknown_name
from hpcdd.specs import METHODS, SAMPLERS


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring line under each dataclass field, read from the class sources (base classes
    first, so a subclass's docstring of a re-declared field wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for prev, node in zip(body, body[1:]):
            if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                    and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


def _parser_for(tp: Any) -> tuple[Any, bool, bool]:
    """(argparse type, is_list, is_bool) for a field type; for a list, the type of its items."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    if typing.get_origin(base) is tuple:
        return typing.get_args(base)[0], True, False
    return base, False, base is bool


def _list_of(item: type):
    """An argparse type: comma-separated values, each converted by ``item`` (e.g. int)."""
    def parse(text: str) -> list[Any]:
        return [item(t) for t in text.split(",") if t]
    parse.__name__ = f"list of {item.__name__}"  # argparse names it in 'invalid ... value'
    return parse


def _shown(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "null" if value is None else value


def registered_names() -> dict[str, tuple[str, list[str]]]:
    """Fields whose values are registered names: field -> (what, the names). Torch-free: methods
    and samplers from the specs, datasets and nets from :mod:`hpcdd.names`."""
    from hpcdd.names import DATASET_NAMES, NET_NAMES

    nets = ("net", list(NET_NAMES))
    return {"method": ("method", METHODS.names()), "sampler": ("sampler", SAMPLERS.names()),
            "dataset": ("dataset", list(DATASET_NAMES)), "net": nets, "models": nets}


def _name_type(what: str, names: list[str]) -> Any:
    """An argparse ``type`` that accepts a registered name and refuses any other with the
    closest one suggested (``unknown method 'dmm'; did you mean 'dm'?``)."""
    def check(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(unknown_name(what, text, names))
        return text

    check.__name__ = what  # argparse names the type in some messages
    return check


def _name_list_type(what: str, names: list[str]) -> Any:
    """Like :func:`_name_type` for a comma-separated list of names."""
    one = _name_type(what, names)

    def check(text: str) -> list[str]:
        return [one(t) for t in _list_of(str)(text)]

    check.__name__ = f"{what} list"
    return check


def _add(group: Any, flag: str, dest: str, tp: Any, help_text: str,
         names: tuple[str, list[str]] | None = None) -> None:
    kind, is_list, is_bool = _parser_for(tp)
    kw: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_text)
    if is_bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif is_list:
        kw["help"] += f"; from: {', '.join(names[1])}" if names else ""
        group.add_argument(flag, type=_name_list_type(*names) if names else _list_of(kind), metavar="A,B", **kw)
    elif names:  # choices: --help and shell completion list them
        group.add_argument(flag, type=_name_type(*names), choices=names[1], **kw)
    else:
        group.add_argument(flag, type=kind, metavar=kind.__name__.upper(), **kw)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                     skip: tuple[str, ...] = ()) -> None:
    """One ``--kebab-name`` flag per field (``prefix`` prepended to flag and dest); unset flags are
    absent from the namespace, so config-file values and defaults stand."""
    group = parser.add_argument_group(title)
    hints = type_hints(cls)
    docs = field_docs(cls)
    named = registered_names() if cls in (RunConfig, EvalConfig) else {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        doc = docs.get(f.name, "").rstrip(".")
        name = prefix + f.name
        _add(group, "--" + name.replace("_", "-"), name, hints[f.name], f"{doc} (default: {_shown(default)})",
             named.get(f.name))


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """RunConfig fields, every method's and sampler's parameters, and the evaluation keys."""
    add_config_flags(parser, RunConfig, "run config (defines the result)", skip=("params", "sampler_params"))
    add_param_flags(parser)
    add_config_flags(parser, EvalConfig, "evaluation (its own identity; add more later with "
                     "'hpcdd evaluate')", prefix=EVAL_PREFIX)


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method/sampler parameter name; its help lists who owns it and the defaults."""
    owners: dict[str, list[tuple[str, type]]] = {}
    for kind, registry in (("method", METHODS), ("sampler", SAMPLERS)):
        for name in registry.names():
            cls = registry.get(name).params
            for f in dataclasses.fields(cls):
                owners.setdefault(f.name, []).append((f"{kind} {name}", cls))
    if not owners:
        return
    group = parser.add_argument_group("method and sampler parameters (each applies to the named "
                                      "methods/samplers only)")
    for pname in sorted(owners):
        whose = owners[pname]
        cls = whose[0][1]
        doc = field_docs(cls).get(pname, "").rstrip(".")
        defaults = "; ".join(f"{who}: {_shown(_default(c, pname))}" for who, c in whose)
        _add(group, "--" + pname.replace("_", "-"), pname, type_hints(cls)[pname], f"{doc} ({defaults})")


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else None


def values_for(names: list[str] | tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    """The namespace values of ``names`` that were given on the command line."""
    wanted = set(names)
    return {k: v for k, v in vars(args).items() if k in wanted}


def exec_values(args: argparse.Namespace) -> dict[str, Any]:
    return values_for([f.name for f in dataclasses.fields(ExecConfig)], args)


def eval_values(args: argparse.Namespace) -> dict[str, Any]:
    """EvalConfig values given as ``--eval-*`` flags, without the prefix."""
    return {k[len(EVAL_PREFIX):]: v for k, v in vars(args).items()
            if k.startswith(EVAL_PREFIX) and k[len(EVAL_PREFIX):] in {f.name for f in dataclasses.fields(EvalConfig)}}


__all__ = ["add_config_flags", "add_run_flags", "registered_names", "add_param_flags", "values_for", "exec_values",
           "eval_values", "field_docs"]
