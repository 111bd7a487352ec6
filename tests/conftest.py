"""Shared fixtures. Tests never touch the network: the hub is switched off before anything imports transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["RLHF_INTERP_QUIET"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import sys
from pathlib import Path

import pytest
import torch

# RLHF_INTERP_TEST_THREADS=1 runs the suite single-threaded (results must not depend on the kernels' thread count)
torch.set_num_threads(int(os.environ.get("RLHF_INTERP_TEST_THREADS", min(2, os.cpu_count() or 1))))

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_gpt2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with its own 300-token BPE vocabulary (a model other than the embedded one)."""
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", vocab_size=300, seed=1)
