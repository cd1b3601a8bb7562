"""Notebook 02's freeze panel and one exercise as a learner uses them: JupyterLab in headless Chromium.

JupyterLab runs from this venv on a free port with a token and its own config, settings,
workspace and runtime folders (news and update checks off, so no toast covers the page). A
scratch copy of notebook 02 is opened and run with Run > Run All Cells, with no TLCOURSE_*
weights variable: offline, the notebook falls back to random weights by itself. Then real clicks
tick and untick blocks and press presets; after each, the panel's trainable count must be the
exact number for the ticked blocks, and the kernel's model must agree. Finally the widgets
extension is disabled and the page reloaded: the test must see that the panel is static.
Before that, the learner's version of the notebook (solutions removed) gets an answer typed into
an exercise cell; running it and its check turns "not attempted" into ✓.

Needs Chromium at /usr/bin/chromium (``.ci/run`` installs it with apt-get) and playwright (dev
extras; its own browser download is never used). A failure saves a screenshot in the test's tmp
folder and names it in the message.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tlcourse.exercises.release import learner_notebook
from tlcourse.freeze import blocks, set_trainable
from tlcourse.models import build_model
from tlcourse.widgets import COUNT_CLASS, PANEL_CLASS, STATIC_NOTE

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = next((ROOT / "notebooks").glob("02_*.ipynb"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
TIMEOUT_MS = 90_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver; .ci/run does it)",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server of its own: config, settings, workspaces and runtime in ``home``."""

    def __init__(self, home: Path, notebooks: Path):
        self.home, self.port, self.token = home, _free_port(), os.urandom(12).hex()
        self.config = home / "config"
        (self.config / "labconfig").mkdir(parents=True)
        (self.config / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
            "news_url": None, "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"}}))
        settings = home / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(json.dumps(
            {"fetchNews": "false", "checkForUpdates": False}))
        notebook_settings = home / "settings" / "@jupyterlab" / "notebook-extension"
        notebook_settings.mkdir(parents=True)  # every cell stays in the page, scrolled into view or not
        (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TLCOURSE_WEIGHTS", "TLCOURSE_SMOKE"))}
        env.update(JUPYTER_CONFIG_DIR=str(self.config), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={notebooks}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = (home / "lab.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("status")
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not start: {(home / 'lab.log').read_text()[-2000:]}")

    def api(self, path: str):
        with urllib.request.urlopen(f"{self.url}/api/{path}?token={self.token}", timeout=5) as response:
            return json.load(response)

    def disable_widgets_extension(self) -> None:
        """What ``jupyter labextension disable`` writes, in this server's own config folder (read per page load)."""
        (self.config / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {WIDGETS_EXTENSION: True}}))

    def kernel_client(self):
        """A second client of the notebook's kernel: the test asks the kernel itself about ``model``."""
        from jupyter_client import BlockingKernelClient

        (session,) = self.api("sessions")
        connection = self.home / "runtime" / f"kernel-{session['kernel']['id']}.json"
        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels()
        return client

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _kernel_trainable(client) -> tuple[int, list[str]]:
    out = []
    reply = client.execute_interactive(
        "print(sum(p.numel() for p in model.parameters() if p.requires_grad), *panel.selected())",
        output_hook=lambda msg: out.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None,
        timeout=30)
    assert reply["content"]["status"] == "ok", reply["content"]
    count, *selected = "".join(out).split()
    return int(count), selected


def _expected(ticked: list[str]) -> int:
    """The exact count for ``ticked`` blocks, from the shipped freezing code on the notebook's model."""
    model = build_model("resnet18", num_classes=2, weights=None)
    assert set(ticked) <= set(blocks(model))
    set_trainable(model, ticked)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _kernel_idle(page) -> None:
    """The status bar's kernel item reads ``Python 3 (ipykernel) | Idle`` (not ``No Kernel``, not ``Busy``)."""
    status = page.locator(".jp-StatusBar-TextItem[title^='Change kernel for']", has_text=re.compile(r"\| Idle$"))
    status.wait_for(timeout=TIMEOUT_MS)


def _run_all(page) -> None:
    _kernel_idle(page)  # Run All before the kernel is connected would open the Select Kernel dialog
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has=page.get_by_text("Run All Cells", exact=True)).click()
    # every cell ran: the key-result cell printed, and the kernel is idle again
    page.locator(".jp-OutputArea-output", has_text="KEY RESULT:").wait_for(timeout=TIMEOUT_MS)
    _kernel_idle(page)


def panel_is_live(page) -> bool:
    """True when the freeze panel rendered as widgets; False when JupyterLab shows its static text."""
    panel_cell = page.locator(".jp-CodeCell", has_text="panel = FreezePanel(model").first
    panel_cell.locator(".jp-OutputArea-output").first.wait_for(timeout=TIMEOUT_MS)
    if panel_cell.locator(f".{PANEL_CLASS}").count():
        return True
    assert STATIC_NOTE.split(":")[0] in panel_cell.inner_text()
    return False


def _answer_an_exercise(page) -> None:
    """Type an answer into the "Your turn" cell, run it and its check: "not attempted" becomes ✓."""
    check = page.locator(".jp-CodeCell", has_text="check.count_trainable(my_count_trainable").first
    check.locator(".jp-OutputArea-output", has_text="not attempted").wait_for(timeout=TIMEOUT_MS)
    answer = page.locator(".jp-CodeCell", has_text="my_count_trainable = None").first
    answer.locator(".cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    page.keyboard.insert_text("my_count_trainable = lambda model: (sum(p.numel() for p in model.parameters() "
                              "if p.requires_grad), sum(p.numel() for p in model.parameters()))")
    page.keyboard.press("Shift+Enter")  # runs the answer and moves to the check cell
    _kernel_idle(page)
    page.keyboard.press("Shift+Enter")  # runs the check
    sync_api.expect(check.locator(".jp-OutputArea-output")).to_contain_text("✓", timeout=TIMEOUT_MS)
    assert "right for head, last_stage and all" in check.inner_text()


def test_freeze_panel_in_jupyterlab(tmp_path):
    scratch = tmp_path / "notebooks"
    scratch.mkdir()
    # the learner's version (python -m tlcourse release): the lesson as committed, exercises without solutions
    nbformat.write(learner_notebook(json.loads(NOTEBOOK.read_text())), scratch / NOTEBOOK.name)
    lab = Lab(tmp_path / "lab", scratch)
    start, console = time.monotonic(), []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda msg: console.append(msg.text))
            try:
                _drive(page, lab, console)
            except BaseException:
                shot = tmp_path / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}\nbrowser console (last 20): {console[-20:]}")
                raise
            finally:
                browser.close()
    finally:
        lab.stop()
        print(f"browser test: {time.monotonic() - start:.1f}s after JupyterLab started")


def _drive(page, lab: Lab, console: list) -> None:
    expect = sync_api.expect
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    _run_all(page)
    assert panel_is_live(page), "the freeze panel did not render as widgets"
    panel = page.locator(f".{PANEL_CLASS}")
    count = panel.locator(f".{COUNT_CLASS}")
    assert panel.count() == 1, "only the learner's panel is displayed"
    client = lab.kernel_client()
    try:
        # the state its own cell asked for (preset="head"), whatever the next cell did
        steps = [("start", ["fc"]),
                 ("tick layer4", ["layer4", "fc"]),
                 ("untick fc", ["layer4"]),
                 ("preset all", ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]),
                 ("preset head", ["fc"])]
        for action, ticked in steps:
            verb, _, target = action.partition(" ")
            if verb in ("tick", "untick"):
                label = page.get_by_text(target, exact=True)
                box = panel.locator(".widget-checkbox").filter(has=label).locator("input")
                assert box.is_checked() == (verb == "untick")
                box.click()  # a real mouse click at the checkbox
            elif verb == "preset":
                panel.locator(".widget-toggle-button").filter(has_text=target).first.click()
            wanted = _expected(ticked)
            expect(count).to_contain_text(f"trainable {wanted:,} /", timeout=15_000)
            assert count.inner_text().count("trainable") == 1
            assert _kernel_trainable(client) == (wanted, ticked), action
            if verb == "preset":
                expect(panel.locator(".widget-toggle-button.mod-active")).to_have_text(target)
    finally:
        client.stop_channels()
    assert "Tick a block" in panel.inner_text()  # the line that says what to click
    _answer_an_exercise(page)

    # without the widgets extension the same cell can only show text: detected as static
    lab.disable_widgets_extension()
    console.clear()
    page.reload()
    _run_all(page)
    assert not panel_is_live(page), "with the widgets extension disabled the panel must be static"
    assert page.locator(f".{PANEL_CLASS}").count() == 0
