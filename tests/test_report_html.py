"""report.html renders: every figure is an embedded PNG that decodes, every table sits in a
scroll container, and in a real headless browser (Chromium/Chrome, where one is installed) the
page takes a screenshot, loads every image and never overflows the window sideways, even with
a long unbreakable table path and attribute name.

The browser checks skip with a reason where no browser exists (CI may have none); the parsed
checks always run. ``report_html_problems`` is shared with the study report's test."""

from __future__ import annotations

import base64
import html as html_mod
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from studies.battery import run_battery
from studies.design import build_analysis_frame
from studies.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LONG_NAME = "a_very_long_attribute_name_without_any_space_" * 3
LONG_PATH = "/data/" + "x" * 260 + "/results.csv"


class _Scan(HTMLParser):
    """Every <img> src and, for every <table>, whether an enclosing <div class="scroll"> (or
    any element with an overflow-x style) contains it."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[bool] = []
        self.stack: list[bool] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
            return
        if tag in ("br", "meta", "link", "hr", "input"):
            return
        scroll = "scroll" in (a.get("class") or "").split() or "overflow-x" in (
            a.get("style") or ""
        )
        if tag == "table":
            self.tables.append(any(self.stack))
        self.stack.append(scroll)

    def handle_endtag(self, tag):
        if tag not in ("img", "br", "meta", "link", "hr", "input") and self.stack:
            self.stack.pop()


def report_html_problems(text: str) -> list[str]:
    """What is wrong with a report page, parsed (no browser): broken or external images,
    tables outside a scroll container, no overflow rule in the CSS."""
    scan = _Scan()
    scan.feed(text)
    problems = []
    if not scan.images:
        problems.append("no image")
    for i, src in enumerate(scan.images):
        head = "data:image/png;base64,"
        if not src.startswith(head):
            problems.append(f"image {i} is not an embedded PNG: {src[:40]!r}")
            continue
        try:
            png = base64.b64decode(src[len(head) :], validate=True)
            import matplotlib.image as mpimg

            if mpimg.imread(io.BytesIO(png), format="png").size == 0:
                problems.append(f"image {i} is empty")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
            problems.append(f"image {i} does not decode: {exc}")
    for i, contained in enumerate(scan.tables):
        if not contained:
            problems.append(f"table {i} is not in a scroll container")
    if "overflow-x:auto" not in text.replace(" ", ""):
        problems.append("no overflow-x rule in the CSS")
    return problems


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


_PROBE = """<script>
window.addEventListener('load', function () {
  var de = document.documentElement;
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return i.complete && i.naturalWidth > 0; });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var p = t.parentElement, contained = false;
    while (p && p !== document.body) {
      var s = getComputedStyle(p).overflowX;
      if (s === 'auto' || s === 'scroll') { contained = true; break; }
      p = p.parentElement;
    }
    return {right: t.getBoundingClientRect().right, contained: contained}; });
  document.title = 'PROBE' + JSON.stringify({scrollWidth: de.scrollWidth,
    innerWidth: window.innerWidth, imgs: imgs, tables: tables});
});
</script></body>"""


def browser_layout(browser: str, page: Path, tmp: Path, width: int = 1000) -> dict:
    """Load ``page`` in headless Chromium with a probe script (a copy; the report itself has no
    scripts) and read back the layout: page scroll width, images loaded, tables' right edges."""
    probe = tmp / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _PROBE, 1), encoding="utf-8"
    )
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},1200",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = out.stdout
    start = dom.find("<title>PROBE")
    assert start >= 0, f"the browser returned no probe result: {out.stderr[-500:]}"
    raw = dom[start + len("<title>PROBE") : dom.index("</title>", start)]
    return json.loads(html_mod.unescape(raw))


def screenshot(browser: str, page: Path, png: Path, width: int = 1000) -> np.ndarray:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},2000",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert png.exists(), "the browser wrote no screenshot"
    import matplotlib.image as mpimg

    return mpimg.imread(png)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, ids = 400, 80
    pid = rng.integers(0, ids, n)
    colour = np.array(["black", "white", "red"])[rng.integers(0, 3, ids)][pid]
    wide = np.array(["yes", "no"])[rng.integers(0, 2, ids)][pid]
    ap = np.clip(0.5 + 0.2 * (colour == "red") + rng.normal(0, 0.15, n), 0, 1)
    import pandas as pd

    df = pd.DataFrame({"pid": pid, "ap": ap, "colour": colour, LONG_NAME: wide})
    frame = build_analysis_frame(df, outcomes=["ap"], cluster="pid", source=LONG_PATH)
    result = run_battery(
        frame, seed=0, progress=False, models=("rf",), n_repeats=2, cv=2, n_bootstrap=0
    )
    out = tmp_path_factory.mktemp("html")
    write_report(result, out, input_info={"path": LONG_PATH, "format": "csv"})
    return out


def test_parsed_html_has_embedded_images_and_contained_tables(report_dir):
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert report_html_problems(text) == []
    assert "<script" not in text.lower()


def test_parsed_check_finds_broken_pages():
    bad = (
        '<html><body><img src="figures/x.png"><img src="data:image/png;base64,AAAA">'
        "<table></table></body></html>"
    )
    problems = report_html_problems(bad)
    assert any("not an embedded PNG" in p for p in problems)
    assert any("does not decode" in p or "empty" in p for p in problems)
    assert any("scroll container" in p for p in problems)


def test_report_renders_in_a_headless_browser(report_dir, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium/Chrome installed here; the parsed checks still ran")
    page = report_dir / "report.html"
    img = screenshot(browser, page, tmp_path / "shot.png")
    assert img.shape[1] == 1000 and np.ptp(img[..., :3]) > 0.5  # something was drawn
    layout = browser_layout(browser, page, tmp_path)
    assert layout["imgs"] and all(layout["imgs"]), "an image did not load"
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    for t in layout["tables"]:
        assert t["contained"] or t["right"] <= layout["innerWidth"], t


def test_long_names_are_shortened_in_figures_and_plotting_stays_quiet():
    import warnings

    import pandas as pd

    from studies.plots import consensus_heatmap, png_bytes, short_label

    assert short_label("short") == "short"
    s = short_label(LONG_NAME)
    assert len(s) == 32 and "…" in s and s.startswith("a_very") and s.endswith(LONG_NAME[-10:])
    ranks = pd.DataFrame([[1.0, 2.0]], index=["glm"], columns=["colour", LONG_NAME])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = consensus_heatmap(ranks)
        png_bytes(fig)
    assert not [w for w in caught if issubclass(w.category, UserWarning)]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["colour", s]
