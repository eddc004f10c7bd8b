"""The web demo in a real headless browser: upload an image, ask, see the reference's answer stream in."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.frontends.web_demo import web_demo_process
from tests.golden import find_case, generations, golden_dir, prompts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _require_browser():
    if CHROMIUM is None:
        if os.environ.get("COGVLM_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but COGVLM_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (install Debian's chromium to run the browser test)")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("gradio")


@pytest.fixture
def web_demo():
    _require_browser()
    model_dir = golden_dir() / "cogvlm"
    name = find_case(
        model_dir,
        "of version chat_old without a history",
        lambda p, g: p["version"] == "chat_old" and not p["history"],
    )
    prompt, expected = prompts(model_dir)[name], generations(model_dir)[name]
    max_length = len(prompt["input_ids"]) + expected["max_new_tokens"]
    with web_demo_process(("--max_length", str(max_length)), start_timeout_s=120) as url:
        yield url + "/", prompt, expected


def test_upload_ask_and_read_the_answer_in_a_browser(web_demo):
    from playwright.sync_api import expect, sync_playwright

    url, prompt, expected = web_demo
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.locator("#image-input input[type=file]").set_input_files(
                str(golden_dir() / "test_image.png")
            )
            expect(page.locator("#image-input img")).to_be_visible(timeout=30_000)
            top_k = page.locator("#top-k input[type=number]")
            top_k.fill("1")
            top_k.press("Enter")
            page.locator("#query textarea").fill(prompt["query"])
            page.locator("#send").click()
            bot_messages = page.locator("#chatbot .message.bot, #chatbot [data-testid=bot]")
            answer = expected["response_after_official_postprocess"]
            expect(page.locator("#chatbot")).to_contain_text(answer, timeout=60_000)
            expect(page.locator("#chatbot")).to_contain_text(prompt["query"])
            assert bot_messages.count() >= 1
        finally:
            browser.close()
