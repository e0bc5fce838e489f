"""Choosing and checking the runs that go into one table cell or plot point.

Two rules keep averages honest:

* results from different evaluation ``protocol`` labels are never averaged together, and
* within one cell, every other config field (except ``seed``) must be the same; otherwise the
  caller must add that field to the table keys or filter it with ``--where``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from hpcdd.catalog import flat_names
from hpcdd.errors import ConfigError

SEED = "seed"


def config_columns(df: pd.DataFrame) -> list[str]:
    """Config columns present in ``df``: ``protocol`` plus every flat config key (run fields,
    method and sampler parameters, evaluation keys)."""
    return [c for c in ("protocol", *flat_names()) if c in df.columns]


def parse_keys(text: str | Sequence[str] | None) -> list[str]:
    """``"dataset,ipc"`` -> ``["dataset", "ipc"]`` (empty items dropped)."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [k.strip() for k in items if k.strip()]


def require_columns(df: pd.DataFrame, names: Iterable[str], what: str = "column") -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ConfigError(
            f"unknown {what}(s) {', '.join(missing)}; the results have: {', '.join(df.columns)}"
        )


def parse_where(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``["method=dm,dc", "ipc=10"]`` -> ``[("method", ["dm", "dc"]), ("ipc", ["10"])]``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where expects KEY=VALUE[,VALUE...], got {item!r}")
        out.append((key.strip(), [v.strip() for v in value.split(",")]))
    return out


def _matches(col: pd.Series, values: list[str]) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        try:
            nums = [float(v) for v in values]
        except ValueError:
            nums = []
        if nums:
            return col.isin(nums)
    text = col.astype(str).str.lower()
    return text.isin([v.lower() for v in values])


def filter_rows(
    df: pd.DataFrame, protocol: str | None = None, where: Iterable[str] = ()
) -> pd.DataFrame:
    """Rows matching ``--protocol`` and every ``--where KEY=VALUE``; no match -> ConfigError."""
    conds = parse_where(where)
    if protocol is not None:
        conds.insert(0, ("protocol", [protocol]))
    require_columns(df, [k for k, _ in conds], "filter column")
    out = df
    for key, values in conds:
        kept = out[_matches(out[key], values)]
        if kept.empty:
            have = ", ".join(sorted(map(str, out[key].dropna().unique())))
            raise ConfigError(f"no runs with {key}={','.join(values)} (values present: {have})")
        out = kept
    return out


def check_numeric(df: pd.DataFrame, metric: str) -> None:
    require_columns(df, [metric], "metric column")
    col = df[metric]
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        raise ConfigError(
            f"metric column {metric!r} is not numeric (dtype {col.dtype}); "
            "choose e.g. acc_mean, acc_mean__<arch>, distill_seconds"
        )


def check_protocols(df: pd.DataFrame, keys: Sequence[str]) -> None:
    """Refuse to average across evaluation protocols (unless ``protocol`` is itself a key)."""
    if "protocol" not in df.columns or "protocol" in keys:
        return
    found = sorted(map(str, df["protocol"].dropna().unique()))
    if len(found) > 1:
        raise ConfigError(
            f"the selected runs mix evaluation protocols ({', '.join(found)}); results of "
            f"different protocols are never averaged: pick one with --protocol {found[0]}"
        )


def check_homogeneous(df: pd.DataFrame, keys: Sequence[str], ignore: Iterable[str] = ()) -> None:
    """Every config column other than the keys, ``seed`` and ``ignore`` is constant per cell."""
    check_protocols(df, keys)
    skip = {SEED, *keys, *ignore}
    others = [c for c in config_columns(df) if c not in skip]
    if not others or df.empty:
        return
    grouped = df.groupby(list(keys), dropna=False, sort=False) if keys else None
    for col in others:
        n = grouped[col].nunique(dropna=False).max() if grouped is not None else (
            df[col].nunique(dropna=False)
        )
        if n > 1:
            values = ", ".join(sorted(map(str, df[col].unique()))[:6])
            hint = " (or use --metric acc_mean__<arch>)" if col == "eval_models" else ""
            raise ConfigError(
                f"runs averaged together differ in {col!r} (values: {values}); add it to the "
                f"keys (--rows/--cols, --hue) or keep one value with --where {col}=VALUE{hint}"
            )


def summarize(df: pd.DataFrame, keys: Sequence[str], metric: str) -> pd.DataFrame:
    """Per group of ``keys``: mean, std (ddof=1, NaN for one run) and n over seeds."""
    if not keys:
        vals = df[metric].dropna()
        std = vals.std(ddof=1) if len(vals) > 1 else float("nan")
        return pd.DataFrame({"mean": [vals.mean()], "std": [std], "n": [len(vals)]})
    g = df.groupby(list(keys), dropna=False, sort=True)[metric]
    out = g.agg(mean="mean", std="std", n="count").reset_index()  # pandas std: ddof=1
    out["n"] = out["n"].astype(int)
    return out


def prepare(
    df: pd.DataFrame,
    keys: Sequence[str],
    metric: str,
    *,
    protocol: str | None = None,
    where: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> pd.DataFrame:
    """Filter, then run every check; returns the rows that feed one table or plot."""
    require_columns(df, keys, "key column")
    check_numeric(df, metric)
    out = filter_rows(df, protocol, where)
    check_homogeneous(out, keys, ignore)
    return out


def cross_arch_long(df: pd.DataFrame, metric: str = "acc_mean") -> pd.DataFrame:
    """One row per (run, evaluation model) with the value of ``<metric>__<arch>`` in ``metric``."""
    prefix = f"{metric}__"
    arch_cols = [c for c in df.columns if c.startswith(prefix)]
    if not arch_cols:
        raise ConfigError(
            f"no {prefix}<arch> columns in the results; cross-architecture tables need runs "
            "evaluated with several eval_models"
        )
    ids = [c for c in df.columns if c not in arch_cols and c != metric]
    for col in arch_cols:
        check_numeric(df, col)
    long = df[[*ids, *arch_cols]].melt(
        id_vars=ids, value_vars=arch_cols, var_name="eval_model", value_name=metric
    )
    long["eval_model"] = long["eval_model"].str.slice(len(prefix))
    long = long.dropna(subset=[metric])
    return long.reset_index(drop=True)
