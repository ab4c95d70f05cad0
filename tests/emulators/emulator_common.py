"""Scaffolding shared by the target emulators in this folder (stdlib only, python3.11).

Each emulator (pingone.py, connect.py, forgerock.py) is run as a script, so its own folder is on
``sys.path`` and ``import emulator_common`` finds this sibling module.  What lives here is what the
three have in common; routes, error bodies, auth and paging quirks stay in each emulator.

* ``run`` / ``serve``: binds 127.0.0.1 (``--port``, 0 = any free port) with a ``ThreadingHTTPServer``, prints
  exactly one line ``LISTENING http://127.0.0.1:PORT`` (flushed) and serves until killed.
* ``argument_parser`` / ``finish_args``: the ``--port`` and ``--verbose`` options every emulator has.
* ``Response`` and ``EmulatorHandler``: an HTTP/1.1 handler that reads (possibly chunked) bodies,
  answers with a ``Response`` and sends the admin endpoints (``/__admin/...``) and the API requests
  to the emulator's ``handle_admin`` / ``handle_api`` under the state lock.
* ``admin_dispatch``: the ``/__admin/state``, ``/__admin/faults`` and ``/__admin/reset`` plumbing
  (plus the emulator's own admin routes) with its ``{"error": ...}`` bodies.
* ``Faults`` / ``RequestFaults``: the injected failures set by ``POST /__admin/faults``.
* ``answer``, ``logged_body``, ``q1``: request-handling helpers.
"""

import argparse
import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ADMIN_PREFIX = "/__admin/"


# --------------------------------------------------------------------------------------------
# Process: arguments and server start

def argument_parser(description):
    """An ArgumentParser with ``--port``; finish with ``finish_args`` (which adds ``--verbose``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = pick a free port)")
    return ap


def finish_args(ap, argv=None):
    ap.add_argument("--verbose", action="store_true", help="log requests to stderr")
    return ap.parse_args(argv)


def run(parse_args, handler_class, state_class, argv=None):
    """An emulator's main: ``cfg = parse_args(argv)`` (with ``port`` and ``verbose``), then
    ``serve(handler_class, state_class(cfg), ...)``; a ``state.on_listen(base_url)`` method is
    called once the port is bound."""
    cfg = parse_args(argv)
    state = state_class(cfg)
    serve(handler_class, state, cfg.port, cfg.verbose, getattr(state, "on_listen", None))


def serve(handler_class, state, port, verbose=False, on_listen=None):
    """Serves ``handler_class`` on 127.0.0.1:``port`` with ``server.state = state`` until killed.

    ``on_listen(base_url)`` runs once the port is bound, before the LISTENING line is printed."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_class)
    server.daemon_threads = True
    server.state = state
    server.verbose = verbose
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    if on_listen is not None:
        on_listen(base_url)
    print(f"LISTENING {base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# --------------------------------------------------------------------------------------------
# Requests and responses

class Response:
    """An answer: a JSON ``body`` (None: empty) or ``raw`` bytes/str, with extra ``headers``.

    ``content_type`` None means the handler's ``content_type``; 204 never has a body."""

    def __init__(self, status, body=None, headers=None, raw=None, content_type=None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.raw = raw
        self.content_type = content_type

    def has_content(self):
        return self.body is not None or self.raw is not None

    def encode(self):
        if self.status == 204:
            return b""
        if self.raw is not None:
            return self.raw if isinstance(self.raw, bytes) else self.raw.encode()
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


class BodyTooLarge(Exception):
    """The request body is longer than the limit given to ``EmulatorHandler.read_body``."""


def q1(query, name):
    """The first value of query parameter ``name`` (parse_qs dict), or None."""
    vals = query.get(name)
    return vals[0] if vals else None


def logged_body(body):
    """A request body as the request log keeps it: parsed JSON, else text, None when empty."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def answer(call, errors, internal_error):
    """``call()``; an exception of ``errors`` answers ``e.response()``, any other one is printed
    to stderr and answers ``internal_error(e)`` (an emulator bug must still answer)."""
    try:
        return call()
    except errors as e:
        return e.response()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return internal_error(e)


class EmulatorHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler of one emulator; the server carries ``state`` (with ``lock``) and
    ``verbose``.  Subclasses define ``handle_admin(method, path, body)`` and
    ``handle_api(method, split, query, body)``, both returning a ``Response`` (called with the
    state lock held), or override ``handle_any``."""

    protocol_version = "HTTP/1.1"
    content_type = "application/json"   # of Responses that do not name theirs

    @property
    def state(self):
        return self.server.state

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self.handle_any(self.command)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def read_body(self, limit=None):
        """The request body (Content-Length or chunked).  Over ``limit`` bytes: the body is read
        and dropped (so the client can read the answer) and BodyTooLarge is raised."""
        chunks, total, too_large = [], 0, False
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                total += size
                if limit is not None and total > limit:
                    too_large = True
                elif not too_large:
                    chunks.append(data)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if limit is not None and length > limit:
                too_large = True
                remaining = length
                while remaining > 0:
                    got = self.rfile.read(min(65536, remaining))
                    if not got:
                        break
                    remaining -= len(got)
            elif length > 0:
                chunks.append(self.rfile.read(length))
        if too_large:
            raise BodyTooLarge()
        return b"".join(chunks)

    def response_content_type(self, resp):
        """The Content-Type header of a response that has one (None: no header)."""
        return resp.content_type or self.content_type

    def common_headers(self):
        """Headers sent with every response (e.g. a correlation id)."""
        return {}

    def send(self, resp):
        payload = resp.encode()
        self.send_response(resp.status)
        headers = {}
        if resp.status != 204:
            ct = self.response_content_type(resp)
            if ct:
                headers["Content-Type"] = ct
            headers["Content-Length"] = str(len(payload))
        headers.update(self.common_headers())
        headers.update(resp.headers)
        if self.close_connection:
            headers["Connection"] = "close"
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)
        self.status_sent = resp.status

    def handle_any(self, method):
        state = self.state
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        body = self.read_body()
        with state.lock:
            if split.path.startswith(ADMIN_PREFIX):
                resp = self.handle_admin(method, split.path, body)
            else:
                resp = self.handle_api(method, split, query, body)
        self.send(resp)


# --------------------------------------------------------------------------------------------
# Admin endpoints

def admin_dispatch(state, method, path, body, routes=None, errors=(), error_body=None):
    """Answers ``/__admin/...``: GET state (``state.dump()``), POST faults (``state.faults``),
    POST reset (``state.reset()``) and ``routes`` ({(method, path): fn(data) -> JSON}).

    The JSON body is parsed first (400 ``{"error": "admin body is not JSON"}``); a ValueError,
    KeyError, TypeError or one of ``errors`` answers 400 ``error_body(e)`` (default
    ``{"error": str(e)}``); an unknown endpoint 404."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return Response(400, {"error": "admin body is not JSON"})

    def set_faults(spec):
        state.faults.set(spec or {})
        return state.faults.dump()

    def reset(_):
        state.reset()
        return {"ok": True}

    table = {("GET", "/__admin/state"): lambda _: state.dump(),
             ("POST", "/__admin/faults"): set_faults,
             ("POST", "/__admin/reset"): reset}
    table.update(routes or {})
    fn = table.get((method, path))
    if fn is None:
        return Response(404, {"error": f"no admin endpoint {method} {path}"})
    try:
        return Response(200, fn(data))
    except (ValueError, KeyError, TypeError, *errors) as e:
        return Response(400, error_body(e) if error_body else {"error": str(e)})


def as_list(body):
    """Admin bodies take one object or a list of them."""
    return body if isinstance(body, list) else [body]


# --------------------------------------------------------------------------------------------
# Injected faults (POST /__admin/faults)

class Faults:
    """The fault settings as posted (every POST replaces them; ``{}`` clears them).  Counters
    such as ``rate_limit_next`` / ``fail_next`` are consumed with ``take``."""

    def __init__(self):
        self.set({})

    def set(self, spec):
        self.spec = dict(spec)

    def get(self, key, default=None):
        return self.spec.get(key, default)

    def take(self, key):
        """True (and one fewer left) when counter ``key`` is positive."""
        n = int(self.spec.get(key, 0) or 0)
        if n > 0:
            self.spec[key] = n - 1
            return True
        return False

    def dump(self):
        return self.spec


class RequestFaults(Faults):
    """Failures for the next N non-admin requests (Connect, ForgeRock).

    POST /__admin/faults body (all keys optional; a POST replaces the previous settings):
      {"rate_limit_next": 3, "retry_after": 1,   # 429 + Retry-After (null: no header)
       "retry_after_format": "seconds"|"http-date",
       "fail_next": 2, "fail_status": 500,       # N failures with that status
       "fail_body": "json"|"text"|"empty"|"echo", # json = the target's error body; text/empty = proxy-like;
                                                 # echo = a JSON body echoing the request's headers (a leaky target)
       "path_prefix": "/__api__/v1/groups",      # only requests whose path starts with this
       "method": "PUT"}                          # only this method
    Non-matching requests do not consume the counters.  Rate limiting is checked first.
    """

    def set(self, spec):
        super().set({
            "rate_limit_next": int(spec.get("rate_limit_next", 0) or 0),
            "retry_after": spec.get("retry_after", 1),
            "retry_after_format": spec.get("retry_after_format", "seconds"),
            "fail_next": int(spec.get("fail_next", 0) or 0),
            "fail_status": int(spec.get("fail_status", 500) or 500),
            "fail_body": spec.get("fail_body", "json"),
            "path_prefix": spec.get("path_prefix"),
            "method": spec.get("method"),
        })

    def applies(self, method, path):
        prefix, only = self.spec["path_prefix"], self.spec["method"]
        return not (prefix and not path.startswith(prefix)) and not (only and only.upper() != method)

    def check(self, method, path, rate_limited, failed, headers=None):
        """The injected answer for this request, or None.  ``rate_limited()`` builds the 429
        (Retry-After is added here), ``failed(status)`` a JSON failure; ``headers`` (the
        request's) are what an ``echo`` failure repeats."""
        if not self.applies(method, path):
            return None
        if self.take("rate_limit_next"):
            resp = rate_limited()
            if self.spec["retry_after"] is not None:
                seconds = self.spec["retry_after"]
                if self.spec["retry_after_format"] == "http-date":
                    from email.utils import formatdate
                    import time
                    resp.headers["Retry-After"] = formatdate(time.time() + float(seconds), usegmt=True)
                else:
                    resp.headers["Retry-After"] = str(seconds)
            return resp
        if self.take("fail_next"):
            status, kind = self.spec["fail_status"], self.spec["fail_body"]
            if kind == "text":
                return Response(status, raw="<html><body>upstream error</body></html>",
                                content_type="text/html")
            if kind == "echo":
                echoed = {k: v for k, v in (headers or {}).items()}
                auth = echoed.get("Authorization", "")
                return Response(status, {
                    "code": 1,
                    "error": f"rejected credential Authorization: {auth} for {method} {path}",
                    "message": f"you sent {auth}",
                    "headers": echoed,
                })
            if kind == "empty":
                return Response(status, raw=b"", content_type="text/plain")
            return failed(status)
        return None
