"""The generated site in a real browser (headless Chromium, offline, from disk): every page loads with
no console error or failed load, every plot renders, every link resolves, tables sort on click and
filter as one types.
Built from the committed results that are current (no training). Skipped only without Chromium
(`.ci/run` installs Debian's `chromium`)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from browser import Browser, find_chromium
from conftest import REPO
from vqbench.leaderboard import collect, write_leaderboard

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; "
                                                         "or set VQBENCH_CHROMIUM)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """leaderboard/ of committed results that are current, in a copy: results/ beside it."""
    board = collect(REPO / "results", REPO)
    if not board.files:
        pytest.skip("no committed result is current (a task or submission changed since they were run)")
    project = tmp_path_factory.mktemp("site")
    # one family's results (the smallest: a fast test that still has every kind of page and a plot)
    family = min(board.families, key=lambda f: sum(board.tasks[t].family == f for (t, _, _) in board.files))
    for rel, _ in (v for (t, _, _), v in board.files.items() if board.tasks[t].family == family):
        (project / "results" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "results" / rel, project / "results" / rel)
    shutil.copy2(REPO / "results" / "confirmed.json", project / "results" / "confirmed.json")
    write_leaderboard(project / "results", project / "leaderboard", REPO)
    return project / "leaderboard" / "site"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("profile"))
    b.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=1000, deviceScaleFactor=1,
           mobile=False)
    yield b
    b.close()


def column(browser, table: str, i: int) -> list:
    return browser.js(f"[...document.querySelector('{table}').tBodies[0].rows]"
                      f".map(r => r.cells[{i}].dataset.v === undefined ? r.cells[{i}].textContent.trim() "
                      f": (r.cells[{i}].dataset.v === '' ? null : parseFloat(r.cells[{i}].dataset.v)))")


def test_every_page_loads_clean_with_plots_and_resolving_links(site, browser):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3
    plots = 0
    for page in pages:
        browser.open(page.as_uri())
        assert browser.errors() == [], page
        images = browser.js("[...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
        assert all(ok for _, ok in images), (page, images)
        plots += len(images)
        for href in browser.js("[...document.links].map(a => a.href)"):
            url = urlparse(href)
            if url.scheme == "https":
                continue  # paper and code links: not fetched offline
            assert url.scheme == "file", (page, href)
            target = Path(unquote(url.path))
            assert target.is_file(), (page, href)
            if url.fragment and target == page:
                assert browser.js(f"document.getElementById({url.fragment!r}) !== null"), (page, href)
    assert plots >= 1


def ordered(values: list, reverse: bool) -> bool:
    """Numbers sorted, cells without a value last."""
    nums = [v for v in values if v is not None]
    return nums == sorted(nums, reverse=reverse) and values[len(nums):] == [None] * (len(values) - len(nums))


def test_tables_sort_on_click(site, browser):
    browser.open((site / "index.html").as_uri())
    table = "table.sortable"
    header = browser.js(f"[...document.querySelector('{table}').tHead.rows[0].cells].map(c => c.textContent)")
    i = next(k for k, h in enumerate(header) if h.startswith("win rate"))
    click = f"document.querySelector('{table}').tHead.rows[0].cells[{i}].click()"
    browser.js(click)
    assert ordered(column(browser, table, i), reverse=False)
    browser.js(click)
    assert ordered(column(browser, table, i), reverse=True)
    assert browser.js(f"document.querySelector('{table}').tHead.rows[0].cells[{i}].getAttribute('aria-sort')") \
        == "descending"
    name = browser.js(f"[...document.querySelector('{table}').tHead.rows[0].cells].findIndex(c => "
                      "c.textContent === 'submission')")
    browser.js(f"document.querySelector('{table}').tHead.rows[0].cells[{name}].click()")
    names = column(browser, table, name)
    assert names == sorted(names, key=str.lower) and len(names) > 1
    assert browser.errors() == []


def test_filter_keeps_the_matching_rows(site, browser):
    browser.open((site / "index.html").as_uri())
    rows = "[...document.querySelector('table.sortable').tBodies[0].rows]"
    name = browser.js(f"{rows}[0].cells[1].textContent.trim()")
    set_filter = ("(q => {{ const f = document.getElementById('filter'); f.value = q; "
                  "f.dispatchEvent(new Event('input')); }})({!r})")
    browser.js(set_filter.format(name))
    visible = browser.js(f"{rows}.filter(r => !r.hidden).map(r => r.cells[1].textContent.trim())")
    assert name in visible and all(name.lower() in v.lower() for v in visible)
    assert len(visible) < browser.js(f"{rows}.length")
    browser.js(set_filter.format(""))
    assert browser.js(f"{rows}.every(r => !r.hidden)") and browser.errors() == []


def test_screenshot(site, browser, tmp_path):
    """A picture of the overview (saved to $VQBENCH_SCREENSHOT too when set: the README's image)."""
    browser.open((site / "index.html").as_uri())
    shot = tmp_path / "site.png"
    browser.screenshot(shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if target := os.environ.get("VQBENCH_SCREENSHOT"):
        shutil.copy2(shot, target)
