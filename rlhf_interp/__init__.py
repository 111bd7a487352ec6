"""rlhf-interp: RLHF with PPO on GPT-2-family models, then interpretability of what RLHF changed.

Notebook use::

    import rlhf_interp
    summary = rlhf_interp.train(steps=20, out="runs/nb")            # or `rlhf-interp train`
    pair = rlhf_interp.load_pair(summary["run"])                    # .base / .tuned: TransformerBridges
    rlhf_interp.analyses.names()                                    # every analysis of `compare`
    tables = rlhf_interp.analyses.patching(pair)                    # {table name: DataFrame}
    all_tables = rlhf_interp.compare(summary["run"], out="runs/nb/compare")  # what `rlhf-interp compare` does
"""

from __future__ import annotations

from typing import Any

from rlhf_interp.api import compare, load_pair, train

__version__ = "0.1.0"
__all__ = ["analyses", "compare", "load_pair", "train"]


def __getattr__(name: str) -> Any:
    if name == "analyses":  # imported on first use: the package root stays light
        import importlib

        return importlib.import_module("rlhf_interp.analyses")
    raise AttributeError(f"module 'rlhf_interp' has no attribute {name!r}")
