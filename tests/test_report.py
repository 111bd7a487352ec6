"""Reports: structure, escaping, bad inputs, and a real headless Chromium load (images, no network, not blank)."""

import io
import os
import re
import shutil

import pandas as pd
import pytest
from helpers import assert_one_line_error, plant_head, run_cli

from rlhf_interp.analysis import compare
from rlhf_interp.models import EMBEDDED_DIR
from rlhf_interp.prompts import EMBEDDED_PROMPTS
from rlhf_interp.report.figures import COMPARE_FIGURES
from rlhf_interp.report.render import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tuned = plant_head(EMBEDDED_DIR, root / "planted", 2, 1)
    out = root / "out dir ü"  # spaces and non-ASCII in the path
    compare("embedded", str(tuned), prompts=list(EMBEDDED_PROMPTS)[:8], out=out, samples_per_prompt=2, new_tokens=10,
            analyses="all,crosscoder", crosscoder="steps=100,texts=32,latents=128,k=8")  # every figure, opt-in too
    # a model "writes" markup: it must come out escaped
    beh = pd.read_csv(out / "tables" / "behaviour.csv")
    beh.loc[0, "response"] = "<script>alert('x')</script> & <b>bold</b>"
    beh.to_csv(out / "tables" / "behaviour.csv", index=False)
    render(out)
    return out


def test_report_structure(compare_dir):
    html = (compare_dir / "report.html").read_text(encoding="utf-8")
    assert html.count("<img ") == len(COMPARE_FIGURES)
    assert html.count("<figcaption>") == len(COMPARE_FIGURES)
    for name, _, _ in COMPARE_FIGURES:
        assert (compare_dir / "figures" / f"{name}.png").stat().st_size > 1000
    findings = re.search(r'<ul class="findings">(.*?)</ul>', html, re.S).group(1)
    items = re.findall(r"<li>(.*?)</li>", findings, re.S)
    assert len(items) >= 5 and all(re.search(r"\d", i) for i in items)
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "http" not in text and "//" not in text and "@import" not in text  # no network references


def test_relative_images_and_png_only(compare_dir, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(compare_dir, copy)
    proc = run_cli("report", str(copy), "--relative-images")
    assert proc.returncode == 0, proc.stderr
    assert 'src="figures/reward_hist.png"' in (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    assert run_cli("report", str(copy), "--format", "png").returncode == 0
    assert not (copy / "report.html").exists() and (copy / "figures" / "logit_lens.png").exists()


def test_report_bad_inputs(tmp_path, compare_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("report", str(empty)), "no tables")
    assert_one_line_error(run_cli("report", str(tmp_path / "missing")), "not found")
    broken = tmp_path / "broken"
    shutil.copytree(compare_dir, broken)
    pd.DataFrame({"layer": [0], "head": [0]}).to_csv(broken / "tables" / "patching_heads.csv", index=False)
    assert_one_line_error(run_cli("report", str(broken)), "patching_heads.csv lacks columns direction, effect")


@pytest.mark.slow
def test_report_in_headless_chromium(compare_dir, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto((compare_dir / "report.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        shot = page.screenshot(full_page=True)
        browser.close()
    assert len(widths) == len(COMPARE_FIGURES) and min(widths) > 0
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == []
    img = Image.open(io.BytesIO(shot)).convert("L")
    (tmp_path / "screenshot.png").write_bytes(shot)
    lo, hi = img.getextrema()
    assert hi - lo > 100 and img.height > 3000  # content, not a blank page
    colours = sum(1 for count in img.histogram() if count)
    assert colours > 20


def test_explore_data_comes_from_tables_and_fits(compare_dir):
    html = (compare_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="explore-data"' in html and len(html.encode()) < 5_000_000
    data = re.search(r'<script type="application/json" id="explore-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data  # model text cannot close the script element
    import json

    d = json.loads(data)
    pats = pd.read_csv(compare_dir / "tables" / "attention_patterns.csv")
    assert len(d["attention"]["heads"]) == len(pats[["layer", "head"]].drop_duplicates()) >= 1
    kl = pd.read_csv(compare_dir / "tables" / "token_kl.csv")
    assert sum(len(s["tokens"]) for s in d["kl"]) == len(kl[kl["sample"] < 48])
    names = [h["title"] for h in d["heatmaps"]]
    assert any("Patching" in n for n in names) and any("JS" in n for n in names)


def test_heatmaps_share_one_scale_with_a_floor():
    from rlhf_interp.report.figures import _heatmaps

    noise = pd.DataFrame([[1e-6, -1e-6], [0.0, 2e-6]])
    fig = _heatmaps([("noise", noise), ("zero", noise * 0)], floor=0.05, percent=True)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(-0.05, 0.05)}  # one scale, floor-wide
    assert not any(ax.texts for ax in fig.axes)  # noise is not annotated as if it mattered
    big = pd.DataFrame([[0.5, 0.0012], [0.0, -0.25]], index=[0, 1], columns=[0.0, 1.0])
    fig = _heatmaps([("a", big)], floor=0.05, percent=True)
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} == {"+50%", "-25%"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]  # integer head ticks


@pytest.mark.slow
def test_explore_view_is_interactive_offline(compare_dir):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((compare_dir / "report.html").as_uri())
        page.wait_for_load_state("load")
        # hover a heatmap cell: the readout shows that head's value
        page.hover("#hm-0 td[data-layer='2'][data-head='1']")
        heads = pd.read_csv(compare_dir / "tables" / "patching_heads.csv")
        planted = heads[(heads.direction == "tuned_to_base") & (heads.layer == 2) & (heads["head"] == 1)]
        from rlhf_interp.report.numbers import pct

        want = pct(float(planted.effect.iloc[0]), 3)
        assert page.text_content("#hm-readout-0").startswith("L2H1: ") and want[:3] in page.text_content(
            "#hm-readout-0")
        # choosing another prompt redraws the attention patterns and the drill-down
        first = page.text_content("#prompt-detail")
        tokens_before = page.eval_on_selector_all("table.att th", "ths => ths.map(t => t.textContent).join('|')")
        page.select_option("#prompt-select", "3")
        assert page.text_content("#prompt-detail") != first and "tuned − base" in page.text_content("#prompt-detail")
        tokens_after = page.eval_on_selector_all("table.att th", "ths => ths.map(t => t.textContent).join('|')")
        assert tokens_after != tokens_before
        page.hover("table.att[data-model='tuned'] tr:nth-child(2) td:nth-child(2)")
        assert "base 0." in page.text_content("#att-readout") or "base 1." in page.text_content("#att-readout")
        # clicking a prompt row in the table selects it
        page.click("details summary")
        row = page.query_selector_all("#prompt-table tr[data-prompt]")[-1]
        row.click()
        assert "selected" in row.get_attribute("class")
        # the KL view: hovering a token shows its KL; another sample shows other text
        page.hover("#kl-text span.kl-tok[data-pos='0']")
        assert "KL" in page.text_content("#kl-readout") and "nats" in page.text_content("#kl-readout")
        text0 = page.text_content("#kl-text")
        page.select_option("#kl-select", "1")
        assert page.text_content("#kl-text") != text0
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []


def test_training_report_draws_the_value_function_and_reward_minus_kl(tmp_path):
    from rlhf_interp.plots.training import PANELS

    run = tmp_path / "run"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "reports", "training"), run)
    render(run)
    html = (run / "report.html").read_text(encoding="utf-8")
    titles = [title for title, _ in PANELS]
    assert "value loss" in titles and "value explained variance" in titles
    assert any("β·KL" in t for t in titles) and not any(t.startswith("KL coefficient") for t in titles)
    assert "value loss" in html and (run / "figures" / "training_curves.png").stat().st_size > 10_000
