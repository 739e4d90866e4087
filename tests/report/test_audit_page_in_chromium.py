"""The label audit's page in headless Chromium, offline, as the mining report is tested (test_page_in_chromium.py:
the same flags and error probe): no console error, nothing fetched but data: URIs, every thumbnail decoded and
laid out, the cards of each type in rank order; a screenshot is left in the test's tmp dir."""
import html
import json
import re

import cv2
import pytest

from executor.pipeline.audit_report import write_audit_page

from .test_audit_page import ABOUT, make_audit
from .test_page_in_chromium import CHROMIUM, HEAD_PROBE, _chromium, _console_lines

pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")

TAIL_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var bad = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var cards = Array.from(document.querySelectorAll("img[data-section]"));
  var remote = performance.getEntriesByType("resource").map(function (r) { return r.name; })
    .filter(function (n) { return !/^data:/.test(n); });
  var b = document.body.dataset;
  b.imagesTotal = images.length;
  b.imagesBad = JSON.stringify(bad.map(function (i) { return i.dataset.path || i.alt; }));
  b.cards = JSON.stringify(cards.map(function (i) {
    return [i.closest("section").id, i.dataset.section, Number(i.dataset.rank), i.getBoundingClientRect().width];
  }));
  b.resources = JSON.stringify(remote);
  b.errors = JSON.stringify(window.__errors);
  b.probeDone = "1";
});
</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("audit-browser")
    samples, audit = make_audit(tmp_path, missing_images=4)
    html_path = tmp_path / "audit.html"
    assert write_audit_page(audit, samples, ABOUT, str(html_path), str(tmp_path / "audit.json"))
    return audit, tmp_path, html_path


def test_the_page_loads_offline_without_errors_with_every_card_in_order(page):
    audit, tmp_path, html_path = page
    text = html_path.read_text(encoding="utf-8")
    assert "<script" not in text
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + HEAD_PROBE, 1).replace("</body>", TAIL_PROBE + "</body>", 1),
                      encoding="utf-8")
    done = _chromium(tmp_path, "--virtual-time-budget=15000", "--window-size=1400,3000", "--dump-dom",
                     probed.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, done.stderr[-2000:]
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))}
    assert attrs.get("probe-done") == "1", body.group(0)[:300]
    assert json.loads(attrs["errors"]) == [] and _console_lines(done.stderr) == []
    assert json.loads(attrs["resources"]) == []
    cards = json.loads(attrs["cards"])
    assert int(attrs["images-total"]) == len(cards) == len(audit.findings) == 7
    assert json.loads(attrs["images-bad"]) == []  # the unreadable image is a placeholder, decoded too
    assert all(section == kind for section, kind, _, _ in cards)
    ranks = [(kind, rank) for _, kind, rank, _ in cards]
    expected = [(found.finding.kind, rank) for rank, found in enumerate(audit.findings, 1)]
    order = ["missing", "wrong_class", "poor_box", "spurious", "duplicate"]
    assert ranks == sorted(expected, key=lambda pair: (order.index(pair[0]), pair[1]))
    assert all(width > 100 for _, _, _, width in cards)


def test_screenshot(page):
    _, tmp_path, html_path = page
    shot = tmp_path / "audit.png"
    done = _chromium(tmp_path, "--virtual-time-budget=15000", "--hide-scrollbars", f"--screenshot={shot}",
                     "--window-size=1400,2400", html_path.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2400, 1400)
    assert float(image.std()) > 20  # drawn, not blank
    print(f"screenshot: {shot}")
