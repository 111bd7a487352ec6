import json

from helpers import assert_one_line_error, run_cli
from transformers import AutoModelForCausalLM

from rlhf_interp.embedded.pretrain import PretrainConfig, pretrain


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("pretrain", "sample"):
        assert command in proc.stdout


def test_sample_prints_scored_continuations(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "This movie is"}) + "\n" + json.dumps("The price was") + "\n")
    proc = run_cli("sample", "embedded", "--prompts", str(prompts), "-n", "2", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("[") and "This movie is |" in lines[0]


def test_sample_prompt_errors(tmp_path):
    assert_one_line_error(run_cli("sample", "--prompts", str(tmp_path / "none.txt")), "none.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_one_line_error(run_cli("sample", "--prompts", str(empty)), "no prompts")
    long = tmp_path / "long.txt"
    long.write_text("the movie was good " * 40 + "\n")
    assert_one_line_error(run_cli("sample", "--prompts", str(long)), "context")


def test_shortened_pretrain_end_to_end(tmp_path):
    out = tmp_path / "em"
    stats = pretrain(PretrainConfig(out=out, n_reviews=300, steps=4, n_layer=1, n_embd=32, vocab_size=300,
                                    eval_samples_per_prompt=1, eval_new_tokens=8))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 1
    assert stats["final_loss"] > 0 and -1 <= stats["vader_mean"] <= 1
    card = (out / "README.md").read_text()
    assert "final training loss" in card and "mean VADER" in card
    assert (out / "generation_config.json").exists() and (out / "tokenizer.json").exists()


def test_pretrain_cli(tmp_path):
    proc = run_cli("pretrain", "--out", str(tmp_path / "m"), "--steps", "2", "--n-reviews", "200")
    assert proc.returncode == 0, proc.stderr
    assert "model written to" in proc.stdout
