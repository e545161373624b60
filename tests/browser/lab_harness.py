"""Drive a real JupyterLab in headless Chromium: the server, the browser, a notebook.

`pytest --nbmake` runs a notebook's cells but never renders a widget, so it
cannot see a slider that does nothing when moved. This module starts what a
learner starts (`python -m jupyterlab` from the project's environment) and
drives it through Playwright, so a test can move a widget with the keyboard
and read what the page then shows.

What it does not do: install anything (see `.ci/browser-deps.sh` for Chromium;
`playwright install` is never run, it downloads from a CDN), or touch the
committed notebooks (they are copied into a scratch tree, see `stage_tree`,
because JupyterLab writes outputs back into a notebook it runs).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Where the notebooks under test come from. MAMBA_NB_NOTEBOOK_DIR points the tests at
# other copies, e.g. one with a deliberately broken callback, to see that they fail.
NOTEBOOK_DIR = Path(os.environ.get("MAMBA_NB_NOTEBOOK_DIR", REPO / "notebooks"))
# Screenshots land here (gitignored): what a person looks at when a test fails.
OUTPUT_DIR = REPO / "test-output" / "browser"

# The flags that keep Chromium off the network and out of the machine's profile.
# Playwright adds its own automation flags; these are the ones we insist on.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ENABLE_HINT = (
    "The browser tests drive JupyterLab in headless Chromium with Playwright. To run them: "
    "`sudo apt-get install chromium` (or `bash .ci/browser-deps.sh`), or point "
    "MAMBA_NB_CHROMIUM=/path/to/chromium at a Chromium/Chrome binary; and "
    "`pip install playwright` into this environment (do not run `playwright install`)."
)

# Bounded waits. The machine may be a shared 2-core box, so they are generous,
# but each one ends: a hung server or kernel fails the test instead of the CI job.
SERVER_START_S = 120
PAGE_LOAD_S = 90
KERNEL_READY_S = 90
WIDGET_UPDATE_S = 60


def find_chromium() -> str | None:
    """The Chromium to drive: $MAMBA_NB_CHROMIUM, else Debian's, else one on PATH."""
    env = os.environ.get("MAMBA_NB_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def browser_required() -> bool:
    """CI sets MAMBA_NB_REQUIRE_BROWSER=1: there a missing browser fails, elsewhere it skips."""
    return os.environ.get("MAMBA_NB_REQUIRE_BROWSER", "0") not in ("", "0", "false", "False")


def free_port() -> int:
    # Bind to port 0 and let the OS choose; the tiny race before the server binds it
    # is caught by the start-up check (the server would exit, and we say so).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_tree(dest: Path, notebooks: dict[str, Path]) -> Path:
    """A scratch copy of the repository root in which the notebooks are real files.

    `dest/notebooks/` holds copies of `notebooks` (name → source file); every other
    top-level entry of the repo is a symlink, so a notebook's `root=".."` still finds
    `data/`, `runs/` and the configs (and reuses a dataset or smoke model already built),
    while whatever JupyterLab saves lands in the copy, never in the committed file.
    Returns `dest/notebooks`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        # (dot entries: .git, .venv, .ci are not what a notebook reads)
        if entry.name in ("notebooks", "test-output") or entry.name.startswith("."):
            continue
        link = dest / entry.name
        if not link.exists():
            link.symlink_to(entry)
    # runs/ may not exist yet in a fresh clone: create it in the repo so a smoke model a
    # notebook trains here is found by the next run, as `make test` would leave it.
    if not (dest / "runs").exists():
        (REPO / "runs").mkdir(exist_ok=True)
        (dest / "runs").symlink_to(REPO / "runs")
    nb_dir = dest / "notebooks"
    nb_dir.mkdir(exist_ok=True)
    for name, src in notebooks.items():
        shutil.copyfile(src, nb_dir / name)
    return nb_dir


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc (kernels run in their own session,
    so killing the server's process group alone would leave them behind)."""
    children: dict[int, list[int]] = {}
    if not Path("/proc").is_dir():  # macOS: the server's own shutdown has to do
        return []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class LabServer:
    """A running `python -m jupyterlab`; `stop()` ends it and every kernel it started."""

    proc: subprocess.Popen
    port: int
    token: str
    root: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def api(self, path: str, method: str = "GET", timeout: float = 10.0):
        req = urllib.request.Request(
            f"{self.base_url}/api/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    @classmethod
    def start(cls, root: Path, state_dir: Path, extra_env: dict[str, str] | None = None,
              disabled_extensions: tuple[str, ...] = ()) -> "LabServer":
        """Start JupyterLab on 127.0.0.1 with a random port and token, serving `root`.

        Config, data, runtime and settings dirs all live in `state_dir`, so the learner's
        own Jupyter setup (and any other server) neither leaks in nor gets written to.
        `extra_env` reaches the kernels too (they inherit the server's environment).
        `disabled_extensions` (JupyterLab extension names) are switched off in this server's
        page config only; a test uses it to see a front-end without the widget manager.
        """
        token = secrets.token_hex(24)
        port = free_port()
        dirs = {name: state_dir / name for name in ("config", "data", "runtime", "settings", "workspaces")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        _write_lab_settings(dirs["settings"])
        if disabled_extensions:
            labconfig = dirs["config"] / "labconfig"
            labconfig.mkdir(parents=True, exist_ok=True)
            (labconfig / "page_config.json").write_text(
                json.dumps({"disabledExtensions": {name: True for name in disabled_extensions}})
            )
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            JUPYTER_PLATFORM_DIRS="1",
            # The kernel may not touch the machine's ipython profile either.
            IPYTHONDIR=str(state_dir / "ipython"),
            MPLCONFIGDIR=str(state_dir / "matplotlib"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            # (ServerApp.token is the deprecated spelling of the same setting)
            f"--IdentityProvider.token={token}",
            "--ServerApp.password=",
            "--ServerApp.terminals_enabled=False",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            # Lets a test ask the page for the notebook model (cell outputs, kernel state)
            # instead of scraping prompts; it changes nothing the learner sees.
            "--LabApp.expose_app_in_browser=True",
            # Offline and quiet: no update check, no news fetch.
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None",
            "--LabApp.collaborative=False",
        ]
        if os.geteuid() == 0:
            # CI containers run as root; Jupyter refuses that unless told.
            cmd.append("--allow-root")
        log_path = state_dir / "jupyterlab.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # its own group: stop() kills it whole
        )
        log.close()
        server = cls(proc=proc, port=port, token=token, root=root, log_path=log_path)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with code {self.proc.returncode} before it served; "
                    f"its log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self.api("status", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(
            f"JupyterLab did not answer on port {self.port} within {SERVER_START_S}s; "
            f"its log ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Shut down kernels and server; escalate to SIGKILL if they do not go within seconds."""
        if self.proc.poll() is None:
            below = _descendants(self.proc.pid)
            try:
                # The polite way first: the server shuts its kernels down itself.
                self.api("shutdown", method="POST", timeout=5)
            except Exception:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            for pid in below:
                _kill_group(pid, signal.SIGKILL)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _write_lab_settings(settings_dir: Path) -> None:
    """User settings for the scratch server: no autosave, no news toast, no kernel dialogs."""
    plugins = {
        # A test's cell outputs must not be written anywhere behind its back.
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        # The "receive official Jupyter news?" toast would cover the notebook in screenshots.
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False,
        },
        # Every cell stays in the page (no virtual scrolling): outputs far down a notebook can be
        # counted, and a full-length screenshot shows them all.
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for rel, value in plugins.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


# --- the page side ------------------------------------------------------------

# Run in the page: the state of the notebook in the main area, from JupyterLab's own
# model (exposed by --LabApp.expose_app_in_browser), not from prompt text.
_NOTEBOOK_STATE_JS = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return {ready: false, why: 'no window.jupyterapp yet'};
  let panel = null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path) panel = w;
  }
  if (!panel) return {ready: false, why: 'notebook not open yet'};
  const session = panel.sessionContext;
  const kernel = session.session && session.session.kernel;
  const cells = [];
  const widgets = panel.content.widgets;
  for (let index = 0; index < widgets.length; index++) {
    const m = widgets[index].model;
    if (m.type !== 'code') continue;
    cells.push({
      index,
      count: m.executionCount,
      state: m.executionState || null,
      outputs: m.outputs.toJSON(),
      source: m.sharedModel.getSource().slice(0, 200),
    });
  }
  return {
    ready: panel.content.isVisible && !!kernel,
    kernel: kernel ? kernel.status : null,
    busy: session.kernelDisplayStatus,
    cells,
  };
}
"""


class NotebookError(AssertionError):
    """A cell raised in the browser-run notebook; the message carries its traceback."""


def open_notebook(page, server: LabServer, rel_path: str) -> None:
    """Open `rel_path` (relative to the server root) in JupyterLab and wait for its kernel."""
    # A fresh workspace per page: JupyterLab would otherwise reopen whatever the previous
    # page of this server had open, and two notebooks would share the main area.
    workspace = "t" + secrets.token_hex(4)
    page.goto(server.url(f"lab/workspaces/{workspace}/tree/{rel_path}"), timeout=PAGE_LOAD_S * 1000)
    try:
        page.wait_for_function(
            f"() => {{ const s = ({_NOTEBOOK_STATE_JS})({json.dumps(rel_path)});"
            " return s.ready && s.kernel === 'idle'; }",
            timeout=KERNEL_READY_S * 1000,
            polling=500,
        )
    except Exception as e:  # say where it stuck: no app, no notebook, or no idle kernel
        state = page.evaluate(_NOTEBOOK_STATE_JS, rel_path)
        state.pop("cells", None)
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        raise TimeoutError(
            f"{rel_path}: no idle kernel within {KERNEL_READY_S}s; page state {state}; "
            f"dialogs open: {dialogs or 'none'} (a kernel-selection dialog means the notebook's "
            f"kernelspec is not installed in {sys.prefix})\nserver log:\n{server.log_tail(30)}"
        ) from e


def notebook_state(page, rel_path: str) -> dict:
    return page.evaluate(_NOTEBOOK_STATE_JS, rel_path)


def run_all(page, rel_path: str, timeout_s: float, through: str | None = None, start: bool = True) -> dict:
    """Run the notebook's cells with JupyterLab's own commands and wait until they are done.

    `through=None`: "Run All Cells". `through="text"`: the first code cell whose source
    contains `text` and every cell above it (selected, then "Run Selected Cells"), which is
    what a learner does to reach a widget without running the rest.
    Fails fast, with the traceback, when a cell raises (JupyterLab stops the run there,
    so waiting for the rest would only time out). `start=False`: the run was started already
    (`start_run_all`); only wait for it.
    """
    if through is None:
        if start:
            start_run_all(page)
        last = None
    else:
        last = page.evaluate(_SELECT_CELL_JS, [rel_path, through])
        if last < 0:
            raise AssertionError(f"{rel_path}: no code cell contains {through!r}")
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-cell'); }")
    deadline = time.monotonic() + timeout_s
    state: dict = {}
    while time.monotonic() < deadline:
        state = notebook_state(page, rel_path)
        cells = state.get("cells", [])
        for cell in cells:
            for out in cell["outputs"]:
                if out.get("output_type") == "error":
                    tb = "\n".join(out.get("traceback", []))
                    raise NotebookError(
                        f"{rel_path}: a cell raised in JupyterLab:\n{cell['source']}\n---\n{_strip_ansi(tb)}"
                    )
        wanted = [c for c in cells if last is None or c["index"] <= last]
        if wanted and state.get("kernel") == "idle" and all(
            c["count"] is not None and c["state"] != "running" for c in wanted
        ):
            return state
        time.sleep(0.5)
    pending = [c["source"][:80] for c in state.get("cells", []) if c["count"] is None]
    raise TimeoutError(f"{rel_path}: cells not finished after {timeout_s:.0f}s; not run: {pending}")


def start_run_all(page) -> None:
    """Press "Run All Cells" and return at once (`run_all(..., start=False)` waits for it)."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def full_notebook_screenshot(page, name: str, max_height: int = 30000) -> Path:
    """A PNG of the whole notebook, top to bottom: the page is made as tall as the notebook's
    content (up to `max_height` pixels), the notebook scrolled to its top, then photographed."""
    height = page.evaluate(
        "() => { const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')"
        " || document.querySelector('.jp-NotebookPanel-notebook'); s.scrollTop = 0; return s.scrollHeight; }"
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max_height, int(height) + 200)})
    page.wait_for_timeout(500)
    try:
        return screenshot(page, name)
    finally:
        page.set_viewport_size(size)


# In the page: select every cell from the first through the first code cell whose source
# contains `text` (what shift-click does), so "Run Selected Cells" runs exactly those;
# return that cell's index among all cells (-1: none).
_SELECT_CELL_JS = """
([path, text]) => {
  let panel = null;
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path === path) panel = w;
  }
  const cells = panel.content.widgets;
  for (let i = 0; i < cells.length; i++) {
    const m = cells[i].model;
    if (m.type === 'code' && m.sharedModel.getSource().includes(text)) {
      panel.content.activeCellIndex = 0;
      panel.content.extendContiguousSelectionTo(i);
      return i;
    }
  }
  return -1;
}
"""


def all_output_text(state: dict) -> str:
    """Every text/plain, stream and HTML output of the run, joined (for 'IntSlider(' checks)."""
    parts = []
    for cell in state.get("cells", []):
        for out in cell["outputs"]:
            if out.get("output_type") == "stream":
                parts.append("".join(out.get("text", "")))
            data = out.get("data") or {}
            for mime in ("text/plain", "text/html"):
                if mime in data:
                    v = data[mime]
                    parts.append("".join(v) if isinstance(v, list) else str(v))
    return "\n".join(parts)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def screenshot(target, name: str, tries: int = 5) -> Path:
    """Save a PNG of a page or element under test-output/browser/ and return its path.

    An element that a live output replaces while it is photographed (notebook 04's loss plot is
    redrawn at each validation) detaches from the page: the locator is resolved again and the
    picture retaken, up to `tries` times."""
    from playwright.sync_api import Error

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"{name}.png"
    for attempt in range(tries):
        try:
            target.screenshot(path=str(path))
            break
        except Error as err:
            if "not attached" not in str(err) or attempt == tries - 1:
                raise
    print(f"screenshot: {path}")
    return path


def collapse_side_panels(page) -> None:
    """Hide the file browser so screenshots show the notebook (a view change, nothing more)."""
    page.evaluate("() => { const s = window.jupyterapp.shell; s.collapseLeft(); s.collapseRight(); }")


def widget_cell(page, selector: str):
    """The notebook cell (input and outputs) whose output holds `selector`, for screenshots."""
    return page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator(selector)).last


def slider(page, description: str):
    """The rendered ipywidgets slider whose label reads `description` (e.g. 'fim_rate')."""
    sliders = page.locator(".jupyter-widgets.widget-slider").filter(
        has=page.locator(".widget-label", has_text=description)
    )
    sliders.first.wait_for(state="visible", timeout=WIDGET_UPDATE_S * 1000)
    count = sliders.count()
    if count != 1:
        raise AssertionError(f"expected one slider labelled {description!r} in the page, found {count}")
    return sliders.first


def move_slider(page, slider_locator, to: str) -> float:
    """Move a rendered slider to its 'min' or 'max' the way a person does: focus the
    handle and press Home or End. The value travels through the widget front-end to the
    kernel (continuous_update=False sends it on the keyboard's change event).
    Returns the value the slider's handle then reports."""
    key = {"min": "Home", "max": "End"}[to]
    handle = slider_locator.locator(".noUi-handle")
    handle.focus()
    page.keyboard.press(key)
    attr = "aria-valuemin" if to == "min" else "aria-valuemax"
    want = float(handle.get_attribute(attr))
    page.wait_for_function(
        "([h, want]) => Math.abs(parseFloat(h.getAttribute('aria-valuenow')) - want) < 1e-9",
        arg=[handle.element_handle(), want],
        timeout=WIDGET_UPDATE_S * 1000,
    )
    return float(handle.get_attribute("aria-valuenow"))


def wait_for_output(page, locator, predicate_js: str, what: str, timeout_s: float = WIDGET_UPDATE_S):
    """Wait until `predicate_js` (a JS function of the DOM element) is true for `locator`.

    On timeout, the AssertionError says `what` was expected and shows the text the
    element last had, which is what a person reading the CI log needs.
    """
    try:
        page.wait_for_function(
            f"(el) => !!({predicate_js})(el)",
            arg=locator.element_handle(),
            timeout=timeout_s * 1000,
            polling=250,
        )
    except Exception as e:  # playwright's TimeoutError
        raise AssertionError(
            f"{what}: not seen within {timeout_s:.0f}s; the output reads:\n{locator.inner_text()[:2000]}"
        ) from e


def wait_for_text(page, locator, predicate_js: str, timeout_s: float = WIDGET_UPDATE_S) -> str:
    """Wait until `predicate_js` (a JS function of the element's innerText) holds; return the text."""
    wait_for_output(page, locator, f"(el) => ({predicate_js})(el.innerText)", predicate_js, timeout_s)
    return locator.inner_text()


# In the page: run code in the notebook's own kernel (as a cell would, but without adding
# one) and return its stdout, or the exception as text. Used only to *read* kernel state.
_KERNEL_EXEC_JS = """
async ([path, code, timeoutMs]) => {
  let panel = null;
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path === path) panel = w;
  }
  const kernel = panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let out = '', error = null;
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream' && msg.content.name === 'stdout') out += msg.content.text;
    if (t === 'error') error = msg.content.ename + ': ' + msg.content.evalue;
  };
  const timeout = new Promise((_, reject) => setTimeout(
    () => reject(new Error('kernel did not answer within ' + timeoutMs + ' ms')), timeoutMs));
  await Promise.race([future.done, timeout]);
  return {out, error};
}
"""


def kernel_exec(page, rel_path: str, code: str, timeout_s: float = WIDGET_UPDATE_S) -> str:
    """Run `code` in the kernel of the open notebook `rel_path`; return its stdout.

    For reading what the kernel holds (e.g. a widget's synced value), never for driving a
    widget: that must go through the page.
    """
    res = page.evaluate(_KERNEL_EXEC_JS, [rel_path, code, int(timeout_s * 1000)])
    if res["error"]:
        raise AssertionError(f"kernel check failed in {rel_path}: {res['error']}\n{code}")
    return res["out"]


def assert_widgets_rendered(page, slider_locator=None) -> None:
    """JupyterLab's widget front-end drew the notebook's widgets: a slider is real DOM
    (a noUiSlider handle), and no output shows the text repr (`IntSlider(...)`,
    `interactive(children=...`) that a front-end without the widget manager prints instead."""
    import re

    shown = page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts()
    reprs = [t[:200] for t in shown if re.search(r"\b(Float|Int)Slider\(|\binteractive\(children=", t)]
    assert not reprs, (
        "widgets were rendered as text: JupyterLab's widget front-end (jupyterlab_widgets) is missing "
        f"or failed to load: {reprs}"
    )
    target = slider_locator if slider_locator is not None else page.locator(".jupyter-widgets.widget-slider")
    assert target.locator(".noUi-handle").count() >= 1, "no rendered slider (.widget-slider .noUi-handle) in the page"
