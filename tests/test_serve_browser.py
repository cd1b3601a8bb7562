"""The Gradio demo as a visitor uses it: headless Chromium uploads files, 20 clients ask at once.

The demo serves an export of a small ResNet-18 trained on three colour classes (it gets every val
image right). Chromium (/usr/bin/chromium through playwright, the stack of test_browser.py)
uploads a val image and must see its true class on the page; then a text file renamed .jpg and a
PNG whose header declares 20,000 x 20,000 pixels: the page shows a one-line message and the next
upload is answered again. Finally 20 requests are submitted at once over 127.0.0.1 and every
answer must be the image's true class.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_ship import CLASSES, exported, png_header, trained  # noqa: F401 (module fixtures)

from tlcourse.predict import list_images
from tlcourse.serve import build_demo, free_port, launch

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    demo = build_demo(model_dir=exported.folder)
    url = launch(demo, port=free_port(start=7900), block=False)
    assert url.startswith("http://127.0.0.1:")
    yield url
    demo.close()


def _upload_and_read(page, url, path) -> str:
    """A fresh page (the File component swaps its input for the file's name), one upload, the verdict."""
    page.goto(url, timeout=TIMEOUT_MS)
    page.locator("#upload input[type=file]").wait_for(state="attached", timeout=TIMEOUT_MS)
    before = page.locator("#verdict").inner_text()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    # every answer has a bold part; while pending the component shows a timer ("0.1s") instead
    page.wait_for_function("prev => { const e = document.querySelector('#verdict');"
                           " return e && e.querySelector('strong') && e.innerText !== prev"
                           " && !/[0-9.]+s$/.test(e.innerText.trim()); }", arg=before, timeout=TIMEOUT_MS)
    return page.locator("#verdict").inner_text()


def test_demo_in_chromium(trained, server, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    data = trained[0]
    fake = tmp_path / "holiday.jpg"
    fake.write_text("<html>not an image</html>")
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header(20_000, 20_000))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        try:
            image = list_images(data / "val" / "willow")[0]
            verdict = _upload_and_read(page, server, image)
            assert "willow" in verdict and "willow" in page.locator("#topk").inner_text()
            for bad, words in ((fake, "text file"), (bomb, "too large")):
                verdict = _upload_and_read(page, server, bad)
                assert "Cannot use this file" in verdict and words in verdict, verdict
                assert "\n" not in verdict.strip()
            verdict = _upload_and_read(page, server, list_images(data / "val" / "cherry")[0])
            assert "cherry" in verdict  # still serving
        except Exception:
            page.screenshot(path=str(tmp_path / "demo.png"))
            raise
        finally:
            browser.close()


def test_twenty_concurrent_requests(trained, server):  # noqa: F811
    from gradio_client import Client, handle_file

    data = trained[0]
    images = [p for cls in CLASSES for p in list_images(data / "val" / cls)][:20]
    assert len(images) == 20
    client = Client(server, verbose=False)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda p: client.predict(handle_file(str(p)), api_name="/classify"), images))
    assert [a[0]["label"] for a in answers] == [p.parent.name for p in images]
