#!/usr/bin/env python3
"""PingOne HTTP emulator for ldapsync tests (stdlib only, python >= 3.11).

Serves, on 127.0.0.1, both the PingOne auth host and the management API host:

  POST /{envId}/as/token                                              OAuth2 client_credentials
  POST /v1/environments/{env}/propagation/provisioningSyncs/{syncId}  external-group import
  GET|POST            /v1/environments/{env}/groups
  GET|PUT|DELETE      /v1/environments/{env}/groups/{gid}
  GET|POST            /v1/environments/{env}/groups/{gid}/memberOfGroups          (nesting)
  GET|DELETE          /v1/environments/{env}/groups/{gid}/memberOfGroups/{pid}
  GET                 /v1/environments/{env}/users[/{uid}]
  GET|POST            /v1/environments/{env}/users/{uid}/memberOfGroups
  GET|DELETE          /v1/environments/{env}/users/{uid}/memberOfGroups/{gid}
  GET  /__admin/state   POST /__admin/users   POST /__admin/faults   POST /__admin/reset   (no auth)

On start it prints exactly one line "LISTENING http://127.0.0.1:PORT" to stdout and nothing else
(request logging goes to stderr only with --verbose).

Behaviour taken from the spec (docs/pingone.md; section numbers in brackets refer to the original API notes):
  * Token endpoint path, client_secret_basic and client_secret_post, response
    {"access_token","token_type":"Bearer","expires_in"} (no scope, no refresh token) [2].
  * Error body {id, code, message, details[{code,target,message,innerError}]} [5.1] and the status->code
    table [5.2]: 400 INVALID_DATA/INVALID_REQUEST, 401 ACCESS_FAILED (detail INVALID_TOKEN),
    403 ACCESS_FAILED, 404 NOT_FOUND, 415 INVALID_REQUEST, 429 REQUEST_LIMITED (detail LIMIT_EXCEEDED,
    innerError.retryAfter, header Retry-After in integer seconds), 500 UNEXPECTED_ERROR.
    Every response carries a Correlation-Id header [1].
  * Import: exact vendor Content-Type else 415; body model groups[] / uniqueId / attributes / operation in
    {CREATED, UPDATED, DELETED} or absent / startToken / nextToken [3.2-3.4]; attribute values are
    string or [string], `member` is [string], `active` is boolean or "true"/"false" [3.4];
    unknown provisioningSyncID -> 404 NOT_FOUND [3.7]; success 200 [3.6].
  * Groups: POST 201, GET 200, PUT 200 full replace (readOnly fields ignored, population.id immutable),
    DELETE 204, unknown id 404 [4.1, 4.2]; name uniqueness per environment / per population, env groups
    and population groups may not share a name [4.4]; duplicate name -> 400 INVALID_DATA with detail
    UNIQUENESS_VIOLATION target "name" and innerError.existingId [4.5]; list with SCIM filter
    (eq, sw, and, or, parentheses, memberOfGroups[...]) on id/name/externalId/population.id, paging via
    limit (1..1000) and cursor in absolute _links.next.href, envelope _links/_embedded/count/size [4.3].
  * Membership: POST {"id"} -> 201 {id,name,type:"DIRECT",environment,_links}, DELETE 204, non-member 404,
    users?filter=memberOfGroups[id eq "..."] [4.1, 7.5]. Nesting: URL group = child, body group = parent
    (docs), cycles allowed, env-level group may not be nested inside a population group; external groups
    cannot be nested nor have memberships edited [3.3, 4.4].
  * Optional (not validated) headers X-Ping-External-* are ignored [1].

UNCONFIRMED assumptions (spec has no public source) and how to change them:
  * Import success response: --import-response json200 (default: 200 + "{}"), empty200, empty202, empty204.
  * Import batch limit: --max-batch-groups (default 1000) -> 400 INVALID_DATA / SIZE_LIMIT_EXCEEDED.
  * Body size limit: --max-body-bytes (default 1048576) -> 413 with a PingOne error body
    (code INVALID_REQUEST, detail SIZE_LIMIT_EXCEEDED), applies to every non-admin request.
  * Import attribute `name` required (string, non-empty): disable with --no-require-name-attribute.
  * Unknown keys in the import body / group entries are rejected (400): allow with --allow-unknown-import-fields.
  * startToken: accepted and recorded as sent; with --enforce-start-token a non-null startToken that differs
    from the stored last nextToken -> 400 INVALID_DATA (target startToken).
  * Token protocol: a "cycle" ends with the batch that carries nextToken; the token is stored per sync id.
    With --full-sync-deletes-unseen, a cycle that started without startToken marks every group of that
    sync id not seen during the cycle as deleted when the final batch arrives (default: off).
  * CREATED/UPDATED/absent operation = upsert with full attribute replacement; DELETED = mark deleted
    (also for unknown uniqueIds). Imported groups are materialised as Groups API objects with
    sourceType "GATEWAY", sourceId = syncId (disable with --no-materialize-external-groups); they take no
    part in name-uniqueness checks.
  * Duplicate name status: --uniqueness-status 400 (default) | 409 (409 body code "CONFLICT", same detail).
  * Name comparison (uniqueness and `name eq`) is case-insensitive; --case-sensitive-names to change.
  * Duplicate membership / nesting add: --duplicate-membership success (default, 201 idempotent) | 400
    (INVALID_DATA / UNIQUENESS_VIOLATION) | 409.
  * Membership add with an unknown group id in the body -> 404 NOT_FOUND; self-nesting -> 400.
  * Embedded key of membership/nesting lists: "groupMemberships". They list DIRECT and INDIRECT (through
    nesting) entries with `type`.
  * Unknown environment in an API path (valid token): --unknown-environment-status 403 (default) | 404.
    Unknown environment in the token path: 404 NOT_FOUND (PingOne body).
  * Token endpoint errors use RFC 6749 bodies: bad credentials 401 {"error":"invalid_client"} with
    WWW-Authenticate; missing grant_type / non-form body / two auth methods 400 invalid_request; other
    grant types 400 unsupported_grant_type. --token-auth-method any (default) | basic | post restricts the
    accepted client authentication method (the other one -> 401 invalid_client).
  * Tokens are JWT-shaped (RS256 header, fake signature); only the emulator's own token table is trusted.
  * Unsupported filter attribute/operator -> 400 INVALID_DATA, detail INVALID_FILTER (target "filter").
  * Unknown fields in Groups API bodies are ignored; wrong types -> 400 INVALID_DATA / INVALID_VALUE.
  * Groups API bodies must be application/json (else 415 INVALID_REQUEST).
  * Methods not allowed on a known path -> 405 with a PingOne body (code "METHOD_NOT_ALLOWED").
  * Page size: --page-size (default 100) caps `limit`; `limit` outside 1..1000 -> 400 OUT_OF_RANGE.

Faults (POST /__admin/faults; every POST REPLACES the whole fault set, `{}` clears it):
  rate_limit_next N   next N API (/v1/...) requests -> 429 REQUEST_LIMITED + Retry-After
  retry_after S       seconds for Retry-After (default 1); retry_after_format "seconds" | "http-date"
  fail_imports_after K  after K more successful import POSTs every further import POST -> fail_status
  fail_next N         next N API requests (after auth) -> fail_status
  fail_status         default 500 (UNEXPECTED_ERROR); 503 also sends Retry-After
  expire_tokens       true -> every token issued so far is invalid now (401 ACCESS_FAILED / INVALID_TOKEN)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlencode, urlsplit

from emulator_common import (BodyTooLarge, EmulatorHandler, Faults, Response, argument_parser, finish_args,
                             run)

IMPORT_CONTENT_TYPE = "application/vnd.pingidentity.propagation.provisioningsync.groupimport+json"
IMPORT_OPERATIONS = ("CREATED", "UPDATED", "DELETED")

MSG_400 = "The request could not be completed. One or more validation errors were in the request."
MSG_401 = "The request could not be completed. You do not have access to this resource."
MSG_403 = "The request could not be completed. You do not have access to this resource."
MSG_404 = "The request could not be completed. The requested resource was not found."
MSG_405 = "The request could not be completed. The HTTP method is not allowed for this resource."
MSG_413 = "The request could not be completed. The request body is too large."
MSG_415 = "The request could not be completed. The Content-Type of the request is not supported."
MSG_429 = "The request could not be completed. Too many requests were made."
MSG_500 = "An unexpected error occurred."

STATUS_CODES = {400: "INVALID_DATA", 401: "ACCESS_FAILED", 403: "ACCESS_FAILED", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 413: "INVALID_REQUEST", 415: "INVALID_REQUEST",
                429: "REQUEST_LIMITED", 500: "UNEXPECTED_ERROR", 502: "UNEXPECTED_ERROR",
                503: "UNEXPECTED_ERROR", 504: "UNEXPECTED_ERROR"}
STATUS_MESSAGES = {400: MSG_400, 401: MSG_401, 403: MSG_403, 404: MSG_404, 405: MSG_405, 413: MSG_413,
                   415: MSG_415, 429: MSG_429}

FAULT_KEYS = {"rate_limit_next", "retry_after", "retry_after_format", "fail_imports_after", "fail_next",
              "fail_status", "expire_tokens"}


def now_iso(delta_seconds: float = 0) -> str:
    t = datetime.now(timezone.utc) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def detail(code: str, message: str, target: str | None = None, inner: dict | None = None) -> dict:
    d = {"code": code, "message": message}
    if target is not None:
        d["target"] = target
    if inner:
        d["innerError"] = inner
    return d


class ApiError(Exception):
    """A PingOne management-API error: rendered as {id, code, message, details}."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None,
                 details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "UNEXPECTED_ERROR")
        self.message = message or STATUS_MESSAGES.get(status, MSG_500)
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict:
        b = {"id": str(uuid.uuid4()), "code": self.code, "message": self.message}
        if self.details:
            b["details"] = self.details
        return b


class OAuthError(Exception):
    """An RFC 6749 token-endpoint error: {"error", "error_description"}."""

    def __init__(self, status: int, error: str, description: str, headers: dict | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}


def invalid_data(*details: dict) -> ApiError:
    return ApiError(400, "INVALID_DATA", MSG_400, list(details))


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", MSG_404, [detail("NOT_FOUND", f"{what} not found")])


# --------------------------------------------------------------------------------------------------
# SCIM filter subset: attr eq|sw value, and, or, parentheses, memberOfGroups[ sub-filter ]
# --------------------------------------------------------------------------------------------------

TOKEN_RE = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<punct>[()\[\]])|(?P<word>[^\s()\[\]"]+))')
SUPPORTED_OPERATORS = ("eq", "sw")


def filter_error(message: str, **inner) -> ApiError:
    return invalid_data(detail("INVALID_FILTER", message, "filter", inner or None))


class FilterParser:
    """Compiles a filter into predicate(ctx) where ctx.get(attr) -> str|None and
    ctx.memberships() -> [{"id","type"}]. `attrs` maps lower-cased attribute name -> case_insensitive."""

    def __init__(self, text: str, attrs: dict[str, bool], allow_member_of: bool = True):
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                raise filter_error(f"Unable to parse filter at position {pos}")
            kind = m.lastgroup
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.attrs = attrs
        self.allow_member_of = allow_member_of

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        if t[0] is None:
            raise filter_error("Unexpected end of filter")
        self.i += 1
        return t

    def expect(self, value: str):
        kind, v = self.take()
        if v != value:
            raise filter_error(f"Expected '{value}' but found '{v}'")

    def parse(self):
        if not self.toks:
            raise filter_error("Empty filter")
        pred = self.parse_or()
        if self.i != len(self.toks):
            raise filter_error(f"Unexpected token '{self.peek()[1]}'")
        return pred

    def _is_word(self, word: str) -> bool:
        kind, v = self.peek()
        return kind == "word" and v.lower() == word

    def parse_or(self):
        preds = [self.parse_and()]
        while self._is_word("or"):
            self.take()
            preds.append(self.parse_and())
        return preds[0] if len(preds) == 1 else (lambda ctx: any(p(ctx) for p in preds))

    def parse_and(self):
        preds = [self.parse_factor()]
        while self._is_word("and"):
            self.take()
            preds.append(self.parse_factor())
        return preds[0] if len(preds) == 1 else (lambda ctx: all(p(ctx) for p in preds))

    def parse_factor(self):
        kind, v = self.peek()
        if kind == "punct" and v == "(":
            self.take()
            pred = self.parse_or()
            self.expect(")")
            return pred
        if kind != "word":
            raise filter_error(f"Expected an attribute name but found '{v}'")
        self.take()
        attr = v
        if self.peek() == ("punct", "["):
            if attr.lower() != "memberofgroups" or not self.allow_member_of:
                raise filter_error(f"Attribute '{attr}' does not support a sub-filter",
                                   supportedAttributes=sorted(self.attrs))
            self.take()
            sub = FilterParser.__new__(FilterParser)
            sub.toks, sub.i = self.toks, self.i
            sub.attrs, sub.allow_member_of = {"id": False, "type": False}, False
            sub_pred = sub.parse_or()
            self.i = sub.i
            self.expect("]")
            return lambda ctx: any(sub_pred(MembershipCtx(m)) for m in ctx.memberships())
        if attr.lower() not in self.attrs:
            raise filter_error(f"Attribute '{attr}' is not supported in a filter for this resource",
                               supportedAttributes=sorted(self.attrs))
        okind, op = self.take()
        op = op.lower()
        if okind != "word" or op not in SUPPORTED_OPERATORS:
            raise filter_error(f"Operator '{op}' is not supported", supportedOperators=list(SUPPORTED_OPERATORS))
        vkind, raw = self.take()
        if vkind == "str":
            try:
                value = json.loads(raw)
            except ValueError:
                raise filter_error(f"Invalid string literal {raw}")
        elif vkind == "word":
            value = raw
        else:
            raise filter_error(f"Expected a value but found '{raw}'")
        key = attr.lower()
        ci = self.attrs[key]

        def pred(ctx, key=key, op=op, value=value, ci=ci):
            actual = ctx.get(key)
            if actual is None:
                return False
            a, b = (actual.lower(), value.lower()) if ci else (actual, value)
            return a == b if op == "eq" else a.startswith(b)
        return pred


class MembershipCtx:
    def __init__(self, m: dict):
        self.m = m

    def get(self, key):
        return self.m.get(key)

    def memberships(self):
        return []


class ObjCtx:
    def __init__(self, values: dict, memberships):
        self.values, self._memberships = values, memberships

    def get(self, key):
        return self.values.get(key)

    def memberships(self):
        return self._memberships()


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------

class State:
    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.lock = threading.RLock()
        self.base_url = ""
        self.reset()

    def on_listen(self, base_url: str):
        self.base_url = base_url

    def reset(self):
        self.imports: list[dict] = []
        self.provisioning_tokens: dict[str, str] = {}
        self.external_groups: dict[str, dict[str, dict]] = {s: {} for s in self.cfg.provisioning_sync_id}
        self.cycles: dict[str, dict] = {}            # syncId -> {"full": bool, "seen": set}
        self.external_group_ids: dict[tuple, str] = {}  # (syncId, uniqueId) -> materialised group id
        self.groups: dict[str, dict] = {}             # id -> internal group record (insertion order)
        self.memberships: dict[str, list[str]] = {}   # groupId -> [userId] (direct)
        self.nesting: dict[str, list[str]] = {}       # childGroupId -> [parentGroupId]
        self.users: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}             # token -> {"exp": float, "revoked": bool}
        self.tokens_issued = 0
        self.requests: list[dict] = []
        self.faults = Faults()
        self.imports_ok_since_faults = 0

    # ---- naming --------------------------------------------------------------------------------
    def name_key(self, name: str) -> str:
        return name if self.cfg.case_sensitive_names else name.lower()

    def find_name_conflict(self, name: str, population_id: str | None, exclude: str | None = None):
        for g in self.groups.values():
            if g["id"] == exclude or g.get("sourceType"):
                continue
            if self.name_key(g["name"]) != self.name_key(name):
                continue
            # env groups: unique in env; population groups: unique in population; and they may not share.
            if population_id is None or g.get("population_id") is None or g.get("population_id") == population_id:
                return g
        return None

    # ---- graph helpers ---------------------------------------------------------------------------
    def ancestors(self, start_groups: list[str]) -> dict[str, str]:
        """groupId -> DIRECT|INDIRECT for the given direct groups plus all their nesting ancestors."""
        out = {g: "DIRECT" for g in start_groups}
        queue = list(start_groups)
        while queue:
            g = queue.pop(0)
            for p in self.nesting.get(g, []):
                if p not in out:
                    out[p] = "INDIRECT"
                    queue.append(p)
        return out

    def user_groups(self, uid: str) -> dict[str, str]:
        direct = [gid for gid, uids in self.memberships.items() if uid in uids]
        return self.ancestors(direct)

    def group_parents(self, gid: str) -> dict[str, str]:
        res = self.ancestors(list(self.nesting.get(gid, [])))
        res.pop(gid, None)
        return res

    # ---- rendering -------------------------------------------------------------------------------
    def env_href(self) -> str:
        return f"{self.base_url}/v1/environments/{self.cfg.environment_id}"

    def render_group(self, g: dict, counts: bool = True, total: bool = False) -> dict:
        env_href = self.env_href()
        gid = g["id"]
        members_filter = quote(f'memberOfGroups[id eq "{gid}"]', safe="")
        direct_filter = quote(f'memberOfGroups[id eq "{gid}" and type eq "DIRECT"]', safe="")
        out = {
            "_links": {
                "self": {"href": f"{env_href}/groups/{gid}"},
                "environment": {"href": env_href},
                "allUserMembers": {"href": f"{env_href}/users?filter={members_filter}"},
                "directUserMembers": {"href": f"{env_href}/users?filter={direct_filter}"},
                "allGroupMembers": {"href": f"{env_href}/groups?filter={members_filter}"},
                "directGroupMembers": {"href": f"{env_href}/groups?filter={direct_filter}"},
            },
            "id": gid,
            "environment": {"id": self.cfg.environment_id},
            "name": g["name"],
        }
        if g.get("population_id"):
            out["population"] = {"id": g["population_id"]}
        for k in ("description", "externalId", "customData", "userFilter", "displayName", "sourceId",
                  "sourceType"):
            if g.get(k) is not None:
                out[k] = g[k]
        if counts:
            children = [c for c, parents in self.nesting.items() if gid in parents]
            out["directMemberCounts"] = {"users": len(self.memberships.get(gid, [])), "groups": len(children)}
        if total:
            out["totalMemberCounts"] = {"users": sum(1 for u in self.users if gid in self.user_groups(u))}
        out["createdAt"], out["updatedAt"] = g["createdAt"], g["updatedAt"]
        return out

    def render_user(self, u: dict) -> dict:
        href = f"{self.env_href()}/users/{u['id']}"
        out = {"_links": {"self": {"href": href}, "memberOfGroups": {"href": f"{href}/memberOfGroups"}}}
        out.update({k: v for k, v in u.items() if not k.startswith("_")})
        return out

    def render_membership(self, owner_href: str, gid: str, mtype: str, expand: bool) -> dict:
        g = self.groups[gid]
        out = {"_links": {"self": {"href": f"{owner_href}/memberOfGroups/{gid}"},
                          "group": {"href": f"{self.env_href()}/groups/{gid}"}},
               "id": gid, "environment": {"id": self.cfg.environment_id}, "name": g["name"], "type": mtype}
        if expand:
            out["_embedded"] = {"group": self.render_group(g)}
        return out

    def snapshot(self) -> dict:
        return {
            "imports": self.imports,
            "provisioning_tokens": self.provisioning_tokens,
            "external_groups": self.external_groups,
            "groups": [self.render_group(g) for g in self.groups.values()],
            "memberships": self.memberships,
            "group_memberships": self.nesting,
            "users": [self.render_user(u) for u in self.users.values()],
            "tokens_issued": self.tokens_issued,
            "requests": self.requests,
            "faults": self.faults.dump(),
        }


# --------------------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------------------

class Handler(EmulatorHandler):
    server_version = "PingOneEmulator/1.0"

    # ---- plumbing --------------------------------------------------------------------------------
    do_HEAD = do_OPTIONS = EmulatorHandler.do_GET

    def common_headers(self):
        return {"Correlation-Id": str(uuid.uuid4())}

    def response_content_type(self, resp):
        return self.content_type if resp.has_content() else None

    def reply(self, status: int, body=None, headers: dict | None = None, raw: bytes | None = None):
        self.send(Response(status, body, headers, raw))

    def json_body(self, raw: bytes, required_ct: str | None = "application/json"):
        if required_ct is not None:
            ct = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ct != required_ct:
                raise ApiError(415, "INVALID_REQUEST", MSG_415, [detail(
                    "INVALID_VALUE", f"Content-Type must be {required_ct}", "Content-Type",
                    {"allowedValues": [required_ct]})])
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, "INVALID_REQUEST", "The request could not be completed. The request was malformed.",
                           [detail("INVALID_VALUE", f"Request body is not valid JSON: {e}")])

    def handle_any(self, method):
        st = self.state
        self.status_sent = None
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        if path.startswith("/__admin/"):
            try:
                self.handle_admin(path, self.read_body())
            except ApiError as e:
                self.reply(e.status, e.body())
            return
        try:
            try:
                raw = self.read_body(st.cfg.max_body_bytes)
            except BodyTooLarge:
                self.close_connection = True
                raise ApiError(413, "INVALID_REQUEST", MSG_413, [detail(
                    "SIZE_LIMIT_EXCEEDED", f"Request body exceeds {st.cfg.max_body_bytes} bytes", "body",
                    {"maximumValue": st.cfg.max_body_bytes})])
            m = re.fullmatch(r"/([^/]+)/as/token", path)
            if m:
                self.handle_token(m.group(1), raw)
            elif path == "/v1" or path.startswith("/v1/"):
                self.handle_api(path, query, raw)
            else:
                raise not_found("Resource")
        except OAuthError as e:
            self.reply(e.status, {"error": e.error, "error_description": e.description},
                       dict(e.headers, **{"Cache-Control": "no-store", "Pragma": "no-cache"}))
        except ApiError as e:
            self.reply(e.status, e.body(), e.headers)
        except Exception as e:  # never leave the client hanging
            import traceback
            traceback.print_exc(file=sys.stderr)
            self.reply(500, ApiError(500, message=f"{MSG_500} ({type(e).__name__}: {e})").body())
        finally:
            with st.lock:
                st.requests.append({"method": self.command, "path": path, "query": split.query,
                                    "status": self.status_sent})

    # ---- admin -----------------------------------------------------------------------------------
    def handle_admin(self, path: str, raw: bytes):
        st = self.state
        with st.lock:
            if path == "/__admin/state" and self.command == "GET":
                return self.reply(200, st.snapshot())
            if path == "/__admin/reset" and self.command == "POST":
                st.reset()
                return self.reply(200, {"reset": True})
            if path == "/__admin/faults" and self.command == "POST":
                faults = self.json_body(raw or b"{}", None)
                if not isinstance(faults, dict) or set(faults) - FAULT_KEYS:
                    raise invalid_data(detail("INVALID_VALUE", f"faults must be an object with keys {sorted(FAULT_KEYS)}"))
                if faults.pop("expire_tokens", False):
                    for t in st.tokens.values():
                        t["revoked"] = True
                st.faults.set(faults)
                st.imports_ok_since_faults = 0
                return self.reply(200, st.faults.dump())
            if path == "/__admin/users" and self.command == "POST":
                users = self.json_body(raw, None)
                if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
                    raise invalid_data(detail("INVALID_VALUE", "body must be an array of user objects"))
                created = []
                for u in users:
                    ts = now_iso()
                    rec = {"id": str(uuid.uuid4()), "environment": {"id": st.cfg.environment_id},
                           "population": {"id": st.cfg.population_id[0]}, "enabled": True,
                           "createdAt": ts, "updatedAt": ts}
                    rec.update({k: v for k, v in u.items() if k not in ("id", "_links")})
                    st.users[rec["id"]] = rec
                    created.append(st.render_user(rec))
                return self.reply(201, created)
        raise not_found("Admin endpoint")

    # ---- token endpoint --------------------------------------------------------------------------
    def handle_token(self, env: str, raw: bytes):
        st, cfg = self.state, self.state.cfg
        if self.command != "POST":
            raise OAuthError(405, "invalid_request", "The token endpoint only accepts POST", {"Allow": "POST"})
        if env != cfg.environment_id:
            raise not_found("Environment")
        ct = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ct != "application/x-www-form-urlencoded":
            raise OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
        auth = self.headers.get("Authorization")
        basic = None
        if auth:
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() != "basic":
                raise OAuthError(401, "invalid_client", "Unsupported client authentication scheme",
                                 {"WWW-Authenticate": 'Basic realm="PingOne"'})
            try:
                cid, sep, secret = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                cid, sep, secret = "", "", ""
            if not sep:
                raise OAuthError(401, "invalid_client", "Malformed Basic credentials",
                                 {"WWW-Authenticate": 'Basic realm="PingOne"'})
            basic = (cid, secret)
        post = (form.get("client_id", ""), form["client_secret"]) if "client_secret" in form else None
        if basic and post:
            raise OAuthError(400, "invalid_request", "Only one client authentication method may be used")
        method, creds = ("basic", basic) if basic else ("post", post)
        if creds is None:
            raise OAuthError(401, "invalid_client", "Client authentication is required",
                             {"WWW-Authenticate": 'Basic realm="PingOne"'})

        def matches(got, want):
            return got == want or unquote_plus(got) == want
        ok = matches(creds[0], cfg.client_id) and matches(creds[1], cfg.client_secret)
        if ok and cfg.token_auth_method not in ("any", method):
            ok = False
        if not ok:
            raise OAuthError(401, "invalid_client", "Client authentication failed",
                             {"WWW-Authenticate": 'Basic realm="PingOne"'} if method == "basic" else {})
        if "grant_type" not in form:
            raise OAuthError(400, "invalid_request", "grant_type is required")
        if form["grant_type"] != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {form['grant_type']!r}")
        iat = int(time.time())
        header = b64url(json.dumps({"alg": "RS256", "kid": "emulator", "typ": "JWT"}).encode())
        payload = b64url(json.dumps({
            "client_id": cfg.client_id, "iss": f"{st.base_url}/{env}/as", "iat": iat,
            "exp": iat + cfg.token_ttl, "aud": ["https://api.pingone.com"], "env": env,
            "jti": str(uuid.uuid4())}).encode())
        token = f"{header}.{payload}.{b64url(secrets.token_bytes(64))}"
        with st.lock:
            st.tokens[token] = {"exp": time.time() + cfg.token_ttl, "revoked": False}
            st.tokens_issued += 1
        self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": cfg.token_ttl},
                   {"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ---- API -------------------------------------------------------------------------------------
    def retry_after_header(self, seconds: int) -> str:
        if self.state.faults.get("retry_after_format") == "http-date":
            return formatdate(time.time() + seconds, usegmt=True)
        return str(seconds)

    def fault_error(self) -> ApiError:
        status = int(self.state.faults.get("fail_status", 500))
        headers = {}
        if status == 503:
            headers["Retry-After"] = self.retry_after_header(int(self.state.faults.get("retry_after", 1)))
        return ApiError(status, message=STATUS_MESSAGES.get(status, MSG_500) + " (injected fault)",
                        headers=headers)

    def check_auth(self):
        st = self.state
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        reason = None
        if not auth:
            reason = "The request is missing an access token"
        elif scheme.lower() != "bearer" or not token.strip():
            reason = "The Authorization header must use the Bearer scheme"
        else:
            rec = st.tokens.get(token.strip())
            if rec is None:
                reason = "The access token is invalid"
            elif rec["revoked"] or time.time() >= rec["exp"]:
                reason = "The access token has expired"
        if reason:
            raise ApiError(401, "ACCESS_FAILED", MSG_401, [detail("INVALID_TOKEN", reason)],
                           {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'})

    def handle_api(self, path: str, query: dict, raw: bytes):
        st = self.state
        with st.lock:
            if st.faults.take("rate_limit_next"):
                secs = int(st.faults.get("retry_after", 1))
                raise ApiError(429, "REQUEST_LIMITED", MSG_429, [detail(
                    "LIMIT_EXCEEDED", "The rate limit was exceeded. Retry later.", None,
                    {"quotaLimit": 100, "quotaResetTime": now_iso(secs), "retryAfter": now_iso(secs)})],
                    {"Retry-After": self.retry_after_header(secs)})
            self.check_auth()
            m = re.fullmatch(r"/v1/environments/([^/]+)(/.*)?", path)
            if not m:
                raise not_found("Resource")
            env, rest = m.group(1), m.group(2) or ""
            if env != st.cfg.environment_id:
                status = st.cfg.unknown_environment_status
                if status == 403:
                    raise ApiError(403, "ACCESS_FAILED", MSG_403,
                                   [detail("INSUFFICIENT_PERMISSIONS", "You do not have access to this environment")])
                raise not_found("Environment")
            if st.faults.take("fail_next"):
                raise self.fault_error()
            self.route(rest, query, raw)

    ROUTES = [
        (r"/propagation/provisioningSyncs/([^/]+)", {"POST": "import_groups"}),
        (r"/groups", {"GET": "list_groups", "POST": "create_group"}),
        (r"/groups/([^/]+)", {"GET": "get_group", "PUT": "put_group", "DELETE": "delete_group"}),
        (r"/groups/([^/]+)/memberOfGroups", {"GET": "list_group_parents", "POST": "add_group_parent"}),
        (r"/groups/([^/]+)/memberOfGroups/([^/]+)", {"GET": "get_group_parent", "DELETE": "delete_group_parent"}),
        (r"/users", {"GET": "list_users"}),
        (r"/users/([^/]+)", {"GET": "get_user"}),
        (r"/users/([^/]+)/memberOfGroups", {"GET": "list_user_groups", "POST": "add_user_group"}),
        (r"/users/([^/]+)/memberOfGroups/([^/]+)", {"GET": "get_user_group", "DELETE": "delete_user_group"}),
    ]

    def route(self, rest: str, query: dict, raw: bytes):
        for pattern, methods in self.ROUTES:
            m = re.fullmatch(pattern, rest)
            if m:
                name = methods.get(self.command)
                if name is None:
                    raise ApiError(405, "METHOD_NOT_ALLOWED", MSG_405,
                                   [detail("INVALID_REQUEST", f"{self.command} is not supported here")],
                                   {"Allow": ", ".join(methods)})
                args = [unquote(a) for a in m.groups()]
                return getattr(self, name)(*args, query=query, raw=raw)
        raise not_found("Resource")

    # ---- paging ----------------------------------------------------------------------------------
    def paginate(self, items: list, query: dict, key: str) -> dict:
        cfg = self.state.cfg
        limit_raw = query.get("limit", [None])[0]
        page = cfg.page_size
        if limit_raw is not None:
            try:
                limit = int(limit_raw)
            except ValueError:
                raise invalid_data(detail("INVALID_VALUE", "limit must be an integer", "limit"))
            if not 1 <= limit <= 1000:
                raise invalid_data(detail("OUT_OF_RANGE", "limit must be between 1 and 1000", "limit",
                                          {"rangeMinimumValue": 1, "rangeMaximumValue": 1000}))
            page = min(limit, cfg.page_size)
        offset = 0
        cursor = query.get("cursor", [None])[0]
        if cursor is not None:
            try:
                decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
                if not decoded.startswith("o:"):
                    raise ValueError
                offset = int(decoded[2:])
                if offset < 0:
                    raise ValueError
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise invalid_data(detail("INVALID_VALUE", "The cursor is invalid", "cursor"))
        chunk = items[offset:offset + page]
        base = self.state.base_url + urlsplit(self.path).path
        params = {k: v[0] for k, v in query.items() if k != "cursor"}
        self_q = dict(params, **({"cursor": cursor} if cursor else {}))
        links = {"self": {"href": base + ("?" + urlencode(self_q, quote_via=quote) if self_q else "")}}
        if offset + page < len(items):
            nq = dict(params, cursor=b64url(f"o:{offset + page}".encode()))
            links["next"] = {"href": base + "?" + urlencode(nq, quote_via=quote)}
        return {"_links": links, "_embedded": {key: chunk}, "count": len(items), "size": len(chunk)}

    def compile_filter(self, query: dict, attrs: dict[str, bool]):
        text = query.get("filter", [None])[0]
        if text is None:
            return lambda ctx: True
        return FilterParser(text, attrs).parse()

    # ---- provisioning sync import ----------------------------------------------------------------
    def validate_import(self, body) -> list[dict]:
        cfg = self.state.cfg
        errs: list[dict] = []
        if not isinstance(body, dict):
            return [detail("INVALID_VALUE", "The request body must be a JSON object")]
        if not cfg.allow_unknown_import_fields:
            for k in sorted(set(body) - {"groups", "startToken", "nextToken"}):
                errs.append(detail("INVALID_VALUE", f"Unrecognized property '{k}'", k))
        for tok in ("startToken", "nextToken"):
            if body.get(tok) is not None and not isinstance(body[tok], str):
                errs.append(detail("INVALID_VALUE", f"{tok} must be a string", tok))
        groups = body.get("groups")
        if groups is None:
            errs.append(detail("REQUIRED_VALUE", "groups is required", "groups"))
            return errs
        if not isinstance(groups, list):
            errs.append(detail("INVALID_VALUE", "groups must be an array", "groups"))
            return errs
        if len(groups) > cfg.max_batch_groups:
            errs.append(detail("SIZE_LIMIT_EXCEEDED",
                               f"groups must not contain more than {cfg.max_batch_groups} entries", "groups",
                               {"maximumValue": cfg.max_batch_groups}))
            return errs
        for i, g in enumerate(groups):
            t = f"groups[{i}]"
            if not isinstance(g, dict):
                errs.append(detail("INVALID_VALUE", "each group must be an object", t))
                continue
            if not cfg.allow_unknown_import_fields:
                for k in sorted(set(g) - {"uniqueId", "operation", "attributes"}):
                    errs.append(detail("INVALID_VALUE", f"Unrecognized property '{k}'", f"{t}.{k}"))
            uid = g.get("uniqueId")
            if uid is None:
                errs.append(detail("REQUIRED_VALUE", "uniqueId is required", f"{t}.uniqueId"))
            elif not isinstance(uid, str):
                errs.append(detail("INVALID_VALUE", "uniqueId must be a string", f"{t}.uniqueId"))
            elif not uid.strip():
                errs.append(detail("EMPTY_VALUE", "uniqueId must not be empty", f"{t}.uniqueId"))
            op = g.get("operation")
            if op is not None and op not in IMPORT_OPERATIONS:
                errs.append(detail("INVALID_VALUE", f"operation must be one of {', '.join(IMPORT_OPERATIONS)}",
                                   f"{t}.operation", {"allowedValues": list(IMPORT_OPERATIONS)}))
            attrs = g.get("attributes")
            if attrs is None:
                errs.append(detail("REQUIRED_VALUE", "attributes is required", f"{t}.attributes"))
                continue
            if not isinstance(attrs, dict):
                errs.append(detail("INVALID_VALUE", "attributes must be an object (map)", f"{t}.attributes"))
                continue
            for k, v in attrs.items():
                at = f"{t}.attributes.{k}"
                if k == "member":
                    if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                        errs.append(detail("INVALID_VALUE", "member must be an array of strings", at))
                elif k == "active":
                    if not (isinstance(v, bool) or (isinstance(v, str) and v.lower() in ("true", "false"))):
                        errs.append(detail("INVALID_VALUE", "active must be a boolean", at))
                elif not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                    errs.append(detail("INVALID_VALUE", "attribute values must be a string or an array of strings", at))
            if cfg.require_name_attribute:
                name = attrs.get("name")
                if isinstance(name, list) and len(name) == 1:
                    name = name[0]
                if name is None:
                    errs.append(detail("REQUIRED_VALUE", "attributes.name is required", f"{t}.attributes.name"))
                elif not isinstance(name, str) or not name.strip():
                    errs.append(detail("EMPTY_VALUE" if isinstance(name, str) else "INVALID_VALUE",
                                       "attributes.name must be a non-empty string", f"{t}.attributes.name"))
        return errs

    def import_groups(self, sync_id: str, query: dict, raw: bytes):
        st, cfg = self.state, self.state.cfg
        ct = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ct != IMPORT_CONTENT_TYPE:
            raise ApiError(415, "INVALID_REQUEST", MSG_415, [detail(
                "INVALID_VALUE", f"Content-Type must be {IMPORT_CONTENT_TYPE}", "Content-Type",
                {"allowedValues": [IMPORT_CONTENT_TYPE]})])
        if sync_id not in cfg.provisioning_sync_id:
            raise not_found("Provisioning sync")
        k = st.faults.get("fail_imports_after")
        if k is not None and st.imports_ok_since_faults >= int(k):
            raise self.fault_error()
        body = self.json_body(raw, None)
        errs = self.validate_import(body)
        if errs:
            raise invalid_data(*errs)
        stored = st.provisioning_tokens.get(sync_id)
        start = body.get("startToken")
        if cfg.enforce_start_token and start is not None and start != stored:
            raise invalid_data(detail("INVALID_VALUE",
                                      f"startToken does not match the last nextToken ({stored!r})", "startToken"))
        cycle = st.cycles.get(sync_id)
        if cycle is None:
            cycle = st.cycles[sync_id] = {"full": start is None, "seen": set()}
        ext = st.external_groups.setdefault(sync_id, {})
        for g in body["groups"]:
            uid, attrs = g["uniqueId"], g["attributes"]
            deleted = g.get("operation") == "DELETED"
            ext[uid] = dict(attrs, deleted=deleted)
            cycle["seen"].add(uid)
            self.materialise(sync_id, uid, attrs, deleted)
        if body.get("nextToken") is not None:
            st.provisioning_tokens[sync_id] = body["nextToken"]
            if cfg.full_sync_deletes_unseen and cycle["full"]:
                for uid, rec in ext.items():
                    if uid not in cycle["seen"] and not rec["deleted"]:
                        rec["deleted"] = True
                        self.materialise(sync_id, uid, rec, True)
            del st.cycles[sync_id]
        st.imports.append(dict(body, syncId=sync_id))
        st.imports_ok_since_faults += 1
        mode = cfg.import_response
        if mode == "json200":
            return self.reply(200, {})
        return self.reply({"empty200": 200, "empty202": 202, "empty204": 204}[mode])

    def materialise(self, sync_id: str, unique_id: str, attrs: dict, deleted: bool):
        st = self.state
        if not st.cfg.materialize_external_groups:
            return
        key = (sync_id, unique_id)
        gid = st.external_group_ids.get(key)
        if deleted:
            if gid:
                self.drop_group(gid)
                del st.external_group_ids[key]
            return
        name = attrs.get("name")
        name = name[0] if isinstance(name, list) and name else name
        name = name if isinstance(name, str) and name else unique_id
        ts = now_iso()
        if gid and gid in st.groups:
            st.groups[gid].update(name=name, displayName=name, updatedAt=ts)
        else:
            gid = str(uuid.uuid4())
            st.external_group_ids[key] = gid
            st.groups[gid] = {"id": gid, "name": name, "displayName": name, "sourceType": "GATEWAY",
                              "sourceId": sync_id, "createdAt": ts, "updatedAt": ts}

    # ---- groups ----------------------------------------------------------------------------------
    GROUP_FILTER_ATTRS = {"id": False, "name": True, "externalid": False, "population.id": False}

    def group_fields(self, body, existing: dict | None) -> dict:
        st = self.state
        if not isinstance(body, dict):
            raise invalid_data(detail("INVALID_VALUE", "The request body must be a JSON object"))
        errs = []
        name = body.get("name")
        if name is None:
            errs.append(detail("REQUIRED_VALUE", "name is required", "name"))
        elif not isinstance(name, str):
            errs.append(detail("INVALID_VALUE", "name must be a string", "name"))
        elif not name.strip():
            errs.append(detail("EMPTY_VALUE", "name must not be empty", "name"))
        for k in ("description", "externalId", "userFilter"):
            if body.get(k) is not None and not isinstance(body[k], str):
                errs.append(detail("INVALID_VALUE", f"{k} must be a string", k))
        if body.get("customData") is not None and not isinstance(body["customData"], dict):
            errs.append(detail("INVALID_VALUE", "customData must be a JSON object", "customData"))
        pop = body.get("population")
        pop_id = None
        if pop is not None:
            if not isinstance(pop, dict) or not isinstance(pop.get("id"), str):
                errs.append(detail("INVALID_VALUE", "population must be an object with a string id", "population.id"))
            else:
                pop_id = pop["id"]
                if existing is None and pop_id not in st.cfg.population_id:
                    errs.append(detail("INVALID_VALUE", "The population does not exist", "population.id"))
        if existing is not None:
            if pop is not None and pop_id != existing.get("population_id"):
                errs.append(detail("INVALID_VALUE", "population.id cannot be updated", "population.id"))
            pop_id = existing.get("population_id")
        if errs:
            raise invalid_data(*errs)
        conflict = st.find_name_conflict(name, pop_id, exclude=existing["id"] if existing else None)
        if conflict:
            d = detail("UNIQUENESS_VIOLATION", "A resource with the specified name already exists", "name",
                       {"existingId": conflict["id"]})
            if st.cfg.uniqueness_status == 409:
                raise ApiError(409, "CONFLICT", "Conflict. A resource with the specified name already exists.", [d])
            raise invalid_data(d)
        return {"name": name, "population_id": pop_id,
                **{k: body.get(k) for k in ("description", "externalId", "customData", "userFilter")}}

    def the_group(self, gid: str) -> dict:
        g = self.state.groups.get(gid)
        if g is None:
            raise not_found("Group")
        return g

    def the_user(self, uid: str) -> dict:
        u = self.state.users.get(uid)
        if u is None:
            raise not_found("User")
        return u

    def create_group(self, query, raw):
        st = self.state
        fields = self.group_fields(self.json_body(raw), None)
        ts = now_iso()
        g = {"id": str(uuid.uuid4()), "createdAt": ts, "updatedAt": ts, **fields}
        st.groups[g["id"]] = g
        out = st.render_group(g, counts=False)
        self.reply(201, out, {"Location": out["_links"]["self"]["href"]})

    def list_groups(self, query, raw):
        st = self.state
        pred = self.compile_filter(query, self.GROUP_FILTER_ATTRS)
        items = []
        for g in st.groups.values():
            values = {"id": g["id"], "name": g["name"], "externalid": g.get("externalId"),
                      "population.id": g.get("population_id")}
            ctx = ObjCtx(values, lambda g=g: [{"id": p, "type": t} for p, t in st.group_parents(g["id"]).items()])
            if pred(ctx):
                items.append(st.render_group(g))
        self.reply(200, self.paginate(items, query, "groups"))

    def get_group(self, gid, query, raw):
        include = ",".join(query.get("include", []))
        self.reply(200, self.state.render_group(self.the_group(gid), total="totalMemberCounts" in include))

    def put_group(self, gid, query, raw):
        g = self.the_group(gid)
        body = self.json_body(raw)
        fields = self.group_fields(body, g)
        for k in ("description", "externalId", "customData", "userFilter"):
            g.pop(k, None)
        g.update(fields, updatedAt=now_iso())
        self.reply(200, self.state.render_group(g))

    def drop_group(self, gid: str):
        st = self.state
        st.groups.pop(gid, None)
        st.memberships.pop(gid, None)
        st.nesting.pop(gid, None)
        for child in list(st.nesting):
            if gid in st.nesting[child]:
                st.nesting[child].remove(gid)
                if not st.nesting[child]:
                    del st.nesting[child]

    def delete_group(self, gid, query, raw):
        self.the_group(gid)
        self.drop_group(gid)
        self.reply(204)

    # ---- memberships (users) and nesting (groups) -----------------------------------------------
    def target_group_from_body(self, raw) -> dict:
        body = self.json_body(raw)
        if not isinstance(body, dict) or body.get("id") is None:
            raise invalid_data(detail("REQUIRED_VALUE", "id is required", "id"))
        if not isinstance(body["id"], str):
            raise invalid_data(detail("INVALID_VALUE", "id must be a string", "id"))
        return self.the_group(body["id"])

    def reject_external(self, g: dict, what: str):
        if g.get("sourceType"):
            raise invalid_data(detail("CONSTRAINT_VIOLATION", f"External groups {what}", "id"))

    def duplicate(self, what: str, existing_id: str):
        mode = self.state.cfg.duplicate_membership
        if mode == "success":
            return
        d = detail("UNIQUENESS_VIOLATION", f"{what} already exists", "id", {"existingId": existing_id})
        if mode == "409":
            raise ApiError(409, "CONFLICT", f"Conflict. {what} already exists.", [d])
        raise invalid_data(d)

    def add_user_group(self, uid, query, raw):
        st = self.state
        self.the_user(uid)
        g = self.target_group_from_body(raw)
        self.reject_external(g, "cannot have their memberships edited")
        members = st.memberships.setdefault(g["id"], [])
        if uid in members:
            self.duplicate("The group membership", g["id"])
        else:
            members.append(uid)
        self.reply(201, st.render_membership(f"{st.env_href()}/users/{uid}", g["id"], "DIRECT", False))

    def list_user_groups(self, uid, query, raw):
        st = self.state
        self.the_user(uid)
        pred = self.compile_filter(query, {"id": False, "type": False})
        expand = "group" in ",".join(query.get("expand", []))
        href = f"{st.env_href()}/users/{uid}"
        items = [st.render_membership(href, gid, t, expand) for gid, t in st.user_groups(uid).items()
                 if pred(MembershipCtx({"id": gid, "type": t}))]
        self.reply(200, self.paginate(items, query, "groupMemberships"))

    def get_user_group(self, uid, gid, query, raw):
        st = self.state
        self.the_user(uid)
        t = st.user_groups(uid).get(gid)
        if t is None:
            raise not_found("Group membership")
        expand = "group" in ",".join(query.get("expand", []))
        self.reply(200, st.render_membership(f"{st.env_href()}/users/{uid}", gid, t, expand))

    def delete_user_group(self, uid, gid, query, raw):
        st = self.state
        self.the_user(uid)
        g = self.the_group(gid)
        members = st.memberships.get(gid, [])
        if uid not in members:
            raise not_found("Group membership")
        self.reject_external(g, "cannot have their memberships edited")
        members.remove(uid)
        if not members:
            del st.memberships[gid]
        self.reply(204)

    def add_group_parent(self, gid, query, raw):
        st = self.state
        child = self.the_group(gid)
        parent = self.target_group_from_body(raw)
        self.reject_external(child, "cannot be nested")
        self.reject_external(parent, "cannot have nested groups")
        if parent["id"] == child["id"]:
            raise invalid_data(detail("CONSTRAINT_VIOLATION", "A group cannot be nested in itself", "id"))
        if child.get("population_id") is None and parent.get("population_id") is not None:
            raise invalid_data(detail("CONSTRAINT_VIOLATION",
                                      "An environment-level group cannot be nested inside a population-level group",
                                      "id"))
        parents = st.nesting.setdefault(gid, [])
        if parent["id"] in parents:
            self.duplicate("The group nesting", parent["id"])
        else:
            parents.append(parent["id"])
        self.reply(201, st.render_membership(f"{st.env_href()}/groups/{gid}", parent["id"], "DIRECT", False))

    def list_group_parents(self, gid, query, raw):
        st = self.state
        self.the_group(gid)
        pred = self.compile_filter(query, {"id": False, "type": False})
        href = f"{st.env_href()}/groups/{gid}"
        items = [st.render_membership(href, p, t, False) for p, t in st.group_parents(gid).items()
                 if pred(MembershipCtx({"id": p, "type": t}))]
        self.reply(200, self.paginate(items, query, "groupMemberships"))

    def get_group_parent(self, gid, pid, query, raw):
        st = self.state
        self.the_group(gid)
        t = st.group_parents(gid).get(pid)
        if t is None:
            raise not_found("Group nesting")
        self.reply(200, st.render_membership(f"{st.env_href()}/groups/{gid}", pid, t, False))

    def delete_group_parent(self, gid, pid, query, raw):
        st = self.state
        self.the_group(gid)
        parents = st.nesting.get(gid, [])
        if pid not in parents:
            raise not_found("Group nesting")
        parents.remove(pid)
        if not parents:
            del st.nesting[gid]
        self.reply(204)

    # ---- users -----------------------------------------------------------------------------------
    USER_FILTER_ATTRS = {"id": False, "username": True, "email": True, "externalid": False, "population.id": False}

    def list_users(self, query, raw):
        st = self.state
        pred = self.compile_filter(query, self.USER_FILTER_ATTRS)
        items = []
        for u in st.users.values():
            values = {"id": u["id"], "username": u.get("username"), "email": u.get("email"),
                      "externalid": u.get("externalId"), "population.id": (u.get("population") or {}).get("id")}
            ctx = ObjCtx(values, lambda u=u: [{"id": g, "type": t} for g, t in st.user_groups(u["id"]).items()])
            if pred(ctx):
                items.append(st.render_user(u))
        self.reply(200, self.paginate(items, query, "users"))

    def get_user(self, uid, query, raw):
        st = self.state
        out = st.render_user(self.the_user(uid))
        include = ",".join(query.get("include", []))
        groups = st.user_groups(uid)
        if "memberOfGroupIDs" in include:
            out["memberOfGroupIDs"] = list(groups)
        if "memberOfGroupNames" in include:
            out["memberOfGroupNames"] = [st.groups[g]["name"] for g in groups]
        self.reply(200, out)


# --------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argument_parser("PingOne emulator for ldapsync tests")
    p.add_argument("--environment-id", default="11111111-2222-3333-4444-555555555555")
    p.add_argument("--client-id", default="ldapsync-client")
    p.add_argument("--client-secret", default="s3cret-client")
    p.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime, seconds")
    p.add_argument("--token-auth-method", choices=("any", "basic", "post"), default="any")
    p.add_argument("--provisioning-sync-id", action="append", default=None,
                   help="known provisioningSyncID (repeatable)")
    p.add_argument("--population-id", action="append", default=None,
                   help="known population id (repeatable; the first is the default for admin-created users)")
    p.add_argument("--max-batch-groups", type=int, default=1000)
    p.add_argument("--max-body-bytes", type=int, default=1048576)
    p.add_argument("--import-response", choices=("json200", "empty200", "empty202", "empty204"), default="json200")
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--uniqueness-status", type=int, choices=(400, 409), default=400)
    p.add_argument("--duplicate-membership", choices=("success", "400", "409"), default="success")
    p.add_argument("--unknown-environment-status", type=int, choices=(403, 404), default=403)
    p.add_argument("--case-sensitive-names", action="store_true")
    p.add_argument("--enforce-start-token", action="store_true")
    p.add_argument("--full-sync-deletes-unseen", action="store_true")
    p.add_argument("--no-materialize-external-groups", dest="materialize_external_groups", action="store_false")
    p.add_argument("--no-require-name-attribute", dest="require_name_attribute", action="store_false")
    p.add_argument("--allow-unknown-import-fields", action="store_true")
    cfg = finish_args(p, argv)
    cfg.provisioning_sync_id = cfg.provisioning_sync_id or ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]
    cfg.population_id = cfg.population_id or ["99999999-8888-7777-6666-000000000001"]
    return cfg


if __name__ == "__main__":
    run(parse_args, Handler, State)
