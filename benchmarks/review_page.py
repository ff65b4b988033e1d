"""How fast the review page shows a paused round, and how fast a decision round-trips.

  .venv/bin/python benchmarks/review_page.py --output_dir=runs/reviewed [--round=R] \
      [--starts=3] [--decisions=20] [--screenshot=docs/review.png]

Works on a copy of the run (decisions write the ledger). For each of --starts server
starts: load the round, listen, open the page in headless Chromium (Debian's, at
/usr/bin/chromium) and time until the first frame painted with every suspect and its
evidence. Then makes --decisions decisions from the keyboard (accept / reject in turn) and
times each in the page: key -> POST -> ledger line -> card updated. --screenshot saves the
page after three decisions (reject #1, set #2's label, accept #3), as a 64-colour PNG.
Prints one JSON line. Every request that would leave 127.0.0.1 is blocked and counted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--output_dir", required=True, help="a run paused by `gbair run --review`")
  p.add_argument("--round", type=int, default=None)
  p.add_argument("--starts", type=int, default=3)
  p.add_argument("--decisions", type=int, default=20)
  p.add_argument("--screenshot", default=None)
  p.add_argument("--width", type=int, default=1280)
  p.add_argument("--height", type=int, default=860)
  args = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  from gbair_jax.review import server as server_lib  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix="review_page_")
  out = os.path.join(work, "run")
  shutil.copytree(args.output_dir, out, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
  blocked = []

  def guard(route):
    if urlparse(route.request.url).hostname == "127.0.0.1":
      route.continue_()
    else:
      blocked.append(route.request.url)
      route.abort()

  def start():
    started = time.time()
    app = server_lib.ReviewApp(out, args.round)
    server, url = server_lib.start_in_thread(app)
    return app, server, url, started

  loads, result = [], {}
  try:
    with sync_playwright() as pw:
      browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
      context = browser.new_context(viewport={"width": args.width, "height": args.height})
      context.route("**/*", guard)
      page = context.new_page()
      page.goto("about:blank")
      for _ in range(args.starts):
        app, server, url, started = start()
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=60_000)
        painted = page.evaluate("() => performance.timeOrigin + window.reviewLoadMs.painted")
        loads.append(painted / 1000 - started)
        server.shutdown()
        server.server_close()
      app, server, url, _ = start()
      page.goto(url)
      page.wait_for_selector("body[data-ready=true]", state="attached")
      review = json.loads(app.review_json)
      suspects = review["suspects"]
      card = lambda s: page.locator(f'#tab-suspects .card[data-id="{s["example_id"]}"]')
      wait = lambda s, status: page.wait_for_selector(
          f'#tab-suspects .card[data-id="{s["example_id"]}"][data-status="{status}"]')
      n = 0
      if args.screenshot and len(suspects) >= 3:
        card(suspects[0]).locator('button[data-action="reject"]').click()
        wait(suspects[0], "reject")
        names = review["label_names"]
        other = next((x for x in names if x not in (suspects[1]["label"], suspects[1]["proposed"])),
                     suspects[1]["proposed"])
        card(suspects[1]).locator("select").select_option(other)
        card(suspects[1]).locator('button[data-action="relabel"]').click()
        wait(suspects[1], "relabel")
        card(suspects[2]).locator(".text").click()
        page.keyboard.press("a")
        wait(suspects[2], "accept")
        page.evaluate("() => window.scrollTo(0, 0)")
        raw = os.path.join(work, "shot.png")
        page.screenshot(path=raw)
        _save_small_png(raw, args.screenshot)
        n = 3
      else:
        page.locator("#tab-suspects .card .text").first.click()
      for s in suspects[n:n + args.decisions]:
        kind = ("accept", "reject")[n % 2]
        page.keyboard.press(kind[0])
        wait(s, kind)
        n += 1
      timings = page.evaluate("() => window.reviewTimings")
      server.shutdown()
      server.server_close()
      browser.close()
    result = {
        "suspects": len(suspects), "misclassified": len(review["misclassified"]),
        "evidence_items": sum(len(v) for s in suspects for v in s["evidence"].values()),
        "page_load_ms": [round(1000 * x) for x in loads],
        "page_load_ms_best": round(1000 * min(loads)),
        "decisions": len(timings), "decision_ms_median": round(float(np.median(timings)), 1),
        "decision_ms_max": round(float(np.max(timings)), 1), "blocked_requests": len(blocked),
        "load_average_1min": round(os.getloadavg()[0], 1)}
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(json.dumps(result))


def _save_small_png(source: str, target: str) -> None:
  """A 64-colour palette PNG: the page is flat colours and text, so it stays legible."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib brings Pillow)
  image = Image.open(source).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
  image.save(target, optimize=True)


if __name__ == "__main__":
  main()
