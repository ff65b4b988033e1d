"""The review server: one static page and a small JSON API over a paused round.

  GET  /                the page, with the POST token, a CSP nonce, and the round and its
                        decisions as JSON in a <script type="application/json"> (in which
                        '<', '>' and '&' are \\u escapes, so no text can close the element)
  GET  /api/review      the round: label names, suspects with their evidence, the
                        misclassified validation examples with theirs (built once)
  GET  /api/state       decisions so far, progress, whether decisions are closed
  POST /api/decisions   {"example_id": "<id as a string>", "decision": "accept" | "reject" |
                        "relabel" | "drop", "label": "<label name, for relabel>"}
                        with the header X-Review-Token: <token from the page>

Standard library only (http.server). Safety: binds 127.0.0.1 unless told otherwise;
requests whose Host is not the loopback address it serves are refused (DNS rebinding);
POSTs need the token and a JSON body of at most 64 KiB; every error is a 4xx with a JSON
message (a bug is a 500 with a generic message; its traceback goes to this console only);
every example id travels as a string; the page fills text with textContent only, under a
Content-Security-Policy that runs only its own nonce-tagged script.
"""
from __future__ import annotations

import glob
import hmac
import http.server
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import traceback
from typing import Any

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.errors import UserError
from gbair_jax.review import decisions as decisions_lib
from gbair_jax.review import proposals as proposals_lib

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_BODY = 64 * 1024
TOKEN_HEADER = "X-Review-Token"
_ROUND_DIR = re.compile(r"^round_(\d+)$")
_ID = re.compile(r"^[0-9]{1,20}$")


def find_round(output_dir: str, round_index: int | None) -> int:
  """The round to review: the one asked for, else the latest paused (proposals, no
  round.json), else the latest with proposals."""
  if not os.path.isdir(output_dir):
    raise UserError(f"--output_dir={output_dir}: no such directory")
  rounds = sorted(int(m.group(1)) for name in os.listdir(output_dir)
                  if (m := _ROUND_DIR.match(name)))
  with_proposals = [r for r in rounds
                    if os.path.exists(proposals_lib.proposals_path(_round_dir(output_dir, r)))]
  if round_index is not None:
    if round_index not in with_proposals:
      raise UserError(f"{_round_dir(output_dir, round_index)}: no {proposals_lib.FILE_NAME}; "
                      "a round is reviewed after `gbair run ... --review` paused it "
                      f"(rounds with proposals: {with_proposals or 'none'})")
    return round_index
  if not with_proposals:
    raise UserError(f"{output_dir}: no round waits for review; run `gbair run --gin_file=... "
                    f"--output_dir={output_dir} --review` first")
  paused = [r for r in with_proposals
            if not os.path.exists(os.path.join(_round_dir(output_dir, r), "round.json"))]
  return (paused or with_proposals)[-1]


def _round_dir(output_dir: str, r: int) -> str:
  return os.path.join(output_dir, f"round_{r}")


def _evidence_file(round_dir: str, queries: str) -> str | None:
  """The influence file of `queries` with the largest k, if any."""
  found = []
  for path in glob.glob(os.path.join(round_dir, "influence", f"{queries}_top*.jsonl")):
    k = os.path.basename(path)[len(queries) + 4:-len(".jsonl")]
    if k.isdigit():
      found.append((int(k), path))
  return max(found)[1] if found else None


def _read_jsonl(path: str | None) -> list[dict]:
  if path is None:
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _item(record: dict) -> dict:
  """A shown example: only these fields ever reach the page (never ground truth)."""
  return {"example_id": str(int(record["example_id"])), "text": str(record["text"]),
          "label": str(record["label"]), "score": float(record["score"])}


def _items(records: list[dict], sign: int) -> list[dict]:
  """Proponents (sign > 0) keep positive scores, opponents (sign < 0) negative ones."""
  return [_item(r) for r in records if float(r["score"]) * sign > 0]


class ReviewApp:
  """Everything the server answers, independent of the HTTP plumbing."""

  def __init__(self, output_dir: str, round_index: int | None = None):
    self.output_dir = output_dir
    self.round = find_round(output_dir, round_index)
    self.round_dir = _round_dir(output_dir, self.round)
    self.token = secrets.token_urlsafe(32)
    self.allowed_hosts: set[str] | None = None  # set by make_server() once the port is known
    proposals = proposals_lib.read_proposals(self.round_dir)
    self.label_names = [str(n) for n in proposals["label_names"]]
    self.action = proposals.get("action", "relabel")
    self.resume_command = proposals.get("resume_command")
    self.suspects: dict[int, dict] = {}
    for s in proposals["suspects"]:
      self.suspects[int(s["example_id"])] = {
          "example_id": int(s["example_id"]), "label": self.label_names.index(s["label"]),
          "proposed": None if s["proposed"] is None else self.label_names.index(s["proposed"]),
          "score": float(s["score"])}
    suspect_file = _evidence_file(self.round_dir, "suspects")
    misclassified_file = _evidence_file(self.round_dir, "misclassified")
    evidence = {int(r["example_id"]): r for r in _read_jsonl(suspect_file)}
    shown = []
    for s in proposals["suspects"]:
      record = evidence.get(int(s["example_id"]), {})
      shown.append({
          "example_id": str(int(s["example_id"])), "rank": int(s["rank"]), "text": str(s["text"]),
          "label": str(s["label"]), "predicted": str(s["predicted"]),
          "proposed": None if s["proposed"] is None else str(s["proposed"]),
          "probabilities": [float(p) for p in s["probabilities"]], "score": float(s["score"]),
          "evidence": {"opposed_validation": _items(record.get("opposed_validation", []), -1),
                       "proponents": _items(record.get("proponents", []), +1),
                       "opponents": _items(record.get("opponents", []), -1)}})
    misclassified = [{
        "example_id": str(int(r["example_id"])), "text": str(r["text"]), "label": str(r["label"]),
        "predicted": str(r["predicted"]), "opponents": _items(r.get("opponents", []), -1),
        "proponents": _items(r.get("proponents", []), +1)}
        for r in _read_jsonl(misclassified_file)]
    hint = (f"gbair influence --output_dir={output_dir} --round={self.round} --queries=suspects"
            if suspect_file is None else None)
    self.review_json = json.dumps({
        "round": self.round, "strategy": proposals.get("strategy"), "action": self.action,
        "label_names": self.label_names, "resume_command": self.resume_command,
        "output_dir": output_dir, "suspects": shown, "misclassified": misclassified,
        "num_misclassified_validation": proposals.get("num_misclassified_validation"),
        "evidence_missing": hint}).encode("utf-8")
    self.review_html_json = _html_safe_json(self.review_json.decode("utf-8"))
    with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
      self.page = f.read()

  # --- state -------------------------------------------------------------------------
  def closed(self) -> str | None:
    """Why decisions are closed, or None."""
    return decisions_lib.closed_reason(self.output_dir, self.round)

  def _shown_state(self, state: dict) -> dict:
    label = state["label"]
    return {"decision": state["decision"],
            "label": None if label is None else self.label_names[int(label)],
            "lines": state["lines"]}

  def state(self) -> dict:
    entries = ledger_lib.read_ledger(ledger_lib.ledger_path(self.output_dir))
    decided = decisions_lib.round_decisions(entries, self.round)
    shown = {str(i): self._shown_state(s) for i, s in decided.items() if i in self.suspects}
    closed = self.closed()
    if closed is None and decisions_lib.automatic_entries(entries, self.round):
      closed = f"round {self.round} was applied by the automatic strategy: decisions are closed"
    return {"decisions": shown, "progress": self._progress(shown), "closed": closed}

  def _progress(self, shown: dict) -> dict:
    counts = {kind: 0 for kind in decisions_lib.KINDS}
    for s in shown.values():
      counts[s["decision"]] += 1
    return {"reviewed": len(shown), "total": len(self.suspects), "counts": counts}

  def decide(self, body: Any) -> dict:
    if not isinstance(body, dict):
      raise decisions_lib.DecisionError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - {"example_id", "decision", "label"})
    if unknown:
      raise decisions_lib.DecisionError(400, f"unknown field {unknown[0]!r}")
    example_id = body.get("example_id")
    if not isinstance(example_id, str) or not _ID.match(example_id):
      raise decisions_lib.DecisionError(
          400, "example_id must be a string of digits (64-bit ids lose precision as "
          "JavaScript numbers)")
    suspect = self.suspects.get(int(example_id))
    if suspect is None:
      raise decisions_lib.DecisionError(404, f"example {example_id} is not a suspect of "
                                        f"round {self.round}")
    kind = body.get("decision")
    if not isinstance(kind, str):
      raise decisions_lib.DecisionError(400, "decision must be a string")
    label = body.get("label")
    label_id = None
    if kind == "relabel":
      if not isinstance(label, str) or label not in self.label_names:
        raise decisions_lib.DecisionError(
            400, f"relabel needs label, one of {', '.join(self.label_names)}")
      label_id = self.label_names.index(label)
    elif label is not None:
      raise decisions_lib.DecisionError(400, f"label is only for relabel, not {kind!r}")
    state = decisions_lib.decide(self.output_dir, self.round, suspect, kind, label_id,
                                 len(self.label_names), closed_check=self.closed)
    return {"example_id": example_id, "state": self._shown_state(state)}

  # --- HTTP ----------------------------------------------------------------------------
  def handle(self, method: str, path: str, headers, body: bytes | None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; never raises."""
    try:
      return self._route(method, path, headers, body)
    except decisions_lib.DecisionError as e:
      return _json(e.status, {"error": str(e)})
    except UserError as e:  # e.g. a ledger that no longer parses
      return _json(409, {"error": str(e)})
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc(file=sys.stderr)
      return _json(500, {"error": "internal error (the server's console has the details)"})

  def _route(self, method, path, headers, body):
    host = headers.get("Host")
    if self.allowed_hosts is not None and host not in self.allowed_hosts:
      return _json(421, {"error": f"unexpected Host header {host!r}"})
    path = path.split("?", 1)[0]
    if method in ("GET", "HEAD"):
      if path in ("/", "/index.html"):
        nonce = secrets.token_urlsafe(16)
        state = _html_safe_json(json.dumps(self.state()))
        data = '{"review": ' + self.review_html_json + ', "state": ' + state + '}'
        page = (self.page.replace("__TOKEN__", self.token).replace("__NONCE__", nonce)
                .replace("__DATA__", data))
        return 200, {"Content-Type": "text/html; charset=utf-8",
                     "Content-Security-Policy": (
                         f"default-src 'none'; script-src 'nonce-{nonce}'; "
                         f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; "
                         "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")}, \
            page.encode("utf-8")
      if path == "/api/review":
        return 200, {"Content-Type": "application/json"}, self.review_json
      if path == "/api/state":
        return _json(200, self.state())
      if path == "/favicon.ico":
        return 204, {}, b""
      return _json(404, {"error": f"no such page: {path}"})
    if method == "POST":
      if path != "/api/decisions":
        return _json(404, {"error": f"no such endpoint: {path}"})
      token = headers.get(TOKEN_HEADER) or ""
      if not hmac.compare_digest(token.encode("utf-8", "replace"), self.token.encode()):
        return _json(403, {"error": f"missing or wrong {TOKEN_HEADER} (reload the page)"})
      content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
      if content_type != "application/json":
        return _json(415, {"error": "Content-Type must be application/json"})
      try:
        decoded = json.loads((body or b"").decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return _json(400, {"error": f"the body is not valid JSON ({e})"})
      result = self.decide(decoded)
      result["progress"] = self.state()["progress"]
      return _json(200, result)
    return _json(405, {"error": f"method {method} is not allowed"})


def _html_safe_json(text: str) -> str:
  """JSON that can sit inside <script type="application/json">: no '<', '>' or '&' (so
  no '</script>' or '<!--' in any text), each written as its \\u escape, which JSON.parse
  reads back as the same character."""
  return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json(status: int, obj) -> tuple[int, dict, bytes]:
  return status, {"Content-Type": "application/json"}, json.dumps(obj).encode("utf-8")


def _handler(app: ReviewApp, quiet: bool):

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
      return "gbair-review"

    def _respond(self, status, headers, body):
      self.send_response(status)
      for key, value in headers.items():
        self.send_header(key, value)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.send_header("X-Content-Type-Options", "nosniff")
      self.send_header("X-Frame-Options", "DENY")
      self.send_header("Referrer-Policy", "no-referrer")
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _body(self):
      if self.command != "POST":
        return None, None
      if self.headers.get("Transfer-Encoding"):
        return None, _json(411, {"error": "send a Content-Length, not a chunked body"})
      length = self.headers.get("Content-Length")
      if length is None or not length.isdigit():
        return None, _json(411, {"error": "a POST needs a Content-Length"})
      if int(length) > MAX_BODY:
        self.close_connection = True
        return None, _json(413, {"error": f"the body is over {MAX_BODY} bytes"})
      return self.rfile.read(int(length)), None

    def _serve(self):
      body, refusal = self._body()
      status, headers, payload = refusal or app.handle(self.command, self.path, self.headers,
                                                      body)
      self._respond(status, headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def do_HEAD(self):
      self._serve()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      if not quiet:
        super().log_message(format, *args)

  return Handler


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def make_server(app: ReviewApp, host: str = "127.0.0.1", port: int = 0,
                quiet: bool = True) -> http.server.ThreadingHTTPServer:
  """Binds (port 0 = any free port) and sets the Host names the app accepts."""
  server_class = _Server
  if ":" in host:
    server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
  try:
    server = server_class((host, port), _handler(app, quiet))
  except OSError as e:
    raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port")
  bound = server.server_address[1]
  if is_loopback(host):
    names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
    app.allowed_hosts = {f"{name}:{bound}" for name in names}
  else:
    app.allowed_hosts = None  # explicitly exposed: the machine's names are not known here
  return server


def start_in_thread(app: ReviewApp, host: str = "127.0.0.1", port: int = 0):
  """(server, url) with the server answering on a daemon thread (tests, notebooks)."""
  server = make_server(app, host, port)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server, url_of(server, host)


def url_of(server, host: str) -> str:
  port = server.server_address[1]
  shown = f"[{host}]" if ":" in host else host
  if host in ("0.0.0.0", "::"):
    shown = "127.0.0.1"
  return f"http://{shown}:{port}/"
