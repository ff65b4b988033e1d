"""The review page in headless Chromium (Debian's `chromium`, driven by Playwright).

Opens the page of a tiny paused run, rejects one suspect, relabels one, accepts one (by
keyboard), checks the ledger, checks that no request left 127.0.0.1 and that markup in
the texts stayed text, measures how fast the page shows 100 suspects with their evidence
and how fast a decision round-trips, and saves a screenshot (to docs/review.png when
GBAIR_UPDATE_SCREENSHOT=1).

Never `playwright install` (its download site is unreachable here): `make test` installs
Debian's chromium, and under `make test` or CI (CI=true) a missing browser is a failure,
not a skip.
"""
import json
import os
import shutil
import time
from urllib.parse import urlparse

import numpy as np
import pytest

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.review import server as server_lib
from tests.review_helpers import IMG, LABELS, NUM_SUSPECTS, REPO, SCRIPT

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true") or bool(
    os.environ.get("GBAIR_REQUIRE_BROWSER"))
SCREENSHOT = os.path.join(REPO, "docs", "review.png")


def _need_browser():
  missing = []
  if not os.access(CHROMIUM, os.X_OK):
    missing.append(f"{CHROMIUM} (apt-get install -y chromium; `make test` does it)")
  try:
    import playwright.sync_api  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    missing.append("the playwright package (pip install -r requirements.txt)")
  if missing:
    message = "the browser test needs " + " and ".join(missing)
    if REQUIRED:
      pytest.fail(message)
    pytest.skip(message)


def _start(out):
  """(server, url, when it started loading the round)."""
  started = time.time()
  app = server_lib.ReviewApp(out)
  server, url = server_lib.start_in_thread(app)
  return server, url, started


def _stop(server):
  server.shutdown()
  server.server_close()


def test_review_page_in_headless_chromium(paused_review_run, tmp_path):
  _need_browser()
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "run")
  shutil.copytree(paused_review_run["output_dir"], out)
  proposals = json.load(open(os.path.join(out, "round_0", "proposals.json")))
  suspects = proposals["suspects"]
  requests, blocked, dialogs, page_errors = [], [], [], []

  def guard(route):
    if urlparse(route.request.url).hostname == "127.0.0.1":
      route.continue_()
    else:
      blocked.append(route.request.url)
      route.abort()

  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                args=["--disable-background-networking",
                                      "--disable-component-update", "--no-first-run"])
    try:
      context = browser.new_context(viewport={"width": 1280, "height": 860})
      context.route("**/*", guard)
      page = context.new_page()
      page.on("request", lambda r: requests.append(r.url))
      page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
      page.on("pageerror", lambda e: page_errors.append(str(e)))
      page.goto("about:blank")  # the browser is up; what is timed is the server + page

      # Time: server start -> the first frame painted with 100 suspects and their evidence.
      loads = []
      for _ in range(3):
        server, url, started = _start(out)
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=30_000)
        painted = page.evaluate("() => performance.timeOrigin + window.reviewLoadMs.painted")
        loads.append(painted / 1000 - started)
        assert page.locator("#tab-suspects .card").count() == NUM_SUSPECTS
        assert page.locator("#tab-suspects .card .evidence li").count() >= 2 * NUM_SUSPECTS
        _stop(server)
      server, url, _ = _start(out)
      page.goto(url)
      page.wait_for_selector("body[data-ready=true]", state="attached")

      # Markup in the data is text: shown literally, never run or parsed.
      # (textContent: off-screen cards are in the document but not laid out, see the CSS.)
      body = page.text_content("#tab-suspects")
      assert SCRIPT in body and IMG in body
      assert page.evaluate("() => [...document.scripts].filter(s => s.type !== "
                           "'application/json').length") == 1
      assert page.evaluate("() => document.querySelectorAll('img').length") == 0
      for field in ("was_corrupted", "original_label", "is_corrupted"):
        assert field not in page.content()

      first, second, third = (page.locator(f'#tab-suspects .card[data-id="{s["example_id"]}"]')
                              for s in suspects[:3])
      # 1: reject with the button.
      first.locator('button[data-action="reject"]').click()
      page.wait_for_selector(f'.card[data-id="{suspects[0]["example_id"]}"][data-status="reject"]')
      # 2: relabel to the class that is neither its label nor the proposed one.
      other = next(n for n in LABELS if n not in (suspects[1]["label"], suspects[1]["proposed"]))
      second.locator("select").select_option(other)
      second.locator('button[data-action="relabel"]').click()
      page.wait_for_selector(f'.card[data-id="{suspects[1]["example_id"]}"][data-status="relabel"]')
      # 3: accept from the keyboard.
      third.locator(".text").click()
      page.keyboard.press("a")
      page.wait_for_selector(f'.card[data-id="{suspects[2]["example_id"]}"][data-status="accept"]')
      assert "reviewed 3 / 100" in page.inner_text("#progress-text")

      entries = ledger_lib.read_ledger(ledger_lib.ledger_path(out))
      assert [(e.example_id, e.strategy, e.old_label, e.new_label) for e in entries] == [
          (suspects[0]["example_id"], "human:reject", LABELS.index(suspects[0]["label"]),
           LABELS.index(suspects[0]["label"])),
          (suspects[1]["example_id"], "human:relabel", LABELS.index(suspects[1]["label"]),
           LABELS.index(other)),
          (suspects[2]["example_id"], "human:accept", LABELS.index(suspects[2]["label"]),
           LABELS.index(suspects[2]["proposed"]))]
      assert all(e.round == 0 for e in entries)

      # A fast pass: the focus moved on; accept / reject the next ten by key.
      for n in range(10):
        before = len(ledger_lib.read_ledger(ledger_lib.ledger_path(out)))
        page.keyboard.press("ar"[n % 2])
        page.wait_for_selector(f'.card[data-id="{suspects[3 + n]["example_id"]}"]'
                               f'[data-status="{("accept", "reject")[n % 2]}"]')
        assert len(ledger_lib.read_ledger(ledger_lib.ledger_path(out))) == before + 1
      assert "reviewed 13 / 100" in page.inner_text("#progress-text")
      timings = page.evaluate("() => window.reviewTimings")
      assert len(timings) == 13

      # Filters.
      page.select_option("#filter-status", "undecided")
      assert page.inner_text("#shown-count") == f"showing {NUM_SUSPECTS - 13} of {NUM_SUSPECTS}"
      page.select_option("#filter-status", "")
      page.select_option("#filter-class", LABELS[0])
      shown = sum(s["label"] == LABELS[0] for s in suspects)
      assert page.inner_text("#shown-count") == f"showing {shown} of {NUM_SUSPECTS}"
      page.select_option("#filter-class", "")

      # Why is this wrong? and the summary with the command to retrain.
      page.click('nav button[data-tab="misclassified"]')
      assert page.locator("#tab-misclassified .card").count() == \
          proposals["num_misclassified_validation"]
      page.click('nav button[data-tab="summary"]')
      assert proposals["resume_command"] in page.inner_text("#tab-summary")
      assert page.inner_text('#tab-summary td[data-count="accept"]') == "6"
      page.click('nav button[data-tab="suspects"]')

      page.evaluate("() => window.scrollTo(0, 0)")
      shot = str(tmp_path / "review.png")
      page.screenshot(path=shot)
      _stop(server)
    finally:
      browser.close()

  assert not dialogs, f"the page ran a dialog (markup in the data executed?): {dialogs}"
  assert not page_errors, page_errors
  assert not blocked, f"requests left 127.0.0.1: {blocked}"
  assert requests and all(urlparse(u).hostname == "127.0.0.1" for u in requests)
  assert os.path.getsize(shot) > 10_000
  if os.environ.get("GBAIR_UPDATE_SCREENSHOT"):
    shutil.copyfile(shot, SCREENSHOT)
  load, median_ms = min(loads), float(np.median(timings))
  print(f"\nreview page: 100 suspects with evidence shown {1000 * load:.0f} ms after the "
        f"server started (3 starts: {', '.join(f'{1000 * x:.0f}' for x in loads)} ms); "
        f"decision round trip in the page: median {median_ms:.1f} ms, max {max(timings):.1f} ms "
        f"over {len(timings)}")
  # Printed, not asserted: timing targets live in benchmarks/review_page.py (a test on a
  # loaded 2-core CI machine failed at 1.04 s against a 1 s target).
