"""The page of `clozelm serve` end to end in headless Chromium (Debian's, driven by Playwright): hide a word,
fill, see both models' reconstructions, stream a continuation, open the heads view and see it drawn, stack
the columns on a narrow window; no request leaves the server, no console error (the page's Content
Security Policy is enforced). Saves screenshots under the test's tmp path; CLOZELM_SCREENSHOT=PATH also
copies the wide one there. (docs/screenshot.png is the same page on the embedded default models.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import clozelm
from .helpers import build_models, running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    causal, bidi = build_models(tmp_path_factory.mktemp("browser"))
    with running({str(causal): clozelm.load(causal), str(bidi): clozelm.load(bidi)}) as s:
        yield s


DREW_SOMETHING = """canvases => canvases.some(c => {
  if (!c.width || !c.height) return false;
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250)) return true;
  }
  return false;
})"""


def test_fill_generate_and_heads_in_the_browser(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.set_default_timeout(30_000)
    page.goto(server.url)
    page.wait_for_function("() => document.querySelectorAll('.column').length === 2")
    assert "causal/model" in page.inner_text("#models-line")

    # Hide "cat" with the button, then fill with Enter from the keyboard.
    text = page.locator("#text")
    text.fill("the cat sat on the mat")
    text.evaluate("t => { t.focus(); t.setSelectionRange(4, 7); }")
    page.click("#hide")
    assert text.input_value() == "the ___ sat on the mat"
    text.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('.column .answers').length === 2")
    for column in page.locator(".column").all():
        first = column.locator(".answers li").first
        assert first.locator("mark").count() == 1
        reconstruction = first.locator(".answer-text").inner_text()
        assert reconstruction.startswith("the ") and reconstruction.endswith(" sat on the mat")
        assert "___" not in reconstruction
    assert page.locator(".column .answers li").count() == 10  # 5 answers from each model
    assert "Filled" in page.inner_text("#status")

    # Focus order follows the page: the text box, then its buttons.
    text.focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "hide"

    # Streamed generation from the causal model.
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Generated')")
    assert page.inner_text("#gen-output .prompt") == "the"
    assert page.inner_text("#gen-output .continuation").strip()

    # The heads view of the current text, drawn in its iframe.
    page.click("#heads")
    frame = page.frame_locator("#heads-frame")
    frame.locator("canvas").first.wait_for()
    page.wait_for_timeout(300)  # let it paint
    assert frame.locator("canvas").evaluate_all(DREW_SOMETHING)
    assert page.locator("#heads-open").is_visible()

    # A viewport as tall as the page rather than full_page=True, which leaves the iframe blank in Chromium.
    page.set_viewport_size({"width": 1200, "height": page.evaluate("document.documentElement.scrollHeight")})
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    page.screenshot(path=str(tmp_path / "page.png"))
    if os.environ.get("CLOZELM_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["CLOZELM_SCREENSHOT"])

    # A narrow window stacks the two columns.
    page.set_viewport_size({"width": 600, "height": 900})
    boxes = [c.bounding_box() for c in page.locator(".column").all()]
    assert boxes[0]["x"] == boxes[1]["x"] and boxes[1]["y"] > boxes[0]["y"] + boxes[0]["height"] - 1
    page.screenshot(path=str(tmp_path / "narrow.png"))

    # Errors show as one line on the page.
    text.fill("nothing hidden here at all")
    page.click("#fill")
    assert "Nothing is hidden" in page.inner_text("#status")

    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith(("data:", "about:"))]
    assert not outside, outside
    assert not problems, problems
    page.close()


def test_the_heads_page_ignores_a_broken_link(browser, tmp_path):
    # The offline page takes its starting view from the URL's hash; a hand-edited one must not break it
    from clozelm.heads.extract import attention_map
    from clozelm.heads.views import write_page

    (tmp_path / "models").mkdir()
    causal, _ = build_models(tmp_path / "models")
    page_file = tmp_path / "heads.html"
    write_page([attention_map(clozelm.load(causal), "the dog ran home and the cat sat down")], page_file)
    for fragment in ("layer=x&pick=a.b&hover=from.-3", "view=model&pick=a.b", "view=model&pick=-1.0&layer=x",
                     "layer=99&pick=7.7&hover=to.1e9", "pick=0.1&hover=from.5&words"):
        page = browser.new_page(viewport={"width": 900, "height": 700})
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{page_file.as_uri()}#{fragment}")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_timeout(200)
        assert not problems, (fragment, problems)
        # the layer shown is one the model has (a NaN layer drew an empty view with a blank selector)
        assert page.eval_on_selector("select[aria-label=layer]", "s => s.value") in ("0", "1"), fragment
        page.close()


def test_the_heads_page_hides_sinks_and_groups_words(browser, tmp_path):
    """Both switches at once: sink columns dropped, rows renormalised by the weights left, then word level."""
    from clozelm.heads.extract import attention_map
    from clozelm.heads.views import write_page

    (tmp_path / "models").mkdir()
    causal, _ = build_models(tmp_path / "models")
    page_file = tmp_path / "heads.html"
    write_page([attention_map(clozelm.load(causal), "the dog ran home and the cat sat down")], page_file)
    page = browser.new_page(viewport={"width": 900, "height": 700})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    for label in ("hide sinks", "word level"):
        page.locator("label.toggle", has_text=label).locator("input").check()
    page.wait_for_timeout(300)
    assert page.locator("canvas").evaluate_all(DREW_SOMETHING)
    assert not problems, problems
    page.close()
