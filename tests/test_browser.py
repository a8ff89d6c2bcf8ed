"""A real browser drives notebooks in JupyterLab.

JupyterLab runs on 127.0.0.1 (a free port, no token, a temporary root, runtime, config and
settings folder, so the checkout's notebook is never modified); headless Chromium
(Debian's ``/usr/bin/chromium`` through Playwright's ``executable_path``; never
``playwright install``) opens a copy of a notebook and runs all cells in fast mode
(``LAB_FAST=1``). In ``04_trajectories_2d`` it moves the first step slider with the
keyboard and checks that the plot image and the ``step k/N`` readout change; in
``05_dropping_the_timestep`` it checks that the rule panel's "sigma from" dropdown shows
its value when the panel opens and after each choice; in ``09_guidance`` it moves the
guidance scale slider with the keyboard and checks that the panel samples again (its
figures and picture change). Screenshots go to ``results/browser/``.

Without Chromium or Playwright the tests are skipped, except under ``CI=true``, where they
must run. Budget: about a minute each on 2 busy cores; each fails past ``BUDGET`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHOTS = ROOT / "results" / "browser"
CHROMIUM = os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--disable-dev-shm-usage"]
BUDGET = 150.0  # seconds for each test; typically 30-60
IN_CI = os.environ.get("CI", "").lower() == "true"
#: JupyterLab user settings: start the notebook's kernel without asking, fetch no news
SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True,
                                                      "windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"}}


def _need(condition: bool, reason: str):
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "api/status", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()}")


def _kernel_idle(page, timeout_ms: int):
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           state="attached", timeout=timeout_ms)


def _in_jupyterlab(tmp_path, notebook: str, drive):
    """Open ``notebooks/<notebook>`` in JupyterLab in headless Chromium, run all its cells
    and hand the page to ``drive(page)``; a failure leaves a screenshot."""
    _need(os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK),
          f"no Chromium at {CHROMIUM} (apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "Playwright for Python is not installed (pip install playwright)")
    start = time.monotonic()
    SHOTS.mkdir(parents=True, exist_ok=True)

    server = _JupyterLab(tmp_path, NOTEBOOKS / notebook)
    url = server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                try:
                    _run_all_cells(page, url, notebook)
                    drive(page)
                except Exception:
                    page.screenshot(path=str(SHOTS / f"failure_{Path(notebook).stem}.png"),
                                    full_page=True)
                    raise
            finally:
                browser.close()
    finally:
        server.stop()
    elapsed = time.monotonic() - start
    print(f"browser test of {notebook} took {elapsed:.1f} s")
    assert elapsed < BUDGET, f"browser test took {elapsed:.0f} s (budget {BUDGET:.0f} s)"


def test_scrubber_in_jupyterlab(tmp_path):
    _in_jupyterlab(tmp_path, "04_trajectories_2d.ipynb", _drive_scrubber)


def test_sigma_from_dropdown_shows_its_value(tmp_path):
    _in_jupyterlab(tmp_path, "05_dropping_the_timestep.ipynb", _drive_sigma_from)


def test_guidance_scale_slider_resamples(tmp_path):
    _in_jupyterlab(tmp_path, "09_guidance.ipynb", _drive_guidance_scale)


def _run_all_cells(page, url: str, notebook: str):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url + "lab/tree/" + notebook, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    # should the kernel dialog come up all the same, accept the notebook's kernel
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        dialog.wait_for(state="visible", timeout=3_000)
        dialog.click()
    except PlaywrightTimeout:
        pass
    page.wait_for_function(
        "() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent || '')",
        timeout=90_000)
    _kernel_idle(page, 90_000)

    # Run > Run All Cells
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _drive_scrubber(page):
    slider = page.locator(".lab-scrubber-slider").first
    readout = page.locator(".lab-scrubber-readout").first
    image = page.locator("img.lab-scrubber-image").first
    slider.wait_for(state="visible", timeout=120_000)
    page.wait_for_function(
        "() => { const img = document.querySelector('img.lab-scrubber-image');"
        " return img && img.complete && img.naturalWidth > 0; }", timeout=60_000)
    page.wait_for_function(
        "() => /step \\d+\\/\\d+/.test(document.querySelector('.lab-scrubber-readout')"
        "?.textContent || '')", timeout=60_000)
    _kernel_idle(page, 120_000)

    readout.scroll_into_view_if_needed()
    text = readout.text_content()
    found = re.search(r"step (\d+)/(\d+)", text)
    assert found, f"no step k/N in the readout: {text!r}"
    k, n = map(int, found.groups())
    assert k == n > 1, f"the scrubber should open on its last step, readout: {text!r}"
    src_before = image.get_attribute("src")
    shot_before = image.screenshot(path=str(SHOTS / "04_trajectories_2d_before.png"))

    # keyboard: focus the slider's handle and step back three times
    handle = slider.locator(".noUi-handle").first
    handle.click()
    for _ in range(3):
        handle.press("ArrowLeft")
    pressed = time.monotonic()
    target = n - 3
    page.wait_for_function(
        f"() => (document.querySelector('.lab-scrubber-readout')?.textContent || '')"
        f".includes('step {target}/{n}')", timeout=30_000)
    page.wait_for_function(
        "(before) => { const img = document.querySelector('img.lab-scrubber-image');"
        " return img && img.src !== before && img.complete && img.naturalWidth > 0; }",
        arg=src_before, timeout=30_000)
    print(f"the plot caught up {time.monotonic() - pressed:.2f} s after the third key press")
    text_after = readout.text_content()
    assert f"step {target}/{n}" in text_after, text_after
    assert "sigma" in text_after and "NFE" in text_after, text_after
    assert image.get_attribute("src") != src_before
    shot_after = image.screenshot(path=str(SHOTS / "04_trajectories_2d_after.png"))
    assert shot_after != shot_before, "the plot looks the same after moving the slider"
    page.locator(".lab-scrubber").first.screenshot(path=str(SHOTS / "04_trajectories_2d.png"))
    page.screenshot(path=str(SHOTS / "04_trajectories_2d_page.png"))


#: What a <select> shows: its selected option's text, "" when nothing is selected (an
#: ipywidgets Dropdown whose value is not among its options, e.g. None, shows blank).
SHOWN = "s => s.selectedIndex >= 0 ? s.options[s.selectedIndex].text : ''"


def _drive_sigma_from(page):
    # found by its label, as a reader finds it
    box = page.locator(".widget-dropdown", has=page.locator("label", has_text="sigma from"))
    select = box.locator("select").first
    select.wait_for(state="visible", timeout=120_000)
    _kernel_idle(page, 120_000)  # every cell ran: the kernel answers each choice at once
    select.scroll_into_view_if_needed()
    options = select.evaluate("s => Array.from(s.options, o => o.text)")
    assert options == ["schedule", "rms"], options
    assert select.evaluate(SHOWN) == "schedule", "the dropdown is blank when the panel opens"
    for choice in ("rms", "schedule"):
        select.select_option(label=choice)
        _kernel_idle(page, 30_000)
        page.wait_for_timeout(500)  # the kernel's echo of the value has come back
        shown = select.evaluate(SHOWN)
        assert shown == choice, f"after choosing {choice!r} the dropdown shows {shown!r}"
    box.screenshot(path=str(SHOTS / "05_sigma_from.png"))


def _drive_guidance_scale(page):
    panel = page.locator(".lab-rule-panel", has=page.locator(".lab-guidance-scale")).first
    slider = panel.locator(".lab-guidance-scale").first
    stats = panel.locator(".lab-guidance-stats").first
    image = panel.locator("img.lab-scrubber-image").first
    slider.wait_for(state="visible", timeout=120_000)
    _kernel_idle(page, 180_000)  # every cell ran: the panel shows its last run
    slider.scroll_into_view_if_needed()
    scale_before = slider.locator(".widget-readout").text_content()
    stats_before = stats.text_content()
    src_before = image.get_attribute("src")
    assert "pixels beyond [-1, 1]" in stats_before, stats_before
    shot_before = panel.screenshot(path=str(SHOTS / "09_guidance_before.png"))

    handle = slider.locator(".noUi-handle").first
    handle.click()
    handle.press("ArrowRight")  # one step of the scale; letting go reruns the panel
    page.wait_for_function(
        "([css, before]) => { const r = document.querySelector(css + ' .widget-readout');"
        " return r && r.textContent !== before; }",
        arg=[".lab-guidance-scale", scale_before], timeout=30_000)
    page.wait_for_function(
        "(before) => { const s = document.querySelector('.lab-guidance-stats');"
        " return s && s.textContent !== before; }", arg=stats_before, timeout=60_000)
    _kernel_idle(page, 60_000)
    scale_after = slider.locator(".widget-readout").text_content()
    assert float(scale_after) > float(scale_before), (scale_before, scale_after)
    assert image.get_attribute("src") != src_before, "the samples did not change"
    shot_after = panel.screenshot(path=str(SHOTS / "09_guidance_after.png"))
    assert shot_after != shot_before, "the panel looks the same after moving the scale"


class _JupyterLab:
    """Start/stop wrapper around the server (kept outside pytest fixtures so the
    browser test can report its own total time)."""

    def __init__(self, tmp_path: Path, notebook: Path):
        self.tmp = tmp_path
        self.notebook = notebook
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        root = self.tmp / "root"
        root.mkdir()
        shutil.copy(self.notebook, root / self.notebook.name)
        env = dict(os.environ, LAB_FAST="1", OMP_WAIT_POLICY="PASSIVE",
                   JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
                   JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
                   IPYTHONDIR=str(self.tmp / "ipython"),
                   JUPYTERLAB_SETTINGS_DIR=str(self.tmp / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"))
        settings = self.tmp / "settings"
        for plugin, values in SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        port = _free_port()
        self.log = self.tmp / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               f"--ServerApp.root_dir={root}", "--ServerApp.disable_check_xsrf=True",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly",
               f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={self.tmp / 'workspaces'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI and containers run as root
        with open(self.log, "w") as out:
            # a session of its own: stop() signals the whole process group of the server
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}/"
        _wait_for_server(self.url, self.proc, self.log)
        return self.url

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # kernels run in sessions of their own: shut ours down through the server first
        try:
            with urllib.request.urlopen(self.url + "api/kernels", timeout=5) as r:
                kernels = json.load(r)
            for kernel in kernels:
                request = urllib.request.Request(self.url + f"api/kernels/{kernel['id']}",
                                                 method="DELETE")
                urllib.request.urlopen(request, timeout=20).close()
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
