"""The notebook API: load_pair, rlhf_interp.analyses.<name>, compare/train with real signatures; the example notebook
executes."""

import inspect
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import plant_head

import rlhf_interp
from rlhf_interp.analysis import ANALYSES
from rlhf_interp.models import EMBEDDED_DIR
from rlhf_interp.prompts import EMBEDDED_PROMPTS

ROOT = Path(__file__).resolve().parent.parent


def _no_varargs(fn):
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    return inspect.Parameter.VAR_POSITIONAL not in kinds and inspect.Parameter.VAR_KEYWORD not in kinds


def test_public_functions_have_real_signatures_and_docstrings():
    for fn in (rlhf_interp.load_pair, rlhf_interp.compare, rlhf_interp.train):
        assert _no_varargs(fn), fn
        assert len(inspect.getdoc(fn)) > 200 and "See " not in inspect.getdoc(fn)[:10]
    params = inspect.signature(rlhf_interp.load_pair).parameters
    assert list(params)[:5] == ["base", "tuned", "prompts", "metric", "device"]
    assert params["metric"].default == "logit_diff" and params["device"].default == "cpu"
    # compare's public signature mirrors the library's (a parameter added there must be added here)
    from rlhf_interp.analysis import compare as lib_compare

    assert inspect.signature(rlhf_interp.compare).parameters.keys() == inspect.signature(lib_compare).parameters.keys()
    assert rlhf_interp.analyses.names() == list(ANALYSES)
    for name in ANALYSES:  # generic over the registry: every analysis, with what it computes in its docstring
        fn = getattr(rlhf_interp.analyses, name)
        assert fn.__name__ == name and _no_varargs(fn)
        assert name in dir(rlhf_interp.analyses)
        doc = inspect.getdoc(fn)
        assert "Returns" in doc and len(doc.split("\n\n")[1]) > 40, (name, doc)
    with pytest.raises(AttributeError, match="no analysis 'nope'"):
        rlhf_interp.analyses.nope  # noqa: B018


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tuned = plant_head(EMBEDDED_DIR, tmp_path_factory.mktemp("api") / "planted", 2, 1)
    return rlhf_interp.load_pair("embedded", str(tuned), prompts=list(EMBEDDED_PROMPTS)[:6])


def test_load_pair_gives_bridges_prompts_and_metric(pair):
    assert type(pair.base).__name__ == "TransformerBridge" and type(pair.tuned).__name__ == "TransformerBridge"
    assert pair.prompts == list(EMBEDDED_PROMPTS)[:6] and pair.metric.name == "logit_diff"
    _, tokens = pair.main_group
    logits, cache = pair.tuned.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert pair.metric(logits).shape == (tokens.shape[0],) and len(cache) == pair.n_layers


def test_analyses_on_a_pair_match_compare(pair, tmp_path):
    lens = rlhf_interp.analyses.logit_lens(pair)
    assert set(lens) == {"logit_lens"}
    shared: dict[str, pd.DataFrame] = {}
    heads = rlhf_interp.analyses.patching(pair, tables=shared)["patching_heads"]
    top = heads[heads.direction == "tuned_to_base"].nlargest(1, "effect").iloc[0]
    assert (top.layer, top["head"]) == (2, 1)  # the planted head ranks first
    joined = rlhf_interp.analyses.attribution_patching(pair, tables=shared)["attribution_patching"]
    assert joined["exact"].notna().any()  # joined to the exact patching tables passed in
    assert set(shared) >= {"patching_heads", "patching_layers", "attribution_patching"}
    tables = rlhf_interp.compare("embedded", str(pair.tuned_source.path), prompts=pair.prompts,
                                 analyses="logit_lens", report=False)
    pd.testing.assert_frame_equal(tables["logit_lens"], lens["logit_lens"], atol=1e-5)


@pytest.mark.slow
def test_example_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"RLHF_INTERP_EXAMPLE_STEPS": "2", "PYTHONPATH": path}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                                ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (tmp_path / "runs" / "notebook" / "compare" / "report.html").is_file()
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "patching_heads" in last and "True" in last
