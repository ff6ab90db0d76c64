"""The Kedro-Viz site of `kedro viz build` (`make viz`) in a real browser: headless Chromium (Debian's
package, installed by `.ci/run`; Playwright drives it through ``executable_path``, as browser downloads are
not reachable) opens the built site; the flowchart of ``full`` draws nodes of every stage, and the layer
bands are shown for ``full`` and ``compare`` (Kedro-Viz turns them off when the layers form a cycle).

Skipped, with the reason, only where no Chromium or no Playwright is installed.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from maf_pipeline.pipeline_registry import FULL_CHAIN
from tests.conftest import copy_project, kedro, project_pipelines

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")


def find_chromium() -> str | None:
    """A Chromium executable on PATH or where Debian puts it."""
    for name in BROWSERS:
        found = shutil.which(name) or (
            f"/usr/lib/chromium/{name}" if Path(f"/usr/lib/chromium/{name}").exists() else None
        )
        if found:
            return found
    return None


def label(name: str) -> str:
    """Node label as compared here: Kedro-Viz shows pretty names (``Ingest Reviews``) or raw ones."""
    return name.replace("_", " ").replace("-", " ").strip().lower()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """`kedro viz build` of a project copy, served on a free loopback port (the app fetches its api/ JSON)."""
    project = copy_project(tmp_path_factory.mktemp("viz"))
    kedro(project, "viz", "build", timeout=600)
    build = project / "build"
    assert (build / "index.html").exists() and (build / "api" / "main").exists()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(build))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def drawn(page, url: str) -> tuple[set[str], set[str], list[str]]:
    """Labels of the drawn nodes and of the layer bands of the flowchart at ``url``, and page errors."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector(".pipeline-node", state="attached", timeout=90_000)
    page.wait_for_function("document.querySelectorAll('.pipeline-node').length > 20", timeout=60_000)
    page.wait_for_selector(".pipeline-layer-name", state="attached", timeout=30_000)
    nodes = {label(t) for t in page.locator(".pipeline-node").all_text_contents()}
    layers = {label(t) for t in page.locator(".pipeline-layer-name").all_text_contents()}
    return nodes, layers, errors


@pytest.mark.slow
def test_the_built_site_draws_every_stage_and_the_layers(site: str) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    registry = project_pipelines()
    expected = {
        stage: {label(n.namespace.split(".")[0] if n.namespace else n.name) for n in registry[stage].nodes}
        for stage in FULL_CHAIN
        if stage in registry
    }
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            nodes, layers, errors = drawn(page, site)  # the default pipeline: full
            compare_nodes, compare_layers, compare_errors = drawn(
                page, f"{site}?pid=compare&expandAllPipelines=true"
            )
        finally:
            browser.close()
    missing = {stage: sorted(names) for stage, names in expected.items() if not names & nodes}
    assert not missing, f"stages with no node drawn: {missing}; drawn: {sorted(nodes)}"
    assert {"raw", "intermediate", "primary", "feature", "model input", "model output", "reporting"} <= layers
    assert {"run maf", "run grid search", "build table2"} <= compare_nodes, sorted(compare_nodes)
    assert {"raw", "feature", "models", "model output", "reporting"} <= compare_layers, compare_layers
    assert not errors and not compare_errors, errors + compare_errors
