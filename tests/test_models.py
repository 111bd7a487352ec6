import json
import shutil

import pytest
import torch
from helpers import assert_one_line_error, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_interp.errors import UserError
from rlhf_interp.models import EMBEDDED_DIR, load_bridge, load_causal_lm, resolve_model_spec
from rlhf_interp.sampling import encode_prompts


def test_embedded_loads_offline_with_auto_classes():
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_DIR)
    tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    assert model.config.model_type == "gpt2" and model.config.n_layer == 4 and model.config.n_embd == 128
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert (EMBEDDED_DIR / "README.md").read_text().count("VADER") >= 1
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_size < 10_000_000


@pytest.mark.parametrize("compatibility", [False, True])
def test_bridge_logits_equal_hf_logits(compatibility):
    model, tok = load_causal_lm("embedded")
    bridge = load_bridge("embedded", compatibility=compatibility)
    ids, _ = encode_prompts(tok, ["This movie is really"])
    with torch.no_grad():
        hf = model(ids).logits
        tl = bridge(ids)
    if compatibility:  # the centred unembedding shifts each position's logits by a constant
        hf, tl = hf.log_softmax(-1), tl.log_softmax(-1)
    assert (hf - tl).abs().max().item() < 1e-4


def test_other_gpt2_loads_too(tiny_gpt2_dir):
    model, tok = load_causal_lm(str(tiny_gpt2_dir))
    assert model.config.vocab_size == len(tok) == 300
    bridge = load_bridge(str(tiny_gpt2_dir), compatibility=False)
    ids, _ = encode_prompts(tok, ["The plot was"])
    with torch.no_grad():
        assert (model(ids).logits - bridge(ids)).abs().max().item() < 1e-4


def test_missing_dir(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_model_spec(tmp_path / "nope")


def test_file_instead_of_dir(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_spec(f)


def test_dir_without_weights_and_pickled_weights(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(EMBEDDED_DIR, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"no \*\.safetensors"):
        resolve_model_spec(d)
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="never loaded"):
        resolve_model_spec(d)


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "bert"
    shutil.copytree(EMBEDDED_DIR, d)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unsupported architecture BertForSequenceClassification"):
        resolve_model_spec(d)


def test_hub_name_offline_is_one_line_error():
    proc = run_cli("sample", "gpt2", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "gpt2", "embedded")


@pytest.mark.parametrize("what", ["missing", "file"])
def test_cli_model_errors(tmp_path, what):
    target = tmp_path / "x"
    if what == "file":
        target.write_text("hi")
    assert_one_line_error(run_cli("sample", str(target)), str(target))


def test_default_prompts_follow_the_vocabulary(tiny_gpt2_dir, tmp_path):
    from rlhf_interp.models import load_tokenizer, save_model
    from rlhf_interp.prompts import EMBEDDED_PROMPTS, ENGLISH_PROMPTS, default_prompts

    model, tok = load_causal_lm("embedded")
    save_model(model, tok, tmp_path / "copy")  # e.g. a run's base/ or tuned/
    assert default_prompts(load_tokenizer(str(tmp_path / "copy"))) == list(EMBEDDED_PROMPTS)
    assert default_prompts(load_tokenizer(str(tiny_gpt2_dir))) == list(ENGLISH_PROMPTS)


def test_bridge_owns_its_memory_and_pages_out(tmp_path, monkeypatch):
    """After loading no tensor is left on the mapped checkpoint (which would keep the whole file resident); `page_out`
    moves every tensor into an unlinked file mapping: same outputs, views and sharing kept, writable, no file left."""
    import tempfile

    from rlhf_interp.models import page_out

    bridge = load_bridge("embedded", fold_value_biases=False)
    tensors = [*bridge.parameters(), *bridge.buffers()]
    assert all(t.untyped_storage().resizable() for t in tensors)
    tokens = torch.tensor([[1, 5, 9, 200, 17, 3]])
    with torch.no_grad():
        before = bridge(tokens)
    W_Q = bridge.blocks[1].attn.W_Q  # a view of the q weight: must still be one after paging out
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert page_out(bridge)
    assert list(tmp_path.iterdir()) == []  # unlinked at once
    assert not any(t.untyped_storage().resizable() for t in [*bridge.parameters(), *bridge.buffers()])
    with torch.no_grad():
        assert torch.equal(bridge(tokens), before)
        assert torch.equal(bridge.blocks[1].attn.W_Q, W_Q)
        assert bridge.blocks[1].attn.W_Q.untyped_storage().data_ptr() == \
            bridge.blocks[1].attn.q.original_component.weight.untyped_storage().data_ptr()
        bridge.blocks[0].mlp.W_out.mul_(0)  # copy-on-write mapping: edits work
        assert not torch.equal(bridge(tokens), before)
