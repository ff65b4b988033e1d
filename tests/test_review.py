"""Human review without a browser: `gbair run --review` pauses, `gbair influence` evidence,
the review server's HTTP API (list, decide, refusals, token, escaping, concurrency), the
ledger it leaves, and a resumed run that trains on the decisions."""
import http.client
import json
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest

from gbair_jax import config
from gbair_jax.data import ledger as ledger_lib
from gbair_jax.recovery import actions
from gbair_jax.review import decisions as decisions_lib
from gbair_jax.review import server as server_lib
from tests.helpers import gbair_in_process
from tests.review_helpers import IMG, LABELS, NUM_SUSPECTS, SCRIPT

GROUND_TRUTH = ("was_corrupted", "original_label", "is_corrupted")


@pytest.fixture
def run_dir(paused_review_run, tmp_path):
  out = str(tmp_path / "run")
  shutil.copytree(paused_review_run["output_dir"], out)
  return out


@pytest.fixture
def served(run_dir):
  app = server_lib.ReviewApp(run_dir)
  server, url = server_lib.start_in_thread(app)
  client = Client(server.server_address[1], app)
  yield client
  server.shutdown()
  server.server_close()


class Client:
  """Raw HTTP, so tests can send what a browser would not (bad Host, no token, ...)."""

  def __init__(self, port: int, app):
    self.port, self.app = port, app

  def request(self, method, path, body=None, headers=None, token=True):
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
    sent = {"Content-Type": "application/json"} if body is not None else {}
    if token:
      sent["X-Review-Token"] = self.app.token
    sent.update(headers or {})
    if isinstance(body, (dict, list)):
      body = json.dumps(body)
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    text = data.decode("utf-8")
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, (json.loads(text) if is_json and text else text), response

  def get(self, path):
    return self.request("GET", path, token=False)

  def decide(self, example_id, decision, label=None, **kwargs):
    body = {"example_id": example_id, "decision": decision}
    if label is not None:
      body["label"] = label
    return self.request("POST", "/api/decisions", body, **kwargs)


def ledger_text(out):
  path = ledger_lib.ledger_path(out)
  return open(path).read() if os.path.exists(path) else ""


def proposals_of(out, r=0):
  return json.load(open(os.path.join(out, f"round_{r}", "proposals.json")))


# --- the pause -----------------------------------------------------------------------------

def test_review_pauses_after_selection_before_any_label_change(paused_review_run):
  out = paused_review_run["output_dir"]
  assert "round 0 is waiting for review: gbair review" in paused_review_run["stdout"]
  assert not os.path.exists(ledger_lib.ledger_path(out)), "no label may change before review"
  assert not os.path.exists(os.path.join(out, "round_0", "round.json"))
  assert not os.path.exists(os.path.join(out, "round_1"))
  proposals = proposals_of(out)
  assert proposals["label_names"] == list(LABELS)
  assert proposals["resume_command"].endswith("--review")
  assert proposals["num_train"] > NUM_SUSPECTS
  assert set(proposals["seconds"]) == {"train", "score", "evidence"}
  suspects = proposals["suspects"]
  assert len(suspects) == NUM_SUSPECTS
  assert [s["rank"] for s in suspects] == list(range(1, NUM_SUSPECTS + 1))
  scores = np.array([s["score"] for s in suspects])
  # Best first, up to select_suspects' tie resolution (near-ties go in training-set order).
  step = actions.RANK_RESOLUTION * np.abs(scores).max()
  assert np.all(np.diff(scores) <= step)
  for s in suspects:
    assert s["proposed"] in LABELS and s["proposed"] != s["label"]
    assert abs(sum(s["probabilities"]) - 1) < 1e-4 and len(s["probabilities"]) == 3
  assert not set(GROUND_TRUTH) & set(json.dumps(proposals).split('"'))
  # The flag is not part of the saved config: the same gin gives the same config.gin.
  import gin
  config.parse_gin([paused_review_run["gin_file"]])
  assert open(os.path.join(out, "config.gin")).read() == (
      gin.config_str() + "\n# strategy: tracin_opponents\n")


def test_influence_records_of_suspects_exclude_themselves(paused_review_run):
  out = paused_review_run["output_dir"]
  ids = [s["example_id"] for s in proposals_of(out)["suspects"]]
  records = [json.loads(l) for l in open(os.path.join(out, "round_0", "influence",
                                                      "suspects_top5.jsonl"))]
  assert [r["example_id"] for r in records] == ids
  for r in records:
    assert set(r) == {"example_id", "text", "label", "predicted", "proponents", "opponents",
                      "opposed_validation"}
    for kind in ("proponents", "opponents", "opposed_validation"):
      assert len(r[kind]) == 5
      assert r["example_id"] not in [item["example_id"] for item in r[kind]]
      assert all(set(item) == {"example_id", "text", "label", "score"} for item in r[kind])
    assert [i["score"] for i in r["opponents"]] == sorted(i["score"] for i in r["opponents"])
    assert [i["score"] for i in r["proponents"]] == sorted((i["score"] for i in r["proponents"]),
                                                           reverse=True)
  misclassified = [json.loads(l) for l in open(os.path.join(out, "round_0", "influence",
                                                            "misclassified_top5.jsonl"))]
  assert len(misclassified) == proposals_of(out)["num_misclassified_validation"] > 0
  assert all(m["label"] != m["predicted"] for m in misclassified)


# --- the API ----------------------------------------------------------------------------------

def test_page_and_round_listing(served, run_dir):
  status, page, response = served.get("/")
  assert status == 200 and response.getheader("Content-Type").startswith("text/html")
  assert f'content="{served.app.token}"' in page
  csp = response.getheader("Content-Security-Policy")
  nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
  assert f'<script nonce="{nonce}">' in page and "unsafe-inline" not in csp
  assert not re.search(r"(src|href)=\"https?:", page), "no CDN, no remote fonts"
  assert "@font-face" not in page and "@import" not in page

  status, review, _ = served.get("/api/review")
  assert status == 200
  assert review["label_names"] == list(LABELS) and review["round"] == 0
  proposals = proposals_of(run_dir)["suspects"]
  assert [s["example_id"] for s in review["suspects"]] == [str(s["example_id"]) for s in proposals]
  assert all(isinstance(s["example_id"], str) for s in review["suspects"])
  big = [s for s in proposals if s["example_id"] > 2 ** 53]
  assert big, "the data's ids are 64-bit hashes"
  for s in review["suspects"]:
    evidence = s["evidence"]
    assert evidence["opposed_validation"] and (evidence["proponents"] or evidence["opponents"])
    for items, sign in ((evidence["opposed_validation"], -1), (evidence["opponents"], -1),
                        (evidence["proponents"], 1)):
      assert all(isinstance(i["example_id"], str) and i["score"] * sign > 0 for i in items)
  assert review["misclassified"] and all(m["opponents"] or m["proponents"]
                                         for m in review["misclassified"])
  status, state, _ = served.get("/api/state")
  assert state == {"decisions": {}, "closed": None, "progress": {
      "reviewed": 0, "total": NUM_SUSPECTS,
      "counts": {"accept": 0, "reject": 0, "relabel": 0, "drop": 0}}}
  for path in ("/", "/api/review", "/api/state"):
    text = json.dumps(served.get(path)[1])
    for field in GROUND_TRUTH:
      assert field not in text, f"{path} shows {field}"


def test_markup_in_texts_travels_as_json_text(served):
  _, raw, _ = served.request("GET", "/api/review", token=False)
  texts = [s["text"] for s in raw["suspects"]]
  texts += [i["text"] for s in raw["suspects"] for k in s["evidence"] for i in s["evidence"][k]]
  assert any(SCRIPT in t for t in texts) and any(IMG in t for t in texts)
  _, page, _ = served.get("/")
  # The data sits in the page as JSON whose '<', '>', '&' are \\u escapes: no markup.
  assert SCRIPT not in page and IMG not in page and "alert(" in page
  assert page.count("</script>") == 2 and page.count("<script") == 2
  assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page
  assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "eval(" not in page


def test_decisions_write_ledger_lines_that_apply_ledger_reads(served, run_dir):
  suspects = proposals_of(run_dir)["suspects"]
  names = list(LABELS)
  a, b, c, d, e = suspects[:5]
  other = next(n for n in names if n not in (c["label"], c["proposed"]))
  steps = [(a, "accept", None), (b, "reject", None), (c, "relabel", other), (d, "drop", None),
           (e, "accept", None), (e, "reject", None)]  # e: a change of mind
  for s, kind, label in steps:
    status, body, _ = served.decide(str(s["example_id"]), kind, label)
    assert status == 200, body
  status, body, _ = served.decide(str(a["example_id"]), "accept")  # the same again: no new line
  assert status == 200 and body["state"]["lines"] == 1
  entries = ledger_lib.read_ledger(ledger_lib.ledger_path(run_dir))
  assert [(e_.example_id, e_.strategy) for e_ in entries] == [
      (s["example_id"], f"human:{kind}") for s, kind, _ in steps]
  assert all(e_.round == 0 for e_ in entries)

  from gbair_jax.data import dataset
  config.parse_gin([os.path.join(run_dir, "config.gin")])
  train = dataset.load_data().splits["train"]
  after = ledger_lib.apply_ledger(train, entries, before_round=1)
  label_of = dict(zip(after["example_id"].tolist(), after["label"].tolist()))
  before = dict(zip(train["example_id"].tolist(), train["label"].tolist()))
  assert label_of[a["example_id"]] == names.index(a["proposed"])
  assert label_of[b["example_id"]] == before[b["example_id"]] == names.index(b["label"])
  assert label_of[c["example_id"]] == names.index(other)
  assert d["example_id"] not in label_of
  assert label_of[e["example_id"]] == names.index(e["label"])
  untouched = set(before) - {s["example_id"] for s in (a, b, c, d, e)}
  assert all(label_of[i] == before[i] for i in untouched)
  assert len(after["label"]) == len(train["label"]) - 1

  _, state, _ = served.get("/api/state")
  assert state["progress"]["reviewed"] == 5
  assert state["progress"]["counts"] == {"accept": 1, "reject": 2, "relabel": 1, "drop": 1}
  assert state["decisions"][str(c["example_id"])] == {"decision": "relabel", "label": other,
                                                       "lines": 1}
  assert state["decisions"][str(d["example_id"])]["label"] is None
  status, body, _ = served.decide(str(d["example_id"]), "accept")
  assert status == 409 and "final" in body["error"]


@pytest.mark.parametrize("case", [
    "no_token", "wrong_token", "not_json", "not_object", "number_id", "unknown_id", "bad_decision",
    "relabel_without_label", "relabel_unknown_label", "label_with_accept", "unknown_field",
    "form_content_type", "too_large", "no_length", "bad_host", "unknown_path", "put"])
def test_bad_requests_get_a_4xx_message_and_leave_the_ledger_alone(served, run_dir, case):
  sid = str(proposals_of(run_dir)["suspects"][0]["example_id"])
  good = {"example_id": sid, "decision": "accept"}
  request = {
      "no_token": lambda: served.request("POST", "/api/decisions", good, token=False),
      "wrong_token": lambda: served.request("POST", "/api/decisions", good,
                                            headers={"X-Review-Token": "x" * 43}),
      "not_json": lambda: served.request("POST", "/api/decisions", "{nope"),
      "not_object": lambda: served.request("POST", "/api/decisions", [good]),
      "number_id": lambda: served.request("POST", "/api/decisions",
                                          '{"example_id": %s, "decision": "accept"}' % sid),
      "unknown_id": lambda: served.decide("12345", "accept"),
      "bad_decision": lambda: served.decide(sid, "maybe"),
      "relabel_without_label": lambda: served.decide(sid, "relabel"),
      "relabel_unknown_label": lambda: served.decide(sid, "relabel", "sarcastic"),
      "label_with_accept": lambda: served.decide(sid, "accept", "neutral"),
      "unknown_field": lambda: served.request("POST", "/api/decisions", {**good, "x": 1}),
      "form_content_type": lambda: served.request(
          "POST", "/api/decisions", "example_id=1", headers={
              "Content-Type": "application/x-www-form-urlencoded"}),
      "too_large": lambda: served.request("POST", "/api/decisions",
                                          {**good, "pad": "x" * (server_lib.MAX_BODY + 1)}),
      "no_length": lambda: _post_without_length(served),
      "bad_host": lambda: served.request("POST", "/api/decisions", good,
                                         headers={"Host": "attacker.example:80"}),
      "unknown_path": lambda: served.request("POST", "/api/nothing", good),
      "put": lambda: served.request("PUT", "/api/decisions", good),
  }[case]
  status, body, _ = request()
  assert 400 <= status < 500, (status, body)
  assert isinstance(body, dict) and body["error"] and "Traceback" not in json.dumps(body)
  assert ledger_text(run_dir) == ""
  assert served.get("/api/state")[0] == 200, "the server still answers"


def _post_without_length(served):
  conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
  conn.putrequest("POST", "/api/decisions")
  conn.putheader("X-Review-Token", served.app.token)
  conn.putheader("Content-Type", "application/json")
  conn.endheaders()
  response = conn.getresponse()
  body = json.loads(response.read())
  conn.close()
  return response.status, body, response


def test_concurrent_decisions_from_two_tabs_keep_the_ledger_whole(served, run_dir):
  suspects = proposals_of(run_dir)["suspects"][:40]
  kinds = ["accept", "reject", "drop"]
  errors, timings = [], []

  def tab(offset):
    for n, s in enumerate(suspects):
      kind = kinds[(n + offset) % 3]
      started = time.perf_counter()
      status, body, _ = served.decide(str(s["example_id"]), kind)
      timings.append(time.perf_counter() - started)
      if status not in (200, 409):
        errors.append((status, body))

  threads = [threading.Thread(target=tab, args=(k,)) for k in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  lines = ledger_text(run_dir).splitlines()
  assert all(json.loads(line) for line in lines)  # every line whole
  entries = ledger_lib.read_ledger(ledger_lib.ledger_path(run_dir))
  decided = decisions_lib.round_decisions(entries, 0)
  assert set(decided) == {s["example_id"] for s in suspects}
  # The chain of lines per example is consistent: apply_ledger takes it without complaint.
  from gbair_jax.data import dataset
  config.parse_gin([os.path.join(run_dir, "config.gin")])
  train = dataset.load_data().splits["train"]
  after = ledger_lib.apply_ledger(train, entries, before_round=1)
  label_of = dict(zip(after["example_id"].tolist(), after["label"].tolist()))
  for s in suspects:
    final = decided[s["example_id"]]["label"]
    assert label_of.get(s["example_id"]) == final
  _, state, _ = served.get("/api/state")
  assert state["progress"]["reviewed"] == 40
  print(f"decision round trip over HTTP, 4 threads: median "
        f"{1000 * float(np.median(timings)):.1f} ms, max {1000 * max(timings):.1f} ms")


def test_decision_round_trip_is_fast(served, run_dir):
  suspects = proposals_of(run_dir)["suspects"]
  timings = []
  for n, s in enumerate(suspects[:30]):
    started = time.perf_counter()
    status, _, _ = served.decide(str(s["example_id"]), ("accept", "reject")[n % 2])
    timings.append(time.perf_counter() - started)
    assert status == 200
  median = float(np.median(timings))
  print(f"decision round trip over HTTP: median {1000 * median:.1f} ms, "
        f"max {1000 * max(timings):.1f} ms")
  assert median < 0.1


@pytest.mark.parametrize("how", ["run_went_on", "round_finished"])
def test_decisions_close_when_the_run_goes_on(served, run_dir, how):
  sid = str(proposals_of(run_dir)["suspects"][0]["example_id"])
  assert served.decide(sid, "reject")[0] == 200
  if how == "run_went_on":  # what the loop does before it reads the ledger to go on
    decisions_lib.close_review(run_dir, 0)
  else:
    with open(os.path.join(run_dir, "round_0", "round.json"), "w") as f:
      f.write("{}")
  before = ledger_text(run_dir)
  status, body, _ = served.decide(sid, "accept")
  assert status == 409 and "closed" in body["error"]
  assert served.get("/api/state")[1]["closed"]
  assert ledger_text(run_dir) == before


def test_review_command_refuses_a_run_without_proposals(tmp_path, capsys):
  assert gbair_in_process("review", f"--output_dir={tmp_path}", "--port=0") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error: ")
  assert "no round waits for review" in err[0]


# --- resume ------------------------------------------------------------------------------------

def test_resumed_run_trains_on_the_decisions(served, run_dir, monkeypatch, capsys):
  from gbair_jax.recovery import loop
  suspects = proposals_of(run_dir)["suspects"]
  names = list(LABELS)
  a, b, c, d = suspects[:4]
  other = next(n for n in names if n not in (c["label"], c["proposed"]))
  for s, kind, label in ((a, "accept", None), (b, "reject", None), (c, "relabel", other),
                         (d, "drop", None)):
    assert served.decide(str(s["example_id"]), kind, label)[0] == 200

  seen = {}
  real_train_prompt = loop.train_prompt

  def recording_train_prompt(spec, frozen, splits, round_dir, **kwargs):
    train = splits["train"]
    seen[os.path.basename(round_dir)] = dict(zip(train["example_id"].tolist(),
                                                 train["label"].tolist()))
    return real_train_prompt(spec, frozen, splits, round_dir, **kwargs)

  monkeypatch.setattr(loop, "train_prompt", recording_train_prompt)
  # The same config as the paused command (claim_output_dir would refuse another one).
  config.parse_gin([_gin_file_of(run_dir)])
  result = loop.run(run_dir, review=True, progress=False)
  assert result["paused_for_review"] == 1, "resumed, then paused at the next round"

  round0 = json.load(open(os.path.join(run_dir, "round_0", "round.json")))
  assert round0["label_names"] == names and round0["selected"] == NUM_SUSPECTS
  assert round0["review"]["decisions"] == 4
  assert {k: round0["review"][k] for k in ("accept", "reject", "relabel", "drop")} == {
      "accept": 1, "reject": 1, "relabel": 1, "drop": 1}
  assert round0["review"]["undecided"] == NUM_SUSPECTS - 4
  assert round0["removed"] == 1  # the drop (the accepted proposal was a relabel)
  audit = [json.loads(l) for l in open(os.path.join(run_dir, "round_0", "suspects.jsonl"))]
  assert [r["strategy"] for r in audit] == ["human:accept", "human:reject", "human:relabel",
                                           "human:drop"]

  trained = seen["round_1"]  # what round 1 trained on
  assert trained[a["example_id"]] == names.index(a["proposed"])
  assert trained[b["example_id"]] == names.index(b["label"])
  assert trained[c["example_id"]] == names.index(other)
  assert d["example_id"] not in trained
  assert len(trained) == len(seen["round_0"]) - 1
  undecided = [s["example_id"] for s in suspects[4:]]
  assert all(trained[i] == names.index(s["label"]) for i, s in zip(undecided, suspects[4:]))
  assert proposals_of(run_dir, 1)["num_train"] == proposals_of(run_dir)["num_train"] - 1
  next_ids = {s["example_id"] for s in proposals_of(run_dir, 1)["suspects"]}
  assert not next_ids & {s["example_id"] for s in (a, b, c, d)}, "reviewed: never again"
  # Only the human lines are in the ledger for round 0; nothing for round 1 yet.
  entries = ledger_lib.read_ledger(ledger_lib.ledger_path(run_dir))
  assert [e.strategy for e in entries] == ["human:accept", "human:reject", "human:relabel",
                                           "human:drop"]
  # The page's decisions for round 0 are closed now.
  status, body, _ = served.decide(str(suspects[10]["example_id"]), "accept")
  assert status == 409

  capsys.readouterr()
  assert gbair_in_process("review", f"--output_dir={run_dir}", "--score") == 0
  assert "decisions" in capsys.readouterr().out and os.path.exists(os.path.join(run_dir, "review_scores.json"))
  scores = json.load(open(os.path.join(run_dir, "review_scores.json")))["0"]
  assert scores["decisions"] == 4 and scores["right"] == round0["review"]["right"]


def _gin_file_of(run_dir):
  """The gin file of the paused command (kept next to the fixture's run directory)."""
  proposals = proposals_of(run_dir)
  return re.search(r"--gin_file=(\S+)", proposals["resume_command"]).group(1)


# --- decision rules and scoring, no server ------------------------------------------------------

def test_decision_rules_and_score_against_ground_truth():
  from gbair_jax.data.ledger import LedgerEntry
  from gbair_jax.review import score as score_lib
  norm = decisions_lib.normalize
  assert norm("accept", None, 0, 2, 3) == ("accept", 2)
  assert norm("reject", None, 0, 2, 3) == ("reject", 0)
  assert norm("drop", None, 0, 2, 3) == ("drop", None)
  assert norm("relabel", 1, 0, 2, 3) == ("relabel", 1)
  assert norm("relabel", 2, 0, 2, 3) == ("relabel", 2), "the reviewer's own pick stays a relabel"
  assert norm("relabel", 0, 0, 2, 3) == ("reject", 0), "a relabel to the same label keeps it"
  for bad in (("relabel", None), ("relabel", 3), ("maybe", None)):
    with pytest.raises(decisions_lib.DecisionError) as e:
      norm(bad[0], bad[1], 0, 2, 3)
    assert e.value.status == 400

  # ids 1..5: 1, 2 corrupted (true labels 0, 1); the reviewer fixes 1, keeps 2 wrong, keeps 3
  # right, breaks 4, drops 5 (clean).
  train = {"example_id": np.array([1, 2, 3, 4, 5]), "label": np.array([1, 0, 0, 1, 1]),
           "original_label": np.array([0, 1, 0, 1, 1]),
           "is_corrupted": np.array([True, True, False, False, False])}
  h = lambda i, old, new, kind: LedgerEntry(0, i, old, new, 1.0, f"human:{kind}")
  entries = [h(1, 1, 0, "accept"), h(2, 0, 0, "reject"), h(3, 0, 0, "reject"),
             h(4, 1, 0, "accept"), h(4, 0, 2, "relabel"), h(5, 1, None, "drop"),
             LedgerEntry(1, 3, 0, 1, 1.0, "loss")]  # another round, not human
  decided = decisions_lib.round_decisions(entries, 0)
  assert decided[4] == {"decision": "relabel", "label": 2, "lines": 2}
  proposals = {"label_names": ["a", "b", "c"], "suspects": [
      {"example_id": i, "proposed": p} for i, p in ((1, "a"), (2, "b"), (3, "b"), (4, "a"),
                                                    (5, "a"), (6, "a"))]}
  train = {k: np.concatenate([v, v[-1:]]) for k, v in train.items()}
  train["example_id"][-1] = 6
  s = score_lib.score_round(train, entries, 0, proposals)
  assert {k: s[k] for k in ("decisions", "accept", "reject", "relabel", "drop", "right",
                            "fixed", "broken", "missed", "undecided", "suspects")} == {
      "decisions": 5, "accept": 1, "reject": 2, "relabel": 1, "drop": 1, "right": 2,
      "fixed": 1, "broken": 1, "missed": 1, "undecided": 1, "suspects": 6}
  assert s["strategy_precision"] == pytest.approx(2 / 6)
  assert s["automatic_right_on_decided"] == 2  # 1 -> a (right), 2 -> b (right), 3/4/5 wrong
  assert "round" in score_lib.format_scores({0: s})


def test_gbair_influence_queries_suspects_matches_the_pause(paused_review_run, tmp_path, capsys):
  out = str(tmp_path / "run")
  shutil.copytree(paused_review_run["output_dir"], out)
  assert gbair_in_process("influence", f"--output_dir={out}", "--round=0",
                          "--queries=suspects", "--top_k=3") == 0
  stdout = capsys.readouterr().out
  assert "opposes" in stdout and "influence:" in stdout
  path = os.path.join(out, "round_0", "influence", "suspects_top3.jsonl")
  top3 = [json.loads(l) for l in open(path)]
  top5 = [json.loads(l) for l in open(os.path.join(out, "round_0", "influence",
                                                   "suspects_top5.jsonl"))]
  assert [r["example_id"] for r in top3] == [r["example_id"] for r in top5]
  for a, b in zip(top3, top5):
    assert a["label"] == b["label"] and a["predicted"] == b["predicted"]
    for kind in ("proponents", "opponents", "opposed_validation"):
      assert len(a[kind]) == 3
      np.testing.assert_allclose([i["score"] for i in a[kind]],
                                 [i["score"] for i in b[kind][:3]], rtol=1e-4, atol=1e-9)


def test_going_on_without_decisions_applies_the_strategy(run_dir):
  """A paused round nobody decided: rerunning with --review must not pause it again once
  its review is closed; the strategy's own action is applied, as without review."""
  from gbair_jax.recovery import loop
  config.parse_gin([_gin_file_of(run_dir)])
  assert loop.run(run_dir, review=True, progress=False)["paused_for_review"] == 0
  assert ledger_text(run_dir) == ""
  decisions_lib.close_review(run_dir, 0)  # e.g. a run without --review started, then killed
  result = loop.run(run_dir, review=True, progress=False)
  assert result["paused_for_review"] == 1
  entries = ledger_lib.read_ledger(ledger_lib.ledger_path(run_dir))
  assert len(entries) == NUM_SUSPECTS and {e.strategy for e in entries} == {"tracin_opponents"}
  proposed = proposals_of(run_dir)["suspects"]
  assert [e.example_id for e in entries] == [s["example_id"] for s in proposed]
