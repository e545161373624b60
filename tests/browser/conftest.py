"""Fixtures for the browser tests: one JupyterLab server and one headless Chromium per module.

Every test here carries the `browser` marker (deselect them with `-m "not browser"`).
Without Chromium or Playwright they skip with instructions, unless
MAMBA_NB_REQUIRE_BROWSER=1 (set by `.ci/run`), where that is a failure.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .lab_harness import (
    CHROMIUM_ARGS,
    ENABLE_HINT,
    NOTEBOOK_DIR,
    LabServer,
    browser_required,
    find_chromium,
    screenshot,
    stage_tree,
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Remember each phase's outcome on the item, so `page` can tell a failed test at teardown.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _unavailable(why: str):
    msg = f"{why}. {ENABLE_HINT}"
    if browser_required():
        pytest.fail(f"MAMBA_NB_REQUIRE_BROWSER=1 but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = find_chromium()
    if path is None:
        env = os.environ.get("MAMBA_NB_CHROMIUM")
        if env:
            _unavailable(f"MAMBA_NB_CHROMIUM={env} is not an executable file")
        _unavailable("no Chromium found (looked at $MAMBA_NB_CHROMIUM, /usr/bin/chromium, PATH)")
    return path


@pytest.fixture(scope="session")
def playwright_instance(chromium_executable):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the `playwright` Python package is not installed")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser_context(playwright_instance, chromium_executable, tmp_path_factory):
    """A fresh Chromium profile that can reach only 127.0.0.1 (every other request is aborted)."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        context = playwright_instance.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=chromium_executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
    except Exception as e:  # a browser that is there but cannot start (missing libraries, ...)
        _unavailable(f"Chromium at {chromium_executable} did not start: {str(e).splitlines()[0]}")

    def only_local(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_local)
    context.set_default_timeout(60_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context, request):
    pg = browser_context.new_page()
    # The page's errors end up in the test's captured output.
    pg.on("console", lambda m: m.type == "error" and print(f"[browser console] {m.text}"))
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            # What the page showed when the test failed, and what the server logged.
            try:
                screenshot(pg, f"FAILED-{request.node.name}")
            except Exception as e:
                print(f"(no failure screenshot: {e})")
            lab = request.node.funcargs.get("lab")
            if lab is not None:
                print(f"--- JupyterLab log ({lab.log_path}), last lines ---\n{lab.log_tail()}")
        pg.close()


def start_lab(root: Path, state_dir: Path) -> LabServer:
    # MAMBA_NB_SMOKE=1 reaches every kernel through the server's environment.
    return LabServer.start(root, state_dir, extra_env={"MAMBA_NB_SMOKE": "1"})


@pytest.fixture(scope="module")
def lab_tree(tmp_path_factory) -> Path:
    """An empty scratch root for the module's server; tests stage notebooks into it."""
    return tmp_path_factory.mktemp("lab-root")


@pytest.fixture(scope="module")
def lab(lab_tree, browser_context):
    # (browser_context first: without a working browser the test skips before a server starts)
    """A JupyterLab serving `lab_tree`; always stopped, kernels included, even on failure."""
    state = Path(tempfile.mkdtemp(prefix="mamba-nb-jupyter-"))
    server = None
    try:
        server = start_lab(lab_tree, state)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def course(lab, lab_tree):
    """`course(name)` copies notebook `name` into a scratch tree served by `lab` and
    returns its path on the server."""

    def stage(name: str) -> str:
        src = NOTEBOOK_DIR / name
        assert src.exists(), f"course notebook missing: {src}"
        stage_tree(lab_tree / "course", {name: src})
        return f"course/notebooks/{name}"

    return stage
