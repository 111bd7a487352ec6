"""Every analysis of `rlhf-interp compare` as a function of a loaded pair: `rlhf_interp.analyses.<name>(pair)`.

    >>> import rlhf_interp
    >>> pair = rlhf_interp.load_pair("runs/demo")
    >>> rlhf_interp.analyses.names()
    ['behaviour', 'logit_diff', ...]
    >>> tables = rlhf_interp.analyses.logit_lens(pair)          # {table name: DataFrame}
    >>> everything = rlhf_interp.analyses.run(pair, "all")      # in registry order, sharing tables

The functions are made from the registry (`rlhf_interp.analysis.ANALYSES`), so an analysis added there appears here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from rlhf_interp.analysis.pair import ModelPair

_OPTIONS = """
    Args:
        pair: from `rlhf_interp.load_pair`.
        seed: seed of sampling and bootstrap CIs.
        reward: the behaviour analysis's reward ('vader', 'periods', 'imdb', 'classifier:DIR', 'python:mod:fn').
        samples_per_prompt, new_tokens: sampling of the behaviour analysis.
        tables: tables of analyses run before (e.g. attribution_patching joins the exact patching_* tables to its
            estimates when given them); the result is also added to this dict.
    Options an analysis does not use are ignored, as in `compare`.

    Returns:
        {table name: DataFrame}, the same tables `compare` writes to OUT/tables/.
"""


def _registry() -> dict[str, Callable[..., dict[str, pd.DataFrame]]]:
    from rlhf_interp.analysis import ANALYSES

    return ANALYSES


def _make(name: str) -> Callable[..., dict[str, pd.DataFrame]]:
    def analysis(pair: ModelPair, *, seed: int = 0, reward: str = "vader", samples_per_prompt: int = 4,
                 new_tokens: int = 32, tables: dict[str, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
        shared = {} if tables is None else tables
        ctx: dict[str, Any] = {"seed": seed, "reward": reward, "samples_per_prompt": samples_per_prompt,
                               "new_tokens": new_tokens, "tables": dict(shared)}
        result = _registry()[name](pair, ctx)
        shared.update(result)
        return result

    own = _describe(_registry()[name])
    analysis.__name__ = analysis.__qualname__ = name
    analysis.__module__ = __name__
    analysis.__doc__ = (f"The `{name}` analysis of `rlhf-interp compare` on a loaded pair.\n\n"
                        + (f"    {own}\n" if own else "") + _OPTIONS)
    return analysis


def _describe(fn: Callable[..., Any]) -> str:
    """The registered function's docstring, else that of the analysis module it imports (its first paragraph)."""
    import importlib

    if fn.__doc__:
        return fn.__doc__.strip()
    for module in fn.__code__.co_names:
        if module.startswith("rlhf_interp.analysis."):
            doc = importlib.import_module(module).__doc__ or ""
            return doc.strip().split("\n\n")[0].replace("\n", "\n    ")
    return ""


def names() -> list[str]:
    """The analyses, in the order `compare` runs them (later ones may read earlier tables)."""
    return list(_registry())


def run(pair: ModelPair, analyses: str | list[str] = "all", *, seed: int = 0, reward: str = "vader",
        samples_per_prompt: int = 4, new_tokens: int = 32) -> dict[str, pd.DataFrame]:
    """Run several analyses (comma string, list or 'all') in registry order, sharing tables; all their tables."""
    from rlhf_interp.analysis import parse_analyses

    tables: dict[str, pd.DataFrame] = {}
    for name in parse_analyses(analyses):
        _make(name)(pair, seed=seed, reward=reward, samples_per_prompt=samples_per_prompt, new_tokens=new_tokens,
                    tables=tables)
    return tables


def __getattr__(name: str) -> Callable[..., dict[str, pd.DataFrame]]:
    if name.startswith("__") or name not in _registry():
        raise AttributeError(f"module 'rlhf_interp.analyses' has no analysis {name!r}; analyses: "
                             + ", ".join(_registry()))
    fn = _make(name)
    globals()[name] = fn  # made once
    return fn


def __dir__() -> list[str]:
    return sorted([*globals(), *_registry()])
