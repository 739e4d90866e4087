"""The mining report in a real browser: headless Chromium (Debian package `chromium`) opens the page offline and
must find no console error, every image decoded (naturalWidth > 0) and the top N in the given order; a
screenshot of the page is left in the test's tmp dir (tmp_path/mining-report.png) for a human to look at.

No Python browser driver: a copy of the page gets a small probe (a script at the start of <head> that records
errors, one at the end of <body> that checks the images on `load` and writes its findings into <body data-*>),
and Chromium's --dump-dom prints the DOM after it ran. The report itself carries no script."""
import html
import json
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from executor.report.page import write_report

from .test_page import COCO, make_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None,
                       reason="headless Chromium is not installed (Debian: apt-get install -y chromium)"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(COCO, "images")), reason=f"{COCO} is missing"),
]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # offline, like a USB stick on a machine without network: any name lookup or proxy use fails
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--enable-logging=stderr", "--v=0"]

HEAD_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window && t.tagName
                       ? "failed to load " + t.tagName + " " + String(t.src || t.href).slice(0, 80)
                       : "error: " + e.message);
}, true);
window.addEventListener("unhandledrejection", function (e) { window.__errors.push("rejection: " + e.reason); });
document.addEventListener("securitypolicyviolation", function (e) { window.__errors.push("csp: " + e.blockedURI); });
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__errors.push("console." + level + ": " + Array.from(arguments).join(" "));
    original.apply(console, arguments);
  };
});
</script>"""

TAIL_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var bad = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var top = Array.from(document.querySelectorAll('#top img[data-section="top"]'));
  var remote = performance.getEntriesByType("resource").map(function (r) { return r.name; })
    .filter(function (n) { return !/^data:/.test(n); });
  var b = document.body.dataset;
  b.imagesTotal = images.length;
  b.imagesOk = images.length - bad.length;
  b.imagesBad = JSON.stringify(bad.map(function (i) { return i.dataset.path || i.alt; }));
  b.topOrder = JSON.stringify(top.map(function (i) { return [Number(i.dataset.rank), i.dataset.path]; }));
  b.topWidths = JSON.stringify(top.map(function (i) { return i.getBoundingClientRect().width; }));
  b.resources = JSON.stringify(remote);
  b.errors = JSON.stringify(window.__errors);
  b.probeDone = "1";
});
</script>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(tmp_path)})


def _console_lines(stderr: str) -> list[str]:
    """Chromium's log lines for messages of the page's console (`...:CONSOLE(...)] "message", source: ...`)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("browser")
    data = make_data(tmp_path, n_top=24, n_middle=5, n_bottom=5)
    html_path = tmp_path / "mining-report.html"
    write_report(str(html_path), str(tmp_path / "mining-report.json"), data)
    return data, tmp_path, html_path


def test_page_loads_offline_without_errors_and_in_order(page):
    data, tmp_path, html_path = page
    text = html_path.read_text(encoding="utf-8")
    assert "<script" not in text  # the report itself needs no script
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + HEAD_PROBE, 1).replace("</body>", TAIL_PROBE + "</body>", 1),
                      encoding="utf-8")
    done = _chromium(tmp_path, "--virtual-time-budget=15000", "--window-size=1400,4000", "--dump-dom",
                     probed.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, f"no <body> in Chromium's DOM dump: {done.stdout[:500]!r} / {done.stderr[-2000:]}"
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))}
    assert attrs.get("probe-done") == "1", f"the probe did not run: {body.group(0)[:300]}"
    assert json.loads(attrs["errors"]) == []
    assert _console_lines(done.stderr) == []
    assert json.loads(attrs["resources"]) == []  # nothing fetched but data: URIs
    shown = len(data.top) + len(data.middle) + len(data.bottom) + sum(1 + len(c) for _, c in data.duplicate_groups)
    assert int(attrs["images-total"]) == shown, attrs
    assert int(attrs["images-ok"]) == shown, json.loads(attrs["images-bad"])
    assert [tuple(pair) for pair in json.loads(attrs["top-order"])] == [(i.rank, i.path) for i in data.top]
    assert all(width > 100 for width in json.loads(attrs["top-widths"]))  # laid out, not collapsed


def test_screenshot(page):
    data, tmp_path, html_path = page
    shot = tmp_path / "mining-report.png"
    done = _chromium(tmp_path, "--virtual-time-budget=15000", "--hide-scrollbars", f"--screenshot={shot}",
                     "--window-size=1400,4000", html_path.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]
    assert _console_lines(done.stderr) == []
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (4000, 1400)
    assert float(image[:1200].std()) > 20  # header, run table and plots drawn, not a blank page
    thumbs = image[1200:4000]
    assert float(np.mean(thumbs.std(axis=2))) > 5  # colourful photo thumbnails, not grey boxes
    print(f"screenshot: {shot}")


def test_probe_catches_what_it_looks_for(page):
    """Negative control: a broken image, a web resource and a script error in a copy of the page are all reported."""
    data, tmp_path, html_path = page
    sabotage = ('<img alt="broken" src="data:image/jpeg;base64,AAAA">'
                '<img alt="remote" src="http://example.invalid/x.png">'
                '<script>console.error("sabotage"); undefined_function();</script>')
    text = html_path.read_text(encoding="utf-8")
    bad = tmp_path / "sabotaged.html"
    bad.write_text(text.replace("<head>", "<head>" + HEAD_PROBE, 1)
                   .replace("</body>", sabotage + TAIL_PROBE + "</body>", 1), encoding="utf-8")
    done = _chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", bad.as_uri())
    body = re.search(r"<body([^>]*)>", done.stdout)
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))}
    errors = json.loads(attrs["errors"])
    assert any("sabotage" in e for e in errors) and any("undefined_function" in e for e in errors), errors
    assert any("failed to load IMG" in e for e in errors), errors
    assert sorted(json.loads(attrs["images-bad"])) == ["broken", "remote"]
    assert any("sabotage" in line for line in _console_lines(done.stderr)), done.stderr[-2000:]
