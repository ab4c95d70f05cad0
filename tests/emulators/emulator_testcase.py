"""Shared base of the emulator self-tests (test_*_emulator.py; stdlib unittest).

``EmulatorProcess`` runs ``<SCRIPT> --port 0 ARGS...`` as a subprocess, checks its
``LISTENING http://127.0.0.1:PORT`` line and talks HTTP to it; ``EmulatorTestCase`` starts one per
test class (``EMULATOR`` with ``ARGS``) and resets it (``POST /__admin/reset``) before each test.
"""

import http.client
import json
import os
import re
import subprocess
import sys
import unittest
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))


class EmulatorProcess:
    SCRIPT = None   # file name in this folder, e.g. "connect.py"

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, self.SCRIPT), "--port", "0",
                                      *args], stdout=subprocess.PIPE, text=True)
        self.line = self.proc.stdout.readline()
        m = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:(\d+))\n", self.line)
        if not m:
            self.close()
            raise RuntimeError(f"bad first line {self.line!r}")
        self.base = m.group(1)
        self.port = int(m.group(2))

    def close(self):
        self.proc.terminate()
        self.proc.wait(5)
        self.proc.stdout.close()

    def req(self, method, path, body=None, headers=None, raw=None):
        """One request; ``body`` is sent as JSON (Content-Type application/json unless given),
        ``raw`` as is; ``path`` may be an absolute URL of this emulator.
        Returns (status, {header: value}, parsed JSON body | text | None)."""
        if path.startswith("http"):
            u = urlsplit(path)
            path = u.path + (f"?{u.query}" if u.query else "")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read()
        conn.close()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode()
        return resp.status, dict(resp.getheaders()), parsed

    def admin(self, method, path, body=None):
        """``/__admin/<path>``; asserts a 2xx answer and returns its body."""
        st, _, data = self.req(method, "/__admin/" + path, body)
        assert 200 <= st < 300, (st, data)
        return data

    def state(self):
        return self.admin("GET", "state")


class EmulatorTestCase(unittest.TestCase):
    EMULATOR = EmulatorProcess   # a subclass naming its SCRIPT
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.emu = cls.EMULATOR(*cls.ARGS)

    @classmethod
    def tearDownClass(cls):
        cls.emu.close()

    def setUp(self):
        self.emu.admin("POST", "reset")
