"""The explorer page in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
it renders with no console error, asks nothing of the network, and reacts to clicks and hovers.
Skipped with the reason where no browser is installed (``make test`` installs it as root)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from attnlab.viz import explore as E
from test_explore import CORPUS, canvas_image, picture, tiny_detr, tiny_lm, tiny_mt, tiny_vit, worked_softmax

CHROMIUM = os.environ.get("ATTNLAB_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the dev extra)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium as root; or set ATTNLAB_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="attnlab-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": 1200, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


class Opened:
    """A page opened from a file, with every request it made and every console error."""

    def __init__(self, ctx, path: Path) -> None:
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = ctx.new_page()
        self.page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.route("**/*", self._route)  # every request passes here; only the page itself is served
        self.page.goto(self.url)

    def _route(self, route) -> None:
        self.requests.append(route.request.url)
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    def ready(self) -> Opened:
        self.page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        return self

    def assert_clean(self) -> None:
        assert self.requests == [self.url], f"the page asked the network for {self.requests[1:]}"
        assert self.errors == []


def test_request_recorder_sees_a_page_that_asks_the_network(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"><script>document.body.dataset.ready = "1"'
                   '</script></body></html>', encoding="utf-8")
    o = Opened(browser, bad).ready()
    o.page.wait_for_timeout(200)
    with pytest.raises(AssertionError, match="asked the network"):
        o.assert_clean()
    o.page.close()


def test_vit_page_patch_and_head_clicks(browser, tmp_path):
    vit = tiny_vit()
    data = E.explore_vit(vit, picture(), label="tiny-vit", random_init=True, worked=(1, 0))
    o = Opened(browser, E.write_page(data, tmp_path / "vit.html")).ready()
    page = o.page
    assert page.is_visible("#random-init")
    stage = page.locator("#vit-stage")
    assert stage.get_attribute("data-query") == "0"  # the class token to start with
    before = page.evaluate("document.getElementById('vit-overlay').toDataURL()")
    box = page.locator("#vit-overlay").bounding_box()
    gh, gw = data["grid"]
    page.mouse.click(box["x"] + box["width"] * (2.5 / gw), box["y"] + box["height"] * (1.5 / gh))  # patch (1, 2)
    query = 1 + 1 * gw + 2
    assert stage.get_attribute("data-query") == str(query)
    assert "patch (1, 2) (pinned)" in page.text_content("#vit-query")
    assert page.evaluate("document.getElementById('vit-overlay').toDataURL()") != before
    assert page.input_value("#worked-query") == str(query)  # the worked head follows the clicked patch
    page.click("button[data-head='2']")
    assert stage.get_attribute("data-head") == "2"
    assert page.get_attribute("button[data-head='2']", "aria-pressed") == "true"
    page.select_option("#vit-layer", "0")
    assert stage.get_attribute("data-layer") == "0"
    # the worked head: the page's softmax is the model's; without the scaling it changes
    assert float(page.get_attribute("#worked-check", "data-diff")) < 1e-5
    model_max = float(page.get_attribute("#worked-stats", "data-max"))
    assert model_max == pytest.approx(float(worked_softmax(data["worked"])[query].max()), abs=1e-5)
    page.check("#worked-mode-unscaled")
    assert float(page.get_attribute("#worked-stats", "data-max")) != pytest.approx(model_max, abs=1e-6)
    page.locator("#posgrid").hover()
    page.screenshot(path=str(tmp_path / "vit.png"), full_page=True)
    assert (tmp_path / "vit.png").stat().st_size > 10_000
    o.assert_clean()
    page.close()


def test_lsa_vit_page_names_its_learned_scale(browser, tmp_path):
    """A Locality Self-Attention head multiplies by its learned scale: the page says so instead of ÷√d_k,
    and its softmax is still the model's."""
    vit = tiny_vit(lsa=True)
    with torch.no_grad():
        vit.blocks[1].self_attn.scale.copy_(torch.tensor([0.9, 0.05, 1.7, 0.3]))
    data = E.explore_vit(vit, picture(), label="lsa-vit", random_init=True, worked=(1, 2))
    o = Opened(browser, E.write_page(data, tmp_path / "lsa.html")).ready()
    text = o.page.inner_text("body")  # what is shown, not the page's script
    assert "× learned scale" in text and "÷√d_k" not in text
    assert float(o.page.get_attribute("#worked-check", "data-diff")) < 1e-5
    o.assert_clean()
    o.page.close()


def test_lm_page_head_view_and_model_view(browser, tmp_path):
    from attnlab.data.tokenizers import train_tokenizer

    tok = train_tokenizer("char", " ".join(CORPUS))
    data = E.explore_lm(tiny_lm(tok), tok, "a dog reads", label="tiny-lm", random_init=True, worked=(1, 3))
    o = Opened(browser, E.write_page(data, tmp_path / "lm.html")).ready()
    page = o.page
    preds = page.locator("#prompt span.pred")  # the card's promise: every token's next-token prediction, shown, not on hover
    assert preds.count() == len(data["text"]["tokens"]) and preds.nth(3).is_visible()
    nxt = data["text"]["next"][3]
    assert preds.nth(3).text_content() == f"→ {nxt['token']} {nxt['p']:.2f}"
    lines = lambda sel="": page.locator(f"svg.headview line{sel}").count()  # noqa: E731
    assert lines("[data-head='1']") > 0
    page.click("button.head-toggle[data-head='1']")
    assert page.get_attribute("button.head-toggle[data-head='1']", "aria-pressed") == "false"
    assert lines("[data-head='1']") == 0 and lines() > 0
    page.hover("svg.headview .hv-left text[data-i='4']")
    assert lines() > 0 and lines() == lines("[data-q='4']")
    page.mouse.move(0, 0)
    assert page.is_hidden("div[role=tablist]")  # one kind of attention: no tabs
    assert page.is_hidden("#mv-zoom-self")
    page.click("canvas.mv-cell[data-layer='1'][data-head='2']")
    assert page.is_visible("#mv-zoom-self") and page.text_content("#mv-zoom-self h3") == "layer 1 · head 2"
    assert page.get_attribute("svg.headview", "data-layer") == "1"
    assert lines() > 0 and lines() == lines("[data-head='2']")  # the head view shows the enlarged head only
    # the worked head: pick query 6 and read the page's weights against the model's
    page.select_option("#worked-query", "6")
    ref = worked_softmax(data["worked"])[6]
    rows = page.locator("#worked-table tr[data-k]")
    assert rows.count() == 7  # a causal query 6 sees keys 0..6
    for r in range(rows.count()):
        k = int(rows.nth(r).get_attribute("data-k"))
        assert float(rows.nth(r).locator("td.w").text_content()) == pytest.approx(float(ref[k]), abs=6e-5)
    page.screenshot(path=str(tmp_path / "lm.png"), full_page=True)
    o.assert_clean()
    page.close()


def test_translation_page_steps(browser, tmp_path):
    from attnlab.data.tokenizers import BPETokenizer

    bpe = BPETokenizer.train(CORPUS, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    data = E.explore_translation(tiny_mt(bpe), bpe, bpe, "ein hund läuft .", "a dog runs .", label="tiny-mt", random_init=True)
    o = Opened(browser, E.write_page(data, tmp_path / "mt.html")).ready()
    page = o.page
    page.fill("#step", "2")  # a range input: fill sets its value and fires input
    assert page.get_attribute("#alignment", "data-step") == "2"
    text = data["text"]  # the target was forced: the page says so and shows the model's own next token beside it
    label = f"target (forced) “{text['output'][2]}” · the model predicts “{text['predicted'][2]}”"
    assert label in page.text_content("#step-label")
    assert page.text_content("#own-prediction") == f"model: {text['predicted'][2]}" and page.is_visible("text=forced target")
    assert page.get_attribute("button.tab[data-set='cross']", "aria-selected") == "true"
    lines = page.locator("svg.headview line")
    assert lines.count() > 0 and page.locator("svg.headview line[data-q='2']").count() == lines.count()
    assert page.input_value("#worked-query") == "2"
    assert page.is_visible("div[role=tablist]")
    page.click("button.tab[data-set='enc']")
    assert page.get_attribute("svg.headview", "data-set") == "enc"
    o.assert_clean()
    page.close()
    greedy = E.explore_translation(tiny_mt(bpe), bpe, bpe, "ein hund läuft .", label="tiny-mt", random_init=True)
    o = Opened(browser, E.write_page(greedy, tmp_path / "greedy.html")).ready()
    o.page.fill("#step", "1")
    assert o.page.text_content("#step-label").endswith(f"→ predicts “{greedy['text']['predicted'][1]}”")
    assert o.page.locator("#own-prediction").count() == 0
    o.assert_clean()
    o.page.close()


def test_detr_page_query_clicks_and_encoder_hover(browser, tmp_path):
    model = tiny_detr()
    data = E.explore_detr(model, canvas_image(), label="tiny-detr", random_init=True, threshold=0.0)
    o = Opened(browser, E.write_page(data, tmp_path / "detr.html")).ready()
    page = o.page
    assert page.is_visible("#random-init")
    shown = data["shown"]
    assert page.locator("#detr-boxes g.box").count() == len(shown) and page.locator("button.query-btn").count() == len(shown)
    labels = page.evaluate("[...document.querySelectorAll('#detr-boxes g.box text')].map((t) => {"
                           " const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; })")
    assert len(labels) == len(shown) > 3  # every label inside the picture, none printed over another
    assert all(0 <= x0 and 0 <= y0 and x1 <= 336 + 0.5 for x0, y0, x1, _ in labels)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] + 0.5 or b[3] <= a[1] + 0.5, (a, b)
    stage, overlay = page.locator("#detr-stage"), "document.getElementById('detr-cross').toDataURL()"
    assert stage.get_attribute("data-query") == str(shown[0])
    assert page.get_attribute("#detr-boxes g.box.active", "data-query") == str(shown[0])
    page.click("#detr-heads button[data-head='1']")  # one head: the queries' maps differ more than the heads' mean
    before = page.evaluate(overlay)
    page.click(f"button.query-btn[data-query='{shown[2]}']")
    page.mouse.move(0, 0)  # off the button: the clicked query stays
    assert stage.get_attribute("data-query") == str(shown[2])
    assert page.evaluate(overlay) != before  # its cross-attention map is drawn
    assert page.locator("#detr-boxes g.box.active").count() == 1
    assert page.get_attribute("#detr-boxes g.box.active", "data-query") == str(shown[2])  # and its box highlighted
    assert page.get_attribute(f"button.query-btn[data-query='{shown[2]}']", "aria-pressed") == "true"
    assert page.input_value("#worked-query") == str(shown[2])  # the worked head follows the clicked query
    assert float(page.get_attribute("#worked-check", "data-diff")) < 1e-5
    model_max = float(page.get_attribute("#worked-stats", "data-max"))
    assert model_max == pytest.approx(float(worked_softmax(data["worked"])[shown[2]].max()), abs=1e-5)
    page.locator(f"#detr-boxes g.box[data-query='{shown[1]}']").dispatch_event("click")  # a box picks its query too
    assert stage.get_attribute("data-query") == str(shown[1])
    assert page.get_attribute("#detr-boxes g.box.active", "data-query") == str(shown[1])
    page.select_option("#detr-layer", "0")
    assert stage.get_attribute("data-layer") == "0"
    # the encoder self-attention at a hovered feature-map cell
    enc, enc_overlay = page.locator("#enc-stage"), "document.getElementById('enc-overlay').toDataURL()"
    enc.scroll_into_view_if_needed()
    box = page.locator("#enc-overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5 / 8, box["y"] + box["height"] * 0.5 / 8)  # cell (0, 0)
    first = page.evaluate(enc_overlay)
    assert enc.get_attribute("data-cell") == "0"
    page.mouse.move(box["x"] + box["width"] * 6.5 / 8, box["y"] + box["height"] * 5.5 / 8)  # cell (5, 6)
    assert enc.get_attribute("data-cell") == str(5 * 8 + 6) and "cell (5, 6)" in page.text_content("#enc-query")
    assert page.evaluate(enc_overlay) != first
    page.screenshot(path=str(tmp_path / "detr.png"), full_page=True)
    assert (tmp_path / "detr.png").stat().st_size > 10_000
    o.assert_clean()
    page.close()
