"""`mlflow ui` and the Snakemake report in a real headless browser (Debian's Chromium), over the database
and results of a short mini `ablations` run of two variants. Screenshots are kept as test artifacts in
results/test-artifacts/ (or $DECLIP_TEST_ARTIFACTS); their paths are printed (`pytest -s` shows them)."""

import html
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
from html.parser import HTMLParser
from pathlib import Path

import pytest

from declip.config import ROOT
from declip.tracking_ui import HEADLINES
from test_e2e_spine import SMALL

pytestmark = pytest.mark.slow

# Screenshots outlive pytest's temporary directories (it keeps the last three sessions only).
ARTIFACTS = Path(os.environ.get("DECLIP_TEST_ARTIFACTS", ROOT / "results" / "test-artifacts"))
VARIANTS = ("declip", "no_sdgsc")  # differ in one setting: sd_gsc
TINY = [SMALL, "distill={max_steps: 4, batch_size: 8, warmup_steps: 1, checkpoint_every: 4, log_every: 1}",
        f"variants=[{', '.join(VARIANTS)}]", "tables={figure_variants: [declip]}"]


def _chromium() -> str:
    """Debian's Chromium, installed here when missing (CI runs as root with the Debian mirror reachable)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Chromium: `apt-get install chromium` as root (Debian/Ubuntu)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    return shutil.which("chromium")


def _browse(exe: str, url: str, workdir: Path, name: str, budget_ms: int = 30000,
            profile: str | None = None, height: int = 800) -> tuple[str, str]:
    """Render `url` headless: the DOM after `budget_ms` of virtual time (the pages are React apps), and a
    screenshot at `ARTIFACTS/<name>.png`. Returns (dom, console lines). Each render gets a fresh browser
    profile, unless `profile` names one shared across calls (one user's browser, its local storage kept)."""
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--enable-logging=stderr",
            f"--window-size=2400,{height}", f"--virtual-time-budget={budget_ms}"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, out in enumerate(("--dump-dom", f"--screenshot={ARTIFACTS / name}.png")):
        r = subprocess.run([*args, f"--user-data-dir={workdir / (profile or f'profile-{name}-{i}')}", out, url],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(r)
    print(f"\nscreenshot of {url}: {ARTIFACTS / name}.png")
    console = [line for r in runs for line in r.stderr.splitlines() if "CONSOLE" in line]
    return runs[0].stdout, "\n".join(console)


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Grid(HTMLParser):
    """AG Grid's rendered cells: row index -> {column id: text} (pinned and scrolled parts share the index)."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.headers: list[str] = []
        self._row = self._cell = None
        self._depth = 0  # open elements inside the current cell

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._cell is not None:
            self._depth += tag not in VOID
        elif a.get("role") == "row" and "row-index" in a:
            self._row = a["row-index"]
        elif a.get("role") == "gridcell" and self._row is not None:
            self._cell, self._depth = a.get("col-id"), 1
            self.rows.setdefault(self._row, {})[self._cell] = ""
        elif a.get("role") == "columnheader" and a.get("col-id"):
            self.headers.append(a["col-id"])

    def handle_endtag(self, tag):
        if self._cell is not None and tag not in VOID:
            self._depth -= 1
            if self._depth == 0:
                self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self.rows[self._row][self._cell] += data


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A mini `ablations` run of two variants in a temporary directory, its MLflow database and report."""
    wd = tmp_path_factory.mktemp("ablations")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{wd}/mlflow.db")
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(wd), "--cores", "2", "--config", *TINY, "--", "ablations"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "viewStateShareKey=declip-regionclf" in r.stdout + r.stderr  # the onsuccess hint
    report = wd / "results/report.html"
    for _ in range(600):  # written in the background once snakemake has released its locks
        log = wd / "logs/report.log"
        if report.exists() and log.exists() and "Report created" in log.read_text():
            break
        time.sleep(1)
    assert report.exists(), (wd / "logs/report.log").read_text() if (wd / "logs/report.log").exists() else "no report log"
    return wd


@pytest.fixture(scope="module")
def ui(mini):
    """`mlflow ui` on 127.0.0.1 over the run's database; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(mini / "mlflow-ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{mini}/mlflow.db",
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=mini,
                            start_new_session=True)  # its uvicorn workers and job runner: one process group
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (mini / "mlflow-ui.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"mlflow ui did not answer on {base} within 300 s: {(mini / 'mlflow-ui.log').read_text()[-3000:]}")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `mlflow ui` alone would leave its server processes behind
        proc.wait(timeout=60)
        log.close()


def _experiment_id(wd: Path) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{wd}/mlflow.db").get_experiment_by_name("declip-repro").experiment_id


def _run_names(grid: _Grid) -> dict[str, dict[str, str]]:
    # The name cell also holds the run colour picker's value (`#8396a5regionclf · ...`).
    return {re.sub(r"^#[0-9a-fA-F]{6}", "", cells.get("attributes.`Run Name`", "").strip()): cells
            for cells in grid.rows.values()}


def _link(dom: str, href_pattern: str, title: str | None = None) -> str:
    """The target of the page's first link whose href matches `href_pattern` (and whose title is `title`)."""
    for tag in re.findall(r"<a\b[^>]*>", dom):
        href = re.search(rf'\shref="({href_pattern})"', tag)
        if href and (title is None or f'title="{title}"' in tag):
            return html.unescape(href.group(1))
    raise AssertionError(f"no link matching {href_pattern!r} (title {title!r}) on the page")


@pytest.fixture(scope="module")
def experiment_page(mini, ui):
    """A new user's first visit: a fresh browser at the bare `mlflow ui` address (no link, no query), then
    the experiment's link on its home page. Yields (DOM of the experiment page, its link)."""
    exe = _chromium()
    home, console = _browse(exe, f"{ui}/", mini, "mlflow-home", profile="profile-user")
    assert "Uncaught" not in console, console
    href = _link(home, r"#/experiments/\d+", title="declip-repro")  # the experiments list on the home page
    assert href == f"#/experiments/{_experiment_id(mini)}", href
    # Tall enough for every run of the mini run (the grid renders the rows in view).
    dom, console = _browse(exe, f"{ui}/{href}", mini, "mlflow-experiment", profile="profile-user", height=2000)
    assert "Uncaught" not in console, console
    return dom, href


def test_bare_ui_opens_on_the_runs_table_with_every_variant_run(mini, experiment_page):
    dom, _ = experiment_page
    # The experiment kind (MLflow <3.10 reads our tag): the model-training runs table, not the GenAI overview.
    assert "Machine learning" in dom
    grid = _Grid()
    grid.feed(dom)
    assert "attributes.`Run Name`" in grid.headers, grid.headers
    names = _run_names(grid)
    # Not nested: every job is a row of its own on first load, nothing to expand.
    for variant in VARIANTS:
        for name in (f"distill · {variant}", f"regionclf · {variant} · mini2d_val", f"tfseg · {variant} · mini2d_val"):
            assert name in names, f"run {name!r} not listed without expanding; rows: {sorted(names)}"
    assert "abl_sdgsc" in names  # a table's run


@pytest.mark.parametrize("rule", ["evaluate_regionclf", "evaluate_tfseg"])
def test_one_click_shows_variants_settings_and_headline_metrics(mini, ui, experiment_page, rule):
    """The experiment's description (above the runs table) links each family's comparison: following it
    in the same browser shows the variants with their differing setting and headline metric columns."""
    family = rule.removeprefix("evaluate_")
    page, href = experiment_page
    view = _link(page, re.escape(f"{href}/runs?") + r"[^\"]*viewStateShareKey=declip-" + family)
    dom, console = _browse(_chromium(), f"{ui}/{view}", mini, f"mlflow-{family}", profile="profile-user")
    assert "Uncaught" not in console, console
    grid = _Grid()
    grid.feed(dom)
    heads = HEADLINES[rule]
    for col in [f"metrics.`{m}`" for m in heads] + ["params.`sd_gsc`"]:  # sd_gsc: what the two variants change
        assert col in grid.headers, f"column {col} not shown; columns: {grid.headers}"
    rows = _run_names(grid)
    for variant in VARIANTS:
        name = f"{family} · {variant} · mini2d_val"
        assert name in rows, f"run {name!r} not listed; rows: {list(rows)}"
        metrics = json.loads((mini / f"results/eval/{family}/mini2d_val/{variant}/metrics.json").read_text())
        for metric, path in heads.items():
            expected = metrics
            for part in path.split("."):
                expected = expected[part]
            # the number in results/eval (and so in results/tables/)
            assert float(rows[name][f"metrics.`{metric}`"]) == pytest.approx(expected, abs=1e-6), (metric, variant)
        assert rows[name]["params.`sd_gsc`"] == ("false" if variant == "no_sdgsc" else "true")


# Opens the report in a frame of a same-origin page and drives it as a reader would: the Tables
# category, the Figures category, then the first figure. The report's state lives in its `app` (a
# script-level `let`, reached through the frame's eval); the outcome is written into this page's DOM.
REPORT_DRIVER = """<!doctype html><meta charset="utf-8"><title>report</title>
<iframe id="r" src="/results/report.html" style="width:2350px;height:780px;border:0"></iframe>
<pre id="out"></pre>
<script>
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const frame = document.getElementById("r");
frame.onload = async () => {
  const w = frame.contentWindow, out = {errors: []};
  w.addEventListener("error", (e) => out.errors.push(String(e.message)));
  let app;
  for (let i = 0; i < 100 && !app; i++) { await sleep(200); app = w.eval("typeof app === 'undefined' ? undefined : app"); }
  for (const category of ["Tables", "Figures"]) {
    app.setView({navbarMode: "menu"});  // back to the menu, as the breadcrumb does
    await sleep(500);
    app.showCategory(category);
    await sleep(1500);
    out[category] = w.document.body.innerText;
  }
  const figure = Object.entries(w.results).find(([path, r]) => r.mime_type === "image/png");
  out.figure = figure ? figure[0] : null;
  if (figure) {
    app.setView({content: "img", contentPath: figure[1].data_uri, resultPath: figure[0]});
    await sleep(1500);
    const img = w.document.querySelector("img[src^='data:image/png']");
    out.figure_width = img ? img.naturalWidth : 0;
  }
  document.getElementById("out").textContent = "REPORT" + JSON.stringify(out) + "END";
};
</script>
"""


@pytest.fixture(scope="module")
def served(mini):
    """The run's directory over HTTP on 127.0.0.1 (the report and its driver page share an origin)."""
    import functools
    import http.server
    import threading

    (mini / "report-driver.html").write_text(REPORT_DRIVER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mini))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_report_opens_with_tables_and_figures(mini, served):
    exe = _chromium()
    dom, console = _browse(exe, f"{served}/report-driver.html", mini, "report")
    assert "Uncaught" not in console, console
    found = re.search(r'<pre id="out">REPORT(.*?)END</pre>', dom, re.S)
    assert found, "the report did not render (driver page incomplete)"
    out = json.loads(html.unescape(found.group(1)))
    assert out["errors"] == []
    tables = sorted(p.stem for p in (mini / "results/tables").glob("*.csv"))
    figures = sorted(p.stem for p in (mini / "results/figures/declip").glob("*.png"))
    assert "abl_sdgsc" in tables and figures
    for label in tables:  # the Tables category lists each table by its label
        assert label in out["Tables"], out["Tables"][:2000]
    for label in figures:  # the Figures category lists each figure of each drawn variant
        assert label in out["Figures"], out["Figures"][:2000]
    assert out["figure"] and out["figure"].startswith("results/figures/declip/"), out["figure"]
    assert out["figure_width"] > 0  # the embedded PNG decodes and is shown
