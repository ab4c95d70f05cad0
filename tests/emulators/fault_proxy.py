"""A fault-injecting HTTP proxy for the tests (standard library only, python3.11).

Run as ``python fault_proxy.py --port 0 --target http://127.0.0.1:PORT[/prefix]``; it prints
``LISTENING http://127.0.0.1:PORT`` once bound and forwards every request to the target (same
path, query, headers and body), except where a rule says otherwise.

Admin endpoints (never forwarded):

* ``POST /__proxy/rules`` with a JSON list of rules (replaces the current ones), ``GET`` reads
  them, ``DELETE`` clears them.
* ``GET /__proxy/log``: every proxied request, oldest first:
  ``{"method", "path", "query", "rule", "rules", "forwarded", "upstream_status", "status"}``
  (``rule``: the index of the rule that decided the answer; ``rules``: every rule that matched).

A rule matches a request by ``method`` (default any) and ``path`` (a regular expression searched
in the path, default any), for its first ``times`` matches (default: every time). What it does:

* ``{"action": "status", "status": 500}``: answers that status without forwarding;
* ``{"action": "forward_status", "status": 503}``: forwards (the target commits it), then answers
  that status instead of the target's answer;
* both take ``"retry_after": 1`` (a ``Retry-After`` header; ``"retry_after_format": "http-date"``
  sends it as an HTTP date that many seconds ahead instead of seconds), and ``"raw_body": "<html>"``
  with ``"content_type": "text/html"`` (a non-JSON body; default: a small JSON detail, or
  ``"body"``, any JSON value);
* ``{"action": "reset"}``: forwards, then closes the connection without answering (TCP RST);
  ``"forward": false`` resets before forwarding (the target never sees the request);
* ``{"action": "strip_query"}``: forwards without the query string (a target ignoring filters);
* ``{"action": "set_query", "param": "_queryFilter", "value": "true"}``: forwards with that query
  parameter replaced (a target ignoring filters whose API requires one);
* ``{"action": "delay", "seconds": 2}``: waits, then forwards; with ``"after": true`` it forwards
  at once (the target commits it) and holds the answer that long (a slow answer).

Several rules may match one request; the first non-``strip_query``/``delay`` rule decides the
answer, ``strip_query``, ``set_query`` and ``delay`` rules apply in addition. A client that gave
up meanwhile (its timeout) only makes the late answer go nowhere.
"""

import argparse
import http.client
import json
import re
import socket
import struct
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}


class State:
    def __init__(self, target):
        parts = urlsplit(target)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.lock = threading.Lock()
        self.rules = []
        self.log = []

    def matching(self, method, path):
        """The rules this request triggers (their counters are consumed)."""
        found = []
        with self.lock:
            for index, rule in enumerate(self.rules):
                if rule.get("method") and rule["method"].upper() != method:
                    continue
                if rule.get("path") and not re.search(rule["path"], path):
                    continue
                times = rule.get("times")
                if times is not None:
                    if rule.get("_used", 0) >= times:
                        continue
                    rule["_used"] = rule.get("_used", 0) + 1
                found.append((index, rule))
        return found


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("proxy: " + (fmt % args) + "\n")

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status, body=b"", content_type="application/json", headers=()):
        try:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            # The client gave up (its timeout) before a held answer came: nothing to answer.
            self.close_connection = True

    def _injected(self, rule, status, detail):
        """Answers ``status`` as ``rule`` says: its Retry-After and body (see the module doc)."""
        headers = []
        if rule.get("retry_after") is not None:
            seconds = int(rule["retry_after"])
            if rule.get("retry_after_format") == "http-date":
                headers.append(("Retry-After", formatdate(time.time() + seconds, usegmt=True)))
            else:
                headers.append(("Retry-After", str(seconds)))
        if "raw_body" in rule:
            body = str(rule["raw_body"]).encode()
            content_type = rule.get("content_type", "text/html")
        else:
            body = json.dumps(rule.get("body") or {"detail": detail, "status": str(status)}).encode()
            content_type = rule.get("content_type", "application/json")
        return self._answer(status, body, content_type, headers)

    def _reset(self):
        """Closes the connection with a TCP RST (SO_LINGER 0) instead of answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _admin(self, method, path, body):
        state = self.server.state
        if path == "/__proxy/rules":
            if method == "POST":
                rules = json.loads(body or b"[]")
                if not isinstance(rules, list):
                    return self._answer(400, b'{"error":"a JSON list of rules"}')
                with state.lock:
                    state.rules = rules
            elif method == "DELETE":
                with state.lock:
                    state.rules = []
            with state.lock:
                shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in state.rules]
            return self._answer(200, json.dumps(shown).encode())
        if path == "/__proxy/log":
            if method == "DELETE":
                with state.lock:
                    state.log = []
            with state.lock:
                return self._answer(200, json.dumps(state.log).encode())
        return self._answer(404, b'{"error":"unknown admin path"}')

    def _handle(self):
        method = self.command
        split = urlsplit(self.path)
        path, query = split.path, split.query
        body = self._body()
        state = self.server.state
        if path.startswith("/__proxy/"):
            return self._admin(method, path, body)
        rules = state.matching(method, path)
        entry = {"method": method, "path": path, "query": query, "rule": None,
                 "rules": [index for index, _ in rules], "forwarded": False,
                 "upstream_status": None, "status": None}
        decisive = None
        hold = 0.0
        for index, rule in rules:
            action = rule.get("action")
            if action == "strip_query":
                query = ""
            elif action == "set_query":
                pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != rule["param"]]
                pairs.append((rule["param"], rule.get("value", "")))
                query = urlencode(pairs)
            elif action == "delay" and rule.get("after"):
                hold += float(rule.get("seconds", 1))
            elif action == "delay":
                time.sleep(float(rule.get("seconds", 1)))
            elif decisive is None:
                decisive = (index, rule)
        if decisive is not None:
            entry["rule"] = decisive[0]
        rule = decisive[1] if decisive else {}
        action = rule.get("action")
        if action == "status":
            entry["status"] = int(rule.get("status", 500))
            self._log(entry)
            return self._injected(rule, entry["status"], "injected by the fault proxy")
        if action == "reset" and rule.get("forward") is False:
            entry["status"] = "reset"
            self._log(entry)
            return self._reset()
        # forward
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        target_path = state.prefix + path + (("?" + query) if query else "")
        try:
            conn = http.client.HTTPConnection(state.host, state.port, timeout=60)
            conn.request(method, target_path, body=body or None, headers=headers)
            upstream = conn.getresponse()
            data = upstream.read()
            upstream_headers = upstream.getheaders()
            status = upstream.status
            conn.close()
        except OSError as e:
            entry["status"] = 502
            self._log(entry)
            return self._answer(502, json.dumps({"detail": f"proxy: {e}"}).encode())
        entry["forwarded"] = True
        entry["upstream_status"] = status
        if hold:
            time.sleep(hold)
        if action == "reset":
            entry["status"] = "reset"
            self._log(entry)
            return self._reset()
        if action == "forward_status":
            entry["status"] = int(rule.get("status", 503))
            self._log(entry)
            return self._injected(rule, entry["status"], "injected by the fault proxy after forwarding")
        entry["status"] = status
        self._log(entry)
        content_type = None
        headers = []
        for k, v in upstream_headers:
            if k.lower() == "content-type":
                content_type = v
            elif k.lower() not in HOP_BY_HOP:
                headers.append((k, v))
        return self._answer(status, data, content_type, headers)

    def _log(self, entry):
        with self.server.state.lock:
            self.server.state.log.append(entry)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def main(argv=None):
    ap = argparse.ArgumentParser(description="fault-injecting HTTP proxy for the tests")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--target", required=True, help="http://host:port[/prefix] to forward to")
    ap.add_argument("--rules", default="[]", help="initial rules (JSON list)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    state = State(args.target)
    state.rules = json.loads(args.rules)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = state
    server.verbose = args.verbose
    print(f"LISTENING http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
