"""Self-tests of fault_proxy.py: each action against a small recording upstream (stdlib unittest)."""

import http.client
import json
import socket
import threading
import time
import unittest
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from emulator_testcase import EmulatorProcess


class Upstream(BaseHTTPRequestHandler):
    """Answers 201 {"seen": N} to everything and records each request as (method, path)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append((self.command, self.path))
            body = json.dumps({"seen": len(self.server.seen)}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle


class Proxy(EmulatorProcess):
    SCRIPT = "fault_proxy.py"


class FaultProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        cls.upstream.daemon_threads = True
        cls.upstream.lock = threading.Lock()
        cls.upstream.seen = []
        threading.Thread(target=cls.upstream.serve_forever, daemon=True).start()
        cls.proxy = Proxy("--target", f"http://127.0.0.1:{cls.upstream.server_address[1]}/api")

    @classmethod
    def tearDownClass(cls):
        cls.proxy.close()
        cls.upstream.shutdown()
        cls.upstream.server_close()

    def setUp(self):
        self.assertEqual(self.proxy.req("DELETE", "/__proxy/rules")[0], 200)
        with self.upstream.lock:
            self.upstream.seen.clear()

    def rules(self, *rules):
        status, _, shown = self.proxy.req("POST", "/__proxy/rules", list(rules))
        self.assertEqual(status, 200, shown)

    def seen(self):
        with self.upstream.lock:
            return list(self.upstream.seen)

    def raw(self, method, path, timeout=10):
        """One request on a fresh connection: (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=timeout)
        try:
            conn.request(method, path, body=b"{}" if method == "POST" else None)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def test_forwards_with_the_prefix_and_logs(self):
        status, _, body = self.proxy.req("POST", "/Groups?x=1", {"a": 1})
        self.assertEqual((status, body), (201, {"seen": 1}))
        self.assertEqual(self.seen(), [("POST", "/api/Groups?x=1")])
        _, _, log = self.proxy.req("GET", "/__proxy/log")
        self.assertEqual(log[-1]["forwarded"], True)
        self.assertEqual(log[-1]["status"], 201)

    def test_status_with_retry_after_in_seconds_and_a_raw_body_for_times_matches(self):
        self.rules({"method": "POST", "path": "/Groups$", "action": "status", "status": 429,
                    "retry_after": 2, "raw_body": "<html>busy</html>", "times": 2})
        for _ in range(2):
            status, headers, body = self.raw("POST", "/Groups")
            self.assertEqual((status, headers["Retry-After"], body), (429, "2", b"<html>busy</html>"))
            self.assertEqual(headers["Content-Type"], "text/html")
        self.assertEqual(self.seen(), [])
        self.assertEqual(self.raw("POST", "/Groups")[0], 201)
        self.assertEqual(self.raw("GET", "/Groups")[0], 201, "another method is not matched")

    def test_retry_after_as_an_http_date(self):
        self.rules({"action": "status", "status": 503, "retry_after": 30,
                    "retry_after_format": "http-date"})
        status, headers, _ = self.raw("GET", "/x")
        self.assertEqual(status, 503)
        ahead = parsedate_to_datetime(headers["Retry-After"]).timestamp() - time.time()
        self.assertTrue(25 < ahead <= 31, headers["Retry-After"])

    def test_forward_status_commits_then_answers_the_fault(self):
        self.rules({"action": "forward_status", "status": 201, "raw_body": "", "content_type": "text/plain"})
        status, _, body = self.raw("POST", "/Groups")
        self.assertEqual((status, body), (201, b""))
        self.assertEqual(self.seen(), [("POST", "/api/Groups")])

    def test_reset_before_and_after_forwarding(self):
        self.rules({"action": "reset", "forward": False, "times": 1})
        with self.assertRaises((ConnectionError, http.client.HTTPException, socket.error)):
            self.raw("POST", "/Groups")
        self.assertEqual(self.seen(), [], "a reset before forwarding never reaches the target")
        self.rules({"action": "reset", "times": 1})
        with self.assertRaises((ConnectionError, http.client.HTTPException, socket.error)):
            self.raw("POST", "/Groups")
        self.assertEqual(self.seen(), [("POST", "/api/Groups")])

    def test_a_held_answer_comes_after_the_target_committed(self):
        self.rules({"action": "delay", "seconds": 3, "after": True, "times": 1})
        with self.assertRaises(socket.timeout):
            self.raw("POST", "/Groups", timeout=1)
        self.assertEqual(self.seen(), [("POST", "/api/Groups")], "forwarded before the answer was held")
        self.assertEqual(self.raw("POST", "/Groups")[0], 201)


if __name__ == "__main__":
    unittest.main()
