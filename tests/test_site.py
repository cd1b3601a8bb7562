"""The course website (``python -m tlcourse site``), built from a smoke run of the real course.

One smoke run of every notebook (module fixture) feeds one Sphinx build. Then: a link checker over
every page (no broken internal link or anchor, nothing loaded from another host), the content the
course computed (summary rows, weights, key results, the README's pages), and headless Chromium
(the browser test's stack: playwright driving /usr/bin/chromium) loading every page with no console
error, finding the notebooks' images and tables, searching for "BatchNorm" and saving screenshots
of the landing page and of notebook 08 in test-artifacts/site/.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from tlcourse import TLCourseError
from tlcourse.course import Result, find_notebooks, run_course
from tlcourse.course_summary import SUMMARY_NAME, load_summary, save_summary

pytest.importorskip("myst_nb", reason="the site builder is not installed (pip install -e '.[site]')")
from tlcourse.site import build_site, site_pages, stale_notebooks  # noqa: E402
from tlcourse.site_content import (  # noqa: E402
    WIDGET_STATE,
    WIDGET_VIEW,
    compress_image,
    hide_machine_paths,
    machine_paths,
    prepare_notebook,
    readme_pages,
    rewrite_links,
)

# The theme and MyST-Parser still call Sphinx APIs deprecated for Sphinx 11: their noise, not ours.
pytestmark = [pytest.mark.notebooks, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "site"
CHROMIUM = "/usr/bin/chromium"
NOTEBOOKS = find_notebooks(ROOT / "notebooks")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A smoke run of the whole course, and the site built from it: ``(executed, site, report)``."""
    tmp = tmp_path_factory.mktemp("site")
    executed = tmp / "executed"
    run_course(folder=ROOT / "notebooks", output=executed, smoke=True, echo=lambda line: None)
    report = build_site(executed=executed, output=tmp / "html", run_missing=False, echo=lambda line: None)
    print(report.summary())
    return executed, report.output, report


def _notebook_has_figure_or_table(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(k.startswith("image/") for k in data) or "<table" in str(data.get("text/html", "")):
                return True
    return False


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.refs.append((tag, key, attrs[key]))


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


# --------------------------------------------------------------------------- without a browser

def test_every_internal_link_resolves_and_nothing_comes_from_another_host(built):
    _, site, _ = built
    parsed = {page: _parse(page) for page in site_pages(site)}
    broken, external = [], []
    for page, links in parsed.items():
        for tag, key, ref in links.refs:
            parts = urlsplit(ref)
            if parts.scheme in ("http", "https") or ref.startswith("//"):
                if key == "src" or tag == "link":  # scripts, styles, images: all must be on the site
                    external.append(f"{page.relative_to(site)}: {ref}")
                continue
            if parts.scheme in ("mailto", "javascript", "data"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {ref}")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)}: {ref} (no such anchor)")
    assert not broken, f"broken internal links: {broken[:20]}"
    assert not external, f"loaded from another host (the site must work offline): {external[:20]}"


def test_pages_show_what_the_course_run_recorded(built):
    executed, site, report = built
    rows = {r["notebook"]: r for r in load_summary(executed)["notebooks"]}
    assert sorted(rows) == [p.stem for p in NOTEBOOKS]
    landing = (site / "index.html").read_text(encoding="utf-8")
    landing_text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", landing))
    assert "make course" in landing_text and "make test" in landing_text  # the two commands, from the README
    assert "smoke run" in landing_text
    for path in NOTEBOOKS:
        row = rows[path.stem]
        page = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert f'href="notebooks/{path.stem}.html"' in landing, f"{path.stem} missing from the landing table"
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))
        assert f"python -m tlcourse course --only {path.name[:2]}" in text
        assert row["weights"] in text, f"{path.stem}: the weights the summary names are not on its page"
        assert "Last executed" in text and row["finished"][:10] in text
        if row["key_result"]:
            assert row["key_result"].split()[0] in text
        assert re.search(rf'href="[^"]*_downloads/[^"]*/{re.escape(path.name)}"', page), "no link to the notebook"
    for name in ("offline", "performance", "scaling"):
        assert (site / f"{name}.html").is_file()
    assert "TLCOURSE_DATA_MIRROR" in (site / "offline.html").read_text(encoding="utf-8")
    assert report.largest_page[1] < 2_000_000, f"a page weighs {report.largest_page}"
    assert not report.warnings, f"Sphinx warned (a broken reference, an unknown output?): {report.warnings[:5]}"
    print(report.summary())


def test_widget_outputs_become_a_static_snapshot_with_the_live_kernel_note(built):
    executed, site, _ = built
    with_widgets = [p for p in NOTEBOOKS
                    if WIDGET_VIEW in (executed / p.name).read_text(encoding="utf-8")]
    assert with_widgets, "notebook 02's freeze panel should leave a widget view in its executed copy"
    for path in with_widgets:
        nb = nbformat.read(executed / path.name, as_version=4)
        page = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert "tlcourse-widget-snapshot" in page and "needs a running Python kernel" in page
        assert WIDGET_VIEW not in page and WIDGET_STATE not in page  # no empty widget box, no embedder
        if nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state"):
            assert "trainable" in page  # the snapshot shows the panel's saved count and table


def test_site_refuses_stale_notebooks_and_a_foreign_output_folder(built, tmp_path):
    executed, _, _ = built
    source = tmp_path / "src"
    source.mkdir()
    copy = source / NOTEBOOKS[0].name
    copy.write_bytes(NOTEBOOKS[0].read_bytes())
    assert stale_notebooks([copy], executed) == [copy]  # the source is newer than its executed copy
    os.utime(copy, (time.time() - 10**6, time.time() - 10**6))
    assert stale_notebooks([copy], executed) == []
    assert stale_notebooks([copy], tmp_path / "nothing") == [copy]
    with pytest.raises(TLCourseError, match="missing or older"):
        build_site(executed=tmp_path / "nothing", output=tmp_path / "out", sources=[copy], run_missing=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TLCourseError, match="not a site built before"):
        build_site(executed=executed, output=foreign, sources=[copy], run_missing=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_failed_build_leaves_the_last_site_as_it_was(built, tmp_path):
    executed, site, _ = built
    broken, output = tmp_path / "executed", tmp_path / "site"
    shutil.copytree(executed, broken)
    shutil.copytree(site, output)
    (broken / NOTEBOOKS[-1].name).write_text('{"cells": [')  # a truncated notebook, newer than its source
    with pytest.raises(TLCourseError, match=rf"{NOTEBOOKS[-1].name} is not a readable notebook.*--only"):
        build_site(executed=broken, output=output, run_missing=False)
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == \
        sorted(p.relative_to(site) for p in site.rglob("*"))


def test_summary_file_keeps_rows_of_notebooks_not_run(tmp_path):
    first = [Result("01_a", "ok", 1.0, "w1", "k1"), Result("02_b", "ok", 2.0, "w2", "k2")]
    save_summary(first, tmp_path, smoke=False)
    save_summary([Result("02_b", "FAILED", 3.0, "w2", error="boom")], tmp_path, smoke=True)
    rows = {r["notebook"]: r for r in load_summary(tmp_path)["notebooks"]}
    assert rows["01_a"]["key_result"] == "k1" and not rows["01_a"]["smoke"]
    assert rows["02_b"]["status"] == "FAILED" and rows["02_b"]["smoke"] and rows["02_b"]["error"] == "boom"
    (tmp_path / SUMMARY_NAME).write_text("{not json")
    with pytest.raises(TLCourseError, match=SUMMARY_NAME):
        load_summary(tmp_path)


def test_readme_pages_fail_with_the_missing_section_named(tmp_path):
    (tmp_path / "README.md").write_text("# t\n\n## Offline classrooms\n\nx\n\n## Performance\n\ny\n")
    with pytest.raises(TLCourseError, match="GPU and Apple silicon"):
        readme_pages(tmp_path / "README.md", tmp_path)
    title, pages, _ = readme_pages(ROOT / "README.md", ROOT)
    assert pages["performance"].startswith("# Performance") and "](#" not in pages["scaling"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("x")
    text, files = rewrite_links("[a](a.md) [b](../tlcourse/x.py) [c](#c) [d](https://d.org)", {}, tmp_path, base=docs)
    assert text == "[a](a.md) b c [d](https://d.org)" and files == [Path("docs/a.md")]


def test_images_are_compressed_and_stay_images():
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(50), [i**0.5 for i in range(50)])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    mime, data = compress_image(buffer.getvalue())
    assert mime in ("image/png", "image/jpeg") and len(data) <= len(buffer.getvalue())


# --------------------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def server(built):
    _, site, _ = built

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        yield page
        browser.close()


@pytest.mark.browser
def test_every_page_loads_in_chromium_without_errors(built, server, browser_page):
    executed, site, _ = built
    page, problems, foreign = browser_page, [], []
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"{page.url}: {msg.text}"))
    page.on("pageerror", lambda exc: problems.append(f"{page.url}: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"{page.url}: failed {req.url}"))
    page.on("request", lambda req: req.url.startswith(server) or req.url.startswith("data:") or foreign.append(req.url))
    for path in site_pages(site):
        page.goto(f"{server}/{path.relative_to(site).as_posix()}")
        page.wait_for_load_state("networkidle")
    assert not problems, problems[:10]
    assert not foreign, f"requests to other hosts: {foreign[:10]}"

    for nb in NOTEBOOKS:
        page.goto(f"{server}/notebooks/{nb.stem}.html")
        outputs = page.locator(".cell_output img, .cell_output table")
        if _notebook_has_figure_or_table(executed / nb.name):
            assert outputs.count() > 0, f"{nb.stem}: its figures and tables are not on the page"
            first = outputs.first
            if first.evaluate("e => e.tagName") == "IMG":  # the image really decoded
                assert first.evaluate("e => e.complete && e.naturalWidth > 0")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{server}/index.html")
    page.screenshot(path=str(ARTIFACTS / "landing.png"), full_page=True)
    eight = [nb for nb in NOTEBOOKS if nb.name.startswith("08")]
    if eight:
        page.goto(f"{server}/notebooks/{eight[0].stem}.html")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / f"{eight[0].stem}.png"), full_page=True)
    assert (ARTIFACTS / "landing.png").stat().st_size > 10_000


@pytest.mark.browser
def test_search_finds_batchnorm(server, browser_page):
    page = browser_page
    page.goto(f"{server}/search.html?q=BatchNorm")
    results = page.locator("#search-results ul.search li")
    results.first.wait_for(timeout=30_000)
    assert results.count() >= 1
    assert "notebooks/" in " ".join(results.locator("a").evaluate_all("els => els.map(e => e.href)"))


def test_a_local_server_embedded_in_an_output_becomes_a_note():
    """Notebook 09 shows its Gradio demo inline (an iframe on 127.0.0.1): the static page keeps a note, no iframe."""
    cells = [nbformat.v4.new_markdown_cell("# Ship"), nbformat.v4.new_code_cell("launch()")]
    nb = nbformat.v4.new_notebook(cells=cells)
    frame = '<div><iframe src="http://127.0.0.1:7860/" width="100%" height="500" allow="autoplay"></iframe></div>'
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={"text/html": frame, "text/plain": "<HTML>"})]
    stats = {}
    shown = prepare_notebook(nb, None, "09_ship", "09_ship.ipynb", stats)
    data = shown.cells[-1].outputs[0]["data"]
    assert stats["live_servers"] == 1 and list(data) == ["text/html"]
    assert "<iframe" not in data["text/html"] and "http://127.0.0.1:7860/" in data["text/html"]
    assert "python -m tlcourse serve" in data["text/html"]


def test_the_machines_paths_are_not_published(tmp_path):
    """The injected parameters and printed lines name the checkout and TLCOURSE_* folders as '.' and '$NAME'."""
    repo, weights = tmp_path / "course", tmp_path / "share" / "weights"
    env = {"TLCOURSE_WEIGHTS_DIR": str(weights), "TLCOURSE_DATA_MIRROR": "https://example.org/d.zip"}
    pairs = machine_paths(repo, environ=env)
    code = nbformat.v4.new_code_cell(f'weights = "{weights}/mobilenet_v2_imagenet_backbone.pth"')
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"run folder: {repo}/checkpoints/nb03\n")]
    nb = nbformat.v4.new_notebook(cells=[code])
    assert hide_machine_paths(nb, pairs) == 2
    assert code.source == 'weights = "$TLCOURSE_WEIGHTS_DIR/mobilenet_v2_imagenet_backbone.pth"'
    assert code.outputs[0]["text"] == "run folder: ./checkpoints/nb03\n"
    assert all("://" not in path for path, _ in pairs)  # a mirror URL is not a path of this machine
