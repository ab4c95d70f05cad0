#!/usr/bin/env python3
"""ForgeRock Identity Cloud (AIC) / PingIDM managed groups emulator for ldapsync tests.

Stdlib only (python3.11).  Written from ForgeRock's "Manage groups" REST documentation (see docs/forgerock.md).

Process contract
----------------
    python3 tests/emulators/forgerock.py [--port 0] [options]
binds 127.0.0.1, prints exactly one line ``LISTENING http://127.0.0.1:PORT`` (flushed) and serves
until killed.  Admin endpoints (no auth) live under ``/__admin``.

From the spec / seed (faithful)
-------------------------------
* Managed objects ``/openidm/managed/<realm>_group`` and ``<realm>_user`` (``--realm ""`` gives the
  self-managed names ``group`` / ``user``).  References are ``managed/<realm>_user/<id>``.
* OAuth2 client credentials (self-managed platform sample): ``POST
  /am/oauth2/realms/root/realms/<am-realm>/access_token`` form ``grant_type=client_credentials&
  client_id=..&client_secret=..&scope=fr:idm:*`` (HTTP Basic client auth also accepted) ->
  ``{"access_token","scope","token_type":"Bearer","expires_in"}``.  AIC service accounts: ``POST
  /am/oauth2/access_token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&
  client_id=service-account&assertion=<JWT>&scope=fr:idm:*`` (claims iss=sub=<account id>,
  aud ending in /am/oauth2/access_token, exp in the future; the signature is NOT checked).
  Both paths accept both grants.  Tokens expire after ``--token-ttl`` -> 401.
* ``Accept-API-Version`` is optional (frodo-lib sends none); POST without ``_action`` creates
  (CREST protocol 2.1 default).
* Create: ``POST ..._group?_action=create`` -> 201 + Location + ETag, body
  ``{"_id","_rev","name","condition","description"}`` with ``_id`` == name (seed).  PUT to
  ``.../<id>`` upserts; ``If-None-Match: *`` create-only (412 if it exists); other If-None-Match
  -> 400.  Duplicate create -> 412 "Create rejected as Object with same ID already exists and was
  detected." (OpenIDM JDBC repo).
* Query: ``_queryFilter`` grammar of B.11 (``true``/``false``, eq co sw lt le gt ge pr, and/or/!,
  parentheses, optional leading ``/``; string values must be double-quoted; ``ew`` and complex
  pointers are rejected with 400).  ``_queryId=query-all-ids``.  ``_fields`` (``_id``/``_rev`` always
  returned; ``members``/``groups`` only when asked for, or via ``*_ref``).  ``_sortKeys`` (+/-).
* Paging: ``_pageSize`` (>0 enables), opaque ``_pagedResultsCookie`` (null on the last page; a
  cookie from another query -> 400), ``_pagedResultsOffset``, ``_totalPagedResultsPolicy``
  NONE|EXACT|ESTIMATE; envelope ``result, resultCount, pagedResultsCookie,
  totalPagedResultsPolicy, totalPagedResults (-1 unless counted), remainingPagedResults (-1)``.
* ``_rev`` changes on every write of the object (AIC-like ``<uuid>-<n>``), ``ETag: "<rev>"``;
  ``If-Match`` (quotes optional, ``*`` = any) on PUT/PATCH/DELETE -> 412 when stale, with the OpenIDM
  messages "Update rejected as current Object revision X is different than expected by caller (Y),
  the object has changed since retrieval." / "Delete rejected ...".  No If-Match = unconditional.
* Adding/removing members does NOT change the group's ``_rev`` (seed: PATCH /members/- returned the
  same rev).  DELETE answers 200 with the deleted object / relationship (not 204).
* Members: ``POST .../<gid>/members?_action=create {"_ref":"managed/<realm>_user/<uid>"}`` returns
  the relationship ``{_id,_rev,_ref,_refResourceCollection,_refResourceId,_refProperties:{_id,_rev}}``;
  ``GET .../<gid>/members?_queryFilter=true`` (pageable; ``_fields=_ref/*,name`` adds
  ``_refResourceRev`` and fields of the referenced object); ``DELETE .../<gid>/members/<relId>`` by
  relationship id (a user id there -> 404).  Mirror: ``.../<realm>_user/<uid>/groups``.  PATCH
  ``[{"operation":"add","field":"/members/-","value":{"_ref":..}}]`` (set semantics) and
  ``remove`` with the relationship object.  Conditional groups: members are computed from
  ``condition`` over the users (``_refProperties._grantType: "conditional"``).
* Errors ``{"code","reason","message"}`` (+``detail``).  Object not found -> 404, unknown route ->
  404 "The server has not found anything matching the request URI".

UNCONFIRMED assumptions (defaults, and how to change them)
-----------------------------------------------------------
* Duplicate group name on create: 412 (``--duplicate-status 409`` for older CREST; ``allow`` lets a
  second group with the same name be created when ``--group-id-mode uuid``).  Name comparison and
  all string comparisons in ``_queryFilter`` are case-insensitive (DS caseIgnore;
  ``--case-sensitive`` turns that off).  Renames are not checked for uniqueness.
* ``--group-id-mode name`` (default, seed: ``_id`` == name at creation; it does not follow renames)
  or ``uuid``.
* Static member changes on a group with a non-null ``condition`` (POST members, PATCH /members, or
  DELETE of a conditional relationship): refused 400 "Cannot ... static member ... conditional group"
  (``--conditional-static allow`` lets static edits through).
* Re-adding an existing member through ``POST .../members``: ``--duplicate-member duplicate``
  (default: a second relationship is created), ``error`` (409 Conflict) or ``ignore`` (returns the
  existing relationship, 200).  PATCH add keeps set semantics (no-op) whatever the flag.
* A ``_ref`` to a missing user or to the wrong collection -> 400 Bad Request (``--invalid-ref-status``).
* Policy failures (missing ``name``; missing/duplicate ``userName`` on user create) -> 403
  "Failed policy validation" with ``detail.failedPolicyRequirements``.
* 401 body ``{"code":401,"reason":"Unauthorized","message":"Access Denied"}`` + ``WWW-Authenticate``.
  Token errors use the OAuth2 form ``{"error","error_description"}``: 401 invalid_client, 400
  invalid_request / unsupported_grant_type / invalid_grant / invalid_scope.  A token whose scopes
  lack ``fr:idm:*`` -> 403.
* ``Accept-API-Version`` with a resource major version other than 1, or a protocol < 1 -> 400;
  ``--require-api-version`` makes a missing header a 400 as well.
* PUT without ``members`` keeps existing members (relationships are returnByDefault:false).
* Rate limiting is only injected (POST /__admin/faults): 429 + Retry-After + CREST body
  ``{"code":429,"reason":"Too Many Requests",...}``.  Faults apply to every non-admin request,
  including the token endpoint, unless ``path_prefix`` narrows them.
* ``--max-page-size N`` (emulator knob) caps ``_pageSize``; ``--trailing-empty-page`` returns a
  non-null cookie when a page ends exactly at the end of the results (then an empty last page).

Admin endpoints (no auth): GET /__admin/state, POST /__admin/users, POST /__admin/groups,
POST /__admin/faults (see emulator_common.RequestFaults), POST /__admin/reset, POST /__admin/expire_tokens.
Shared scaffolding (server, handler, admin plumbing): emulator_common.py.
"""

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from json.decoder import scanstring
from urllib.parse import parse_qs, quote, unquote

from emulator_common import (EmulatorHandler, RequestFaults, Response, admin_dispatch, answer,
                             argument_parser, as_list, finish_args, logged_body, q1, run)

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 412: "Precondition Failed",
           428: "Precondition Required", 429: "Too Many Requests", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable"}
NOT_FOUND_URI = "The server has not found anything matching the request URI"
IDM_SCOPE = "fr:idm:*"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class CrestError(Exception):
    def __init__(self, status, message=None, detail=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message or REASONS.get(status, "Error")
        self.detail = detail
        self.headers = headers or {}

    def response(self):
        body = {"code": self.status, "reason": REASONS.get(self.status, "Error"),
                "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return Response(self.status, body, self.headers)


class OAuthError(Exception):
    def __init__(self, status, error, description, headers=None):
        super().__init__(error)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}

    def response(self):
        return Response(self.status, {"error_description": self.description, "error": self.error},
                        dict(self.headers, **{"Cache-Control": "no-store"}))


def policy_error(prop, requirement):
    return CrestError(403, "Failed policy validation", {
        "result": False,
        "failedPolicyRequirements": [{"policyRequirements": [{"policyRequirement": requirement}],
                                      "property": prop}]})


# --------------------------------------------------------------------------------------------
# CREST query filter


class FilterError(ValueError):
    pass


OPS = {"eq", "co", "sw", "lt", "le", "gt", "ge"}


def tokenize(s):
    toks, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
        elif c in "()":
            toks.append((c, c))
            i += 1
        elif c == "!":
            toks.append(("!", "!"))
            i += 1
        elif c == '"':
            try:
                val, i = scanstring(s, i + 1)
            except ValueError as e:
                raise FilterError(f"unterminated string: {e}")
            toks.append(("str", val))
        else:
            j = i
            while j < n and not s[j].isspace() and s[j] not in "()":
                j += 1
            toks.append(("word", s[i:j]))
            i = j
    return toks


class FilterParser:
    def __init__(self, text):
        self.toks = tokenize(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def parse(self):
        if not self.toks:
            raise FilterError("empty filter")
        expr = self.parse_or()
        if self.i != len(self.toks):
            raise FilterError(f"unexpected token {self.peek()[1]!r}")
        return expr

    def parse_or(self):
        items = [self.parse_and()]
        while self.peek() == ("word", "or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else ("or", items)

    def parse_and(self):
        items = [self.parse_not()]
        while self.peek() == ("word", "and"):
            self.take()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else ("and", items)

    def parse_not(self):
        if self.peek()[0] == "!":
            self.take()
            return ("not", self.parse_primary())
        return self.parse_primary()

    def parse_primary(self):
        kind, val = self.take()
        if kind == "(":
            e = self.parse_or()
            if self.take()[0] != ")":
                raise FilterError("missing )")
            return e
        if kind != "word":
            raise FilterError(f"unexpected token {val!r}")
        nxt = self.peek()
        if val in ("true", "false") and (nxt[0] != "word" or nxt[1] in ("and", "or")):
            return ("lit", val == "true")
        pointer = parse_pointer(val)
        okind, op = self.take()
        if okind != "word":
            raise FilterError(f"expected an operator after {val!r}")
        if op == "pr":
            return ("pr", pointer)
        if op not in OPS:
            raise FilterError(f"unsupported operator {op!r}")
        vkind, v = self.take()
        if vkind == "str":
            return ("cmp", pointer, op, v)
        if vkind == "word":
            try:
                lit = json.loads(v)
            except ValueError:
                raise FilterError(f"value {v!r} must be a JSON value (strings double-quoted)")
            if isinstance(lit, (dict, list)):
                raise FilterError("complex values are not supported")
            return ("cmp", pointer, op, lit)
        raise FilterError(f"missing value after {op!r}")


def parse_pointer(text):
    if "[" in text or "]" in text:
        raise FilterError(f"complex JSON pointer {text!r} is not supported")
    parts = [p for p in text.strip("/").split("/") if p != ""]
    if not parts:
        raise FilterError("empty JSON pointer")
    return [p.replace("~1", "/").replace("~0", "~") for p in parts]


def parse_filter(text):
    return FilterParser(text).parse()


_MISSING = object()


def resolve(obj, pointer):
    cur = obj
    for p in pointer:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            return _MISSING
    return cur


def _cmp_one(v, op, want, ci):
    if isinstance(v, str) and isinstance(want, str):
        a, b = (v.casefold(), want.casefold()) if ci else (v, want)
        return {"eq": a == b, "co": b in a, "sw": a.startswith(b), "lt": a < b, "le": a <= b,
                "gt": a > b, "ge": a >= b}[op]
    num = (int, float)
    if (isinstance(v, num) and isinstance(want, num) and not isinstance(v, bool)
            and not isinstance(want, bool)):
        return {"eq": v == want, "lt": v < want, "le": v <= want, "gt": v > want,
                "ge": v >= want}.get(op, False)
    if op == "eq":
        return v == want
    return False


def evaluate(ast, obj, ci=True):
    kind = ast[0]
    if kind == "lit":
        return ast[1]
    if kind == "or":
        return any(evaluate(x, obj, ci) for x in ast[1])
    if kind == "and":
        return all(evaluate(x, obj, ci) for x in ast[1])
    if kind == "not":
        return not evaluate(ast[1], obj, ci)
    if kind == "pr":
        v = resolve(obj, ast[1])
        return v is not _MISSING and v is not None and v != []
    _, pointer, op, want = ast
    v = resolve(obj, pointer)
    if v is _MISSING:
        return False
    if isinstance(v, list):
        return any(_cmp_one(x, op, want, ci) for x in v)
    return _cmp_one(v, op, want, ci)


# --------------------------------------------------------------------------------------------
class State:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.RLock()
        realm = cfg.realm
        self.gname = f"{realm}_group" if realm else "group"
        self.uname = f"{realm}_user" if realm else "user"
        self.gcoll = f"managed/{self.gname}"
        self.ucoll = f"managed/{self.uname}"
        self.reset()

    def reset(self):
        self.rev_prefix = str(uuid.uuid4())
        self.rev_counter = 1000
        self.groups = {}   # id -> stored group (no relationships)
        self.users = {}    # id -> stored user
        self.rels = {}     # relationship id -> {"_id","_rev","group_id","user_id"}
        self.tokens = {}   # token -> {"client_id","scope","expires_at"}
        self.requests = []
        self.faults = RequestFaults()
        self._cond_cache = {}

    def next_rev(self):
        self.rev_counter += 1
        return f"{self.rev_prefix}-{self.rev_counter}"

    # ---- relationships -------------------------------------------------------------------
    def condition_ast(self, cond):
        if cond not in self._cond_cache:
            self._cond_cache[cond] = parse_filter(cond)
        return self._cond_cache[cond]

    def group_rels(self, gid):
        """All relationships of a group: static ones, then computed conditional ones."""
        out = [dict(r, grant="static") for r in self.rels.values() if r["group_id"] == gid]
        g = self.groups[gid]
        if g.get("condition"):
            ast = self.condition_ast(g["condition"])
            for u in self.users.values():
                if evaluate(ast, u, self.cfg.case_insensitive):
                    rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{gid}/{u['_id']}"))
                    out.append({"_id": rid, "_rev": g["_rev"], "group_id": gid,
                                "user_id": u["_id"], "grant": "conditional"})
        return out

    def user_rels(self, uid):
        out = []
        for gid in self.groups:
            out.extend(r for r in self.group_rels(gid) if r["user_id"] == uid)
        return out

    def find_rel(self, rid):
        if rid in self.rels:
            return dict(self.rels[rid], grant="static")
        for gid, g in self.groups.items():
            if g.get("condition"):
                for r in self.group_rels(gid):
                    if r["_id"] == rid:
                        return r
        return None

    def add_rel(self, gid, uid):
        rid = str(uuid.uuid4())
        self.rels[rid] = {"_id": rid, "_rev": self.next_rev(), "group_id": gid, "user_id": uid}
        return dict(self.rels[rid], grant="static")

    def ref(self, coll, oid):
        return f"{coll}/{quote(oid, safe='')}"

    def rel_props(self, r):
        props = {"_id": r["_id"], "_rev": r["_rev"]}
        if r["grant"] == "conditional":
            props["_grantType"] = "conditional"
        return props

    def rel_inline(self, r, side):
        """Relationship as an array element of group.members (side='user') / user.groups."""
        coll, oid = (self.ucoll, r["user_id"]) if side == "user" else (self.gcoll, r["group_id"])
        return {"_ref": self.ref(coll, oid), "_refResourceCollection": coll,
                "_refResourceId": oid, "_refProperties": self.rel_props(r)}

    def rel_item(self, r, side, fields=None):
        """Relationship as a resource of the .../members or .../groups collection."""
        item = {"_id": r["_id"], "_rev": r["_rev"]}
        item.update(self.rel_inline(r, side))
        target = self.users.get(r["user_id"]) if side == "user" else self.groups.get(r["group_id"])
        if fields:
            if "_ref/*" in fields and target:
                item["_refResourceRev"] = target["_rev"]
            for f in fields:
                if f == "*" and target:
                    for k, v in target.items():
                        if not k.startswith("_"):
                            item.setdefault(k, v)
                elif not f.startswith("_") and target and f in target:
                    item[f] = target[f]
        return item

    def parse_ref(self, value, want_coll):
        status = self.cfg.invalid_ref_status
        if not isinstance(value, dict) or not isinstance(value.get("_ref"), str):
            raise CrestError(400, "Relationship value must be an object with a _ref")
        ref = value["_ref"].strip("/")
        coll, _, oid = ref.rpartition("/")
        oid = unquote(oid)
        if coll != want_coll or not oid:
            raise CrestError(status, f"Invalid reference {value['_ref']!r}: expected {want_coll}/<id>")
        store = self.users if want_coll == self.ucoll else self.groups
        if oid not in store:
            raise CrestError(status, f"The referenced object {want_coll}/{oid} does not exist")
        return oid

    # ---- views -----------------------------------------------------------------------------
    def group_full(self, g):
        d = dict(g)
        d["members"] = [self.rel_inline(r, "user") for r in self.group_rels(g["_id"])]
        return d

    def user_full(self, u):
        d = dict(u)
        rels = self.user_rels(u["_id"])
        d["groups"] = [self.rel_inline(r, "group") for r in rels]
        d["effectiveGroups"] = [{"_refResourceCollection": self.gcoll,
                                 "_refResourceId": r["group_id"],
                                 "_ref": self.ref(self.gcoll, r["group_id"])} for r in rels]
        return d

    # ---- admin -----------------------------------------------------------------------------
    def make_user(self, spec, via_api=False):
        user_name = spec.get("userName")
        if not isinstance(user_name, str) or not user_name:
            raise policy_error("userName", "REQUIRED")
        if any(u["userName"].casefold() == user_name.casefold() for u in self.users.values()):
            raise policy_error("userName", "UNIQUE")
        uid = spec.get("_id") or str(uuid.uuid4())
        if uid in self.users:
            raise CrestError(self.cfg.duplicate_status_int(),
                             "Create rejected as Object with same ID already exists and was detected.")
        u = {"_id": uid, "_rev": self.next_rev(), "userName": user_name,
             "mail": spec.get("mail", f"{user_name}@example.com"),
             "givenName": spec.get("givenName", user_name.capitalize()),
             "sn": spec.get("sn", "User"), "accountStatus": spec.get("accountStatus", "active")}
        for k, v in spec.items():
            if k not in ("_id", "_rev", "groups", "effectiveGroups") and k not in u:
                u[k] = v
        self.users[uid] = u
        return u

    def dump(self):
        memberships = []
        groups = []
        for gid, g in self.groups.items():
            rels = self.group_rels(gid)
            members = []
            for r in rels:
                un = self.users[r["user_id"]]["userName"] if r["user_id"] in self.users else None
                m = {"_id": r["_id"], "group_id": gid, "group_name": g["name"],
                     "user_id": r["user_id"], "userName": un, "grant": r["grant"]}
                memberships.append(m)
                members.append(m)
            groups.append(dict(g, members=members))
        now = time.time()
        return {"realm": self.cfg.realm, "group_object": self.gname, "user_object": self.uname,
                "groups": groups, "users": list(self.users.values()), "memberships": memberships,
                "tokens": [{"client_id": t["client_id"], "scope": t["scope"],
                            "expires_in": int(t["expires_at"] - now)}
                           for t in self.tokens.values()],
                "faults": self.faults.dump(), "requests": self.requests}


# --------------------------------------------------------------------------------------------
class App:
    def __init__(self, state, headers, query, body_bytes, host):
        self.s = state
        self.cfg = state.cfg
        self.headers = headers
        self.query = query
        self.body_bytes = body_bytes
        self.host = host

    # ---- helpers ---------------------------------------------------------------------------
    def json_body(self):
        if not self.body_bytes:
            raise CrestError(400, "The request body is empty")
        try:
            return json.loads(self.body_bytes)
        except (ValueError, UnicodeDecodeError):
            raise CrestError(400, "The request could not be parsed as JSON")

    def obj_body(self):
        b = self.json_body()
        if not isinstance(b, dict):
            raise CrestError(400, "The request body must be a JSON object")
        return b

    def fields(self):
        f = q1(self.query, "_fields")
        if f is None or f == "":
            return None
        return [x.strip() for x in f.split(",") if x.strip()]

    def project(self, full, rel_field):
        """full = object incl. its relationship field rel_field; apply _fields."""
        fields = self.fields()
        if fields is None:
            return {k: v for k, v in full.items() if k != rel_field}
        out = {"_id": full["_id"], "_rev": full["_rev"]}
        for f in fields:
            if f == "*":
                out.update({k: v for k, v in full.items() if k != rel_field})
            elif f == "*_ref" or f == rel_field or f.startswith(rel_field + "/"):
                out[rel_field] = full[rel_field]
            elif f in full:
                out[f] = full[f]
        return out

    def etag_headers(self, obj):
        return {"ETag": f'"{obj["_rev"]}"'}

    def check_if_match(self, current_rev, action):
        im = self.headers.get("If-Match")
        if im is None:
            return
        im = im.strip()
        if im.startswith("W/"):
            im = im[2:]
        if len(im) >= 2 and im[0] == '"' and im[-1] == '"':
            im = im[1:-1]
        if im == "*" or im == current_rev:
            return
        if action == "delete":
            msg = (f"Delete rejected as current Object revision {current_rev} is different than "
                   f"expected by caller {im}, the object has changed since retrieval.")
        else:
            msg = (f"Update rejected as current Object revision {current_rev} is different than "
                   f"expected by caller ({im}), the object has changed since retrieval.")
        raise CrestError(412, msg)

    def protocol_create_without_action_ok(self):
        return self.api_version()[0] >= (2, 1)

    def api_version(self):
        hv = self.headers.get("Accept-API-Version")
        protocol, resource = (2, 1), None
        if hv is None:
            if self.cfg.require_api_version:
                raise CrestError(400, "Accept-API-Version header is required (resource=1.0)")
            return protocol, resource
        for part in hv.split(","):
            k, _, v = part.strip().partition("=")
            try:
                ver = tuple(int(x) for x in v.strip().split("."))
            except ValueError:
                raise CrestError(400, f"Malformed Accept-API-Version header: {hv!r}")
            if k.strip() == "protocol":
                protocol = ver
            elif k.strip() == "resource":
                resource = ver
            else:
                raise CrestError(400, f"Malformed Accept-API-Version header: {hv!r}")
        if resource is not None and resource[0] != 1:
            raise CrestError(400, f"Resource version {'.'.join(map(str, resource))} is not supported")
        if protocol < (1, 0) or protocol[0] > 2:
            raise CrestError(400, f"Protocol version {'.'.join(map(str, protocol))} is not supported")
        return protocol, resource

    # ---- query + paging --------------------------------------------------------------------
    def run_query(self, candidates, projector):
        qf = q1(self.query, "_queryFilter")
        qid = q1(self.query, "_queryId")
        if qf is None and qid is None:
            raise CrestError(400, "A query requires either _queryFilter, _queryId or _queryExpression")
        ids_only = False
        if qf is not None:
            try:
                ast = parse_filter(qf)
            except FilterError as e:
                raise CrestError(400, f"Invalid query filter '{qf}': {e}")
        elif qid in ("query-all-ids", "query-all"):
            ast, ids_only = ("lit", True), qid == "query-all-ids"
        else:
            raise CrestError(400, f"Unknown query id {qid!r}")
        matched = [c for c in candidates if evaluate(ast, c, self.cfg.case_insensitive)]
        sort_keys = q1(self.query, "_sortKeys")
        if sort_keys:
            for key in reversed([k.strip() for k in sort_keys.split(",") if k.strip()]):
                desc = key.startswith("-")
                ptr = parse_pointer(key.lstrip("+-"))

                def sk(c, ptr=ptr):
                    v = resolve(c, ptr)
                    if v is _MISSING or v is None:
                        return (0, "")
                    return (1, v.casefold() if isinstance(v, str) else v)
                matched.sort(key=sk, reverse=desc)
        policy = q1(self.query, "_totalPagedResultsPolicy") or "NONE"
        if policy not in ("NONE", "EXACT", "ESTIMATE"):
            raise CrestError(400, f"Invalid _totalPagedResultsPolicy {policy!r}")
        try:
            page_size = int(q1(self.query, "_pageSize") or 0)
            offset = int(q1(self.query, "_pagedResultsOffset") or 0)
        except ValueError:
            raise CrestError(400, "_pageSize and _pagedResultsOffset must be integers")
        if page_size < 0 or offset < 0:
            raise CrestError(400, "_pageSize and _pagedResultsOffset must not be negative")
        qhash = hashlib.sha256(f"{qf}|{qid}|{sort_keys}".encode()).hexdigest()[:12]
        cookie_in = q1(self.query, "_pagedResultsCookie")
        if cookie_in:
            try:
                raw = base64.urlsafe_b64decode(cookie_in + "=" * (-len(cookie_in) % 4)).decode()
                pos, h = raw.split(":", 1)
                offset = int(pos)
                if h != qhash:
                    raise ValueError("cookie from another query")
            except (ValueError, UnicodeDecodeError):
                raise CrestError(400, f"Invalid paged results cookie {cookie_in!r}")
        cookie_out = None
        if page_size > 0:
            size = min(page_size, self.cfg.max_page_size) if self.cfg.max_page_size else page_size
            page = matched[offset:offset + size]
            nxt = offset + len(page)
            more = nxt < len(matched) or (self.cfg.trailing_empty_page and page
                                          and len(page) == size and nxt == len(matched))
            if more:
                cookie_out = base64.urlsafe_b64encode(f"{nxt}:{qhash}".encode()).decode().rstrip("=")
        else:
            page = matched[offset:]
        total = len(matched) if policy in ("EXACT", "ESTIMATE") else -1
        result = [{"_id": c["_id"]} if ids_only else projector(c) for c in page]
        return Response(200, {"result": result, "resultCount": len(result),
                              "pagedResultsCookie": cookie_out, "totalPagedResultsPolicy": policy,
                              "totalPagedResults": total, "remainingPagedResults": -1})

    # ---- groups ----------------------------------------------------------------------------
    def get_group(self, gid):
        g = self.s.groups.get(gid)
        if g is None:
            raise CrestError(404, f"Object {gid} not found in {self.s.gcoll}")
        return g

    def get_user(self, uid):
        u = self.s.users.get(uid)
        if u is None:
            raise CrestError(404, f"Object {uid} not found in {self.s.ucoll}")
        return u

    def validate_group_fields(self, body):
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise policy_error("name", "REQUIRED")
        cond = body.get("condition")
        if cond is not None:
            if not isinstance(cond, str):
                raise policy_error("condition", "VALID_TYPE")
            try:
                self.s.condition_ast(cond)
            except FilterError as e:
                raise CrestError(400, f"Invalid query filter '{cond}' in condition: {e}")

    def name_taken(self, name, except_id=None):
        for g in self.s.groups.values():
            if g["_id"] != except_id and (g["name"].casefold() == name.casefold()
                                          if self.cfg.case_insensitive else g["name"] == name):
                return True
        return False

    def create_group(self, body, new_id=None, status=201):
        self.validate_group_fields(body)
        name = body["name"]
        if new_id is None:
            new_id = body.get("_id") or (name if self.cfg.group_id_mode == "name" else str(uuid.uuid4()))
        dup_status = self.cfg.duplicate_status
        if new_id in self.s.groups or (dup_status != "allow" and self.name_taken(name)):
            raise CrestError(self.cfg.duplicate_status_int(),
                             "Create rejected as Object with same ID already exists and was detected.")
        g = {"_id": new_id, "_rev": self.s.next_rev(), "name": name,
             "condition": body.get("condition"), "description": body.get("description")}
        for k, v in body.items():
            if not k.startswith("_") and k not in ("members", "name", "condition", "description"):
                g[k] = v
        members = body.get("members") or []
        uids = [self.s.parse_ref(m, self.s.ucoll) for m in members]
        if uids and g["condition"] and self.cfg.conditional_static == "refuse":
            raise self.conditional_error(new_id, "add")
        self.s.groups[new_id] = g
        for uid in uids:
            self.s.add_rel(new_id, uid)
        loc = f"http://{self.host}/openidm/managed/{self.s.gname}/{quote(new_id, safe='')}"
        return Response(status, self.project(self.s.group_full(g), "members"),
                        dict(self.etag_headers(g), Location=loc))

    def conditional_error(self, gid, what):
        verb = "add a static member to" if what == "add" else "remove a member from"
        return CrestError(400, f"Cannot {verb} conditional group {self.s.gcoll}/{gid}: membership "
                               f"is defined by its condition")

    def groups_collection(self, method):
        if method == "GET":
            return self.run_query(
                [self.s.group_full(g) for g in self.s.groups.values()],
                lambda full: self.project(full, "members"))
        if method == "POST":
            action = q1(self.query, "_action")
            if action == "create" or (action is None and self.protocol_create_without_action_ok()):
                return self.create_group(self.obj_body())
            if action is None:
                raise CrestError(400, "Action name not specified")
            raise CrestError(400, f"Action {action} not supported on {self.s.gcoll}")
        raise CrestError(405, f"Method {method} not allowed on a collection")

    def group_instance(self, method, gid):
        if method == "GET":
            return self.read_group(gid)
        if method == "PUT":
            return self.put_group(gid)
        if method == "PATCH":
            g = self.get_group(gid)
            self.check_if_match(g["_rev"], "update")
            ops = self.json_body()
            self.apply_patch(g, ops, "group")
            return Response(200, self.project(self.s.group_full(g), "members"), self.etag_headers(g))
        if method == "DELETE":
            g = self.get_group(gid)
            self.check_if_match(g["_rev"], "delete")
            out = self.project(self.s.group_full(g), "members")
            del self.s.groups[gid]
            for rid in [r for r, v in self.s.rels.items() if v["group_id"] == gid]:
                del self.s.rels[rid]
            return Response(200, out, self.etag_headers(g))
        if method == "POST":
            raise CrestError(400, f"Action {q1(self.query, '_action')} not supported")
        raise CrestError(405)

    def read_group(self, gid):
        g = self.get_group(gid)
        return Response(200, self.project(self.s.group_full(g), "members"), self.etag_headers(g))

    def put_group(self, gid):
        inm = self.headers.get("If-None-Match")
        body = self.obj_body()
        if inm is not None:
            if inm.strip() != "*":
                raise CrestError(400, "If-None-Match must be * for create requests")
            if gid in self.s.groups:
                raise CrestError(412, "Create rejected as Object with same ID already exists and was detected.")
            return self.create_group(body, new_id=gid)
        g = self.s.groups.get(gid)
        if g is None:
            im = self.headers.get("If-Match")
            if im is not None and im.strip() != "*":
                raise CrestError(404, f"Object {gid} not found in {self.s.gcoll}")
            return self.create_group(body, new_id=gid)
        self.check_if_match(g["_rev"], "update")
        self.validate_group_fields(body)
        new = {"_id": gid, "_rev": g["_rev"], "name": body["name"],
               "condition": body.get("condition"), "description": body.get("description")}
        for k, v in body.items():
            if not k.startswith("_") and k != "members" and k not in new:
                new[k] = v
        if "members" in body:
            uids = [self.s.parse_ref(m, self.s.ucoll) for m in (body["members"] or [])]
            if new["condition"] and uids and self.cfg.conditional_static == "refuse":
                raise self.conditional_error(gid, "add")
            for rid in [r for r, v in self.s.rels.items() if v["group_id"] == gid]:
                del self.s.rels[rid]
            for uid in uids:
                self.s.add_rel(gid, uid)
        changed = {k: v for k, v in new.items() if k != "_rev"} != \
            {k: v for k, v in g.items() if k != "_rev"}
        g.clear()
        g.update(new)
        if changed:
            g["_rev"] = self.s.next_rev()
        return Response(200, self.project(self.s.group_full(g), "members"), self.etag_headers(g))

    # ---- PATCH -----------------------------------------------------------------------------
    def apply_patch(self, obj, ops, kind):
        if not isinstance(ops, list):
            raise CrestError(400, "The PATCH request body must be a JSON array of operations")
        rel_field = "members" if kind == "group" else "groups"
        other_coll = self.s.ucoll if kind == "group" else self.s.gcoll
        work = dict(obj)
        rel_adds, rel_removes, rel_replace = [], [], None
        for op in ops:
            if not isinstance(op, dict) or not isinstance(op.get("operation"), str) \
                    or not isinstance(op.get("field"), str):
                raise CrestError(400, "Each patch operation needs 'operation' and 'field'")
            operation, field = op["operation"], op["field"]
            if operation not in ("add", "remove", "replace", "increment", "copy", "move", "transform"):
                raise CrestError(400, f"Unknown patch operation {operation!r}")
            parts = [p for p in field.strip("/").split("/") if p != ""]
            if not parts:
                raise CrestError(400, "Patching the whole object is not supported")
            if parts[0] == rel_field:
                if operation == "add":
                    if len(parts) == 2 and parts[1] != "-":
                        raise CrestError(400, "Only the '-' index is supported for relationship add")
                    if len(parts) > 2:
                        raise CrestError(400, f"Unsupported field {field!r}")
                    vals = op.get("value")
                    vals = vals if isinstance(vals, list) else [vals]
                    rel_adds.extend(self.s.parse_ref(v, other_coll) for v in vals)
                elif operation == "remove":
                    if len(parts) != 1:
                        raise CrestError(400, "Remove a relationship with field /%s and a value" % rel_field)
                    if "value" in op:
                        vals = op["value"] if isinstance(op["value"], list) else [op["value"]]
                        rel_removes.extend(vals)
                    else:
                        rel_replace = []
                elif operation == "replace":
                    if len(parts) != 1:
                        raise CrestError(400, f"Unsupported field {field!r}")
                    vals = op.get("value") or []
                    vals = vals if isinstance(vals, list) else [vals]
                    rel_replace = [self.s.parse_ref(v, other_coll) for v in vals]
                else:
                    raise CrestError(400, f"Operation {operation} not supported on relationships")
                continue
            if parts[0] in ("_id", "_rev", "effectiveGroups") or len(parts) != 1:
                raise CrestError(400, f"Field {field!r} cannot be patched")
            key = parts[0]
            if operation in ("add", "replace"):
                if "value" not in op:
                    raise CrestError(400, f"Operation {operation} needs a value")
                work[key] = op["value"]
            elif operation == "remove":
                if key in ("name", "userName"):
                    raise policy_error(key, "REQUIRED")
                if key in ("description", "condition", "mail", "givenName", "sn"):
                    work[key] = None
                else:
                    work.pop(key, None)
            elif operation == "increment":
                cur = work.get(key) or 0
                if not isinstance(cur, (int, float)) or not isinstance(op.get("value"), (int, float)):
                    raise CrestError(400, f"Cannot increment {field!r}")
                work[key] = cur + op["value"]
            else:
                raise CrestError(400, f"Operation {operation} is not supported by this emulator")
        # validate
        if kind == "group":
            self.validate_group_fields(work)
        else:
            if not isinstance(work.get("userName"), str) or not work["userName"]:
                raise policy_error("userName", "REQUIRED")
            if any(u["_id"] != obj["_id"] and u["userName"].casefold() == work["userName"].casefold()
                   for u in self.s.users.values()):
                raise policy_error("userName", "UNIQUE")
        # relationship changes
        oid = obj["_id"]
        if kind == "group":
            current = [r for r in self.s.rels.values() if r["group_id"] == oid]
            cond = work.get("condition")
            key_of = lambda r: r["user_id"]  # noqa: E731
        else:
            current = [r for r in self.s.rels.values() if r["user_id"] == oid]
            cond = None
            key_of = lambda r: r["group_id"]  # noqa: E731

        def group_conditional(gid):
            return bool(self.s.groups[gid].get("condition"))

        def refuse(gid, what):
            if self.cfg.conditional_static == "refuse":
                raise self.conditional_error(gid, what)

        to_delete, to_add = [], []
        if rel_replace is not None:
            to_delete.extend(r["_id"] for r in current)
            to_add.extend(rel_replace)
        for v in rel_removes:
            rid = (v.get("_refProperties") or {}).get("_id") if isinstance(v, dict) else None
            target = None
            if isinstance(v, dict) and isinstance(v.get("_ref"), str):
                target = unquote(v["_ref"].strip("/").rpartition("/")[2])
            matched = [r for r in current if (rid and r["_id"] == rid)
                       or (not rid and target and key_of(r) == target)]
            if not matched and rid:
                cr = self.s.find_rel(rid)
                if cr and cr["grant"] == "conditional":
                    refuse(cr["group_id"], "remove")
            to_delete.extend(r["_id"] for r in matched)
        existing = {key_of(r) for r in current if r["_id"] not in to_delete}
        for other in rel_adds:
            if other in existing:
                continue   # set semantics
            gid = oid if kind == "group" else other
            is_cond = bool(cond) if kind == "group" else group_conditional(gid)
            if is_cond:
                refuse(gid, "add")
            existing.add(other)
            to_add.append(other)
        for other in rel_replace or []:
            gid = oid if kind == "group" else other
            if bool(cond) if kind == "group" else group_conditional(gid):
                refuse(gid, "add")
        # commit
        changed = {k: v for k, v in work.items() if k != "_rev"} != \
            {k: v for k, v in obj.items() if k != "_rev"}
        obj.clear()
        obj.update(work)
        if changed:
            obj["_rev"] = self.s.next_rev()
        for rid in to_delete:
            self.s.rels.pop(rid, None)
        seen = set()
        for other in to_add:
            if other in seen:
                continue
            seen.add(other)
            if kind == "group":
                self.s.add_rel(oid, other)
            else:
                self.s.add_rel(other, oid)

    # ---- relationship collections ---------------------------------------------------------
    def rel_collection(self, method, kind, oid):
        if kind == "group":
            self.get_group(oid)
            rels = self.s.group_rels(oid)
            side, other_coll = "user", self.s.ucoll
        else:
            self.get_user(oid)
            rels = self.s.user_rels(oid)
            side, other_coll = "group", self.s.gcoll
        fields = self.fields()
        if method == "GET":
            views = []
            for r in rels:
                target = (self.s.users.get(r["user_id"]) if side == "user"
                          else self.s.groups.get(r["group_id"])) or {}
                merged = {k: v for k, v in target.items() if not k.startswith("_")}
                merged.update(self.s.rel_item(r, side, fields))
                merged["__rel"] = r
                views.append(merged)
            return self.run_query(views, lambda v: self.s.rel_item(v["__rel"], side, fields))
        if method == "POST":
            action = q1(self.query, "_action")
            if not (action == "create" or (action is None and self.protocol_create_without_action_ok())):
                raise CrestError(400, f"Action {action} not supported on relationships")
            body = self.obj_body()
            other = self.s.parse_ref(body, other_coll)
            gid, uid = (oid, other) if kind == "group" else (other, oid)
            if self.s.groups[gid].get("condition") and self.cfg.conditional_static == "refuse":
                raise self.conditional_error(gid, "add")
            existing = [r for r in self.s.rels.values() if r["group_id"] == gid and r["user_id"] == uid]
            if existing:
                mode = self.cfg.duplicate_member
                if mode == "error":
                    raise CrestError(409, f"{self.s.ucoll}/{uid} is already a member of "
                                          f"{self.s.gcoll}/{gid}")
                if mode == "ignore":
                    r = dict(existing[0], grant="static")
                    return Response(200, self.s.rel_item(r, side), {"ETag": f'"{r["_rev"]}"'})
            r = self.s.add_rel(gid, uid)
            return Response(201, self.s.rel_item(r, side), {"ETag": f'"{r["_rev"]}"'})
        raise CrestError(405, f"Method {method} not allowed on a relationship collection")

    def rel_instance(self, method, kind, oid, rid):
        if kind == "group":
            self.get_group(oid)
            rels = self.s.group_rels(oid)
            side = "user"
        else:
            self.get_user(oid)
            rels = self.s.user_rels(oid)
            side = "group"
        r = next((x for x in rels if x["_id"] == rid), None)
        if r is None:
            raise CrestError(404, f"Relationship {rid} not found")
        if method == "GET":
            return Response(200, self.s.rel_item(r, side, self.fields()), {"ETag": f'"{r["_rev"]}"'})
        if method == "DELETE":
            if r["grant"] == "conditional":
                raise self.conditional_error(r["group_id"], "remove")
            self.check_if_match(r["_rev"], "delete")
            del self.s.rels[rid]
            return Response(200, self.s.rel_item(r, side), {"ETag": f'"{r["_rev"]}"'})
        raise CrestError(405, f"Method {method} not supported on a relationship by this emulator")

    # ---- users -----------------------------------------------------------------------------
    def users_collection(self, method):
        if method == "GET":
            return self.run_query([self.s.user_full(u) for u in self.s.users.values()],
                                  lambda full: self.project(full, "groups"))
        if method == "POST":
            action = q1(self.query, "_action")
            if not (action == "create" or (action is None and self.protocol_create_without_action_ok())):
                raise CrestError(400, f"Action {action} not supported on {self.s.ucoll}")
            body = self.obj_body()
            u = self.s.make_user(body, via_api=True)
            loc = f"http://{self.host}/openidm/managed/{self.s.uname}/{u['_id']}"
            return Response(201, self.project(self.s.user_full(u), "groups"),
                            dict(self.etag_headers(u), Location=loc))
        raise CrestError(405)

    def user_instance(self, method, uid):
        u = self.get_user(uid)
        if method == "GET":
            return Response(200, self.project(self.s.user_full(u), "groups"), self.etag_headers(u))
        if method == "PATCH":
            self.check_if_match(u["_rev"], "update")
            self.apply_patch(u, self.json_body(), "user")
            return Response(200, self.project(self.s.user_full(u), "groups"), self.etag_headers(u))
        if method == "DELETE":
            self.check_if_match(u["_rev"], "delete")
            out = self.project(self.s.user_full(u), "groups")
            del self.s.users[uid]
            for rid in [r for r, v in self.s.rels.items() if v["user_id"] == uid]:
                del self.s.rels[rid]
            return Response(200, out, self.etag_headers(u))
        raise CrestError(405, f"Method {method} not supported on users by this emulator")

    # ---- token endpoint --------------------------------------------------------------------
    def token(self):
        ctype = (self.headers.get("Content-Type") or "").lower()
        if not ctype.startswith("application/x-www-form-urlencoded"):
            raise OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
        form = {k: v[0] for k, v in parse_qs(self.body_bytes.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        basic_id = basic_secret = None
        auth = self.headers.get("Authorization")
        if auth and auth.lower().startswith("basic "):
            try:
                dec = base64.b64decode(auth[6:].strip()).decode()
                basic_id, _, basic_secret = dec.partition(":")
                basic_id, basic_secret = unquote(basic_id), unquote(basic_secret)
            except (ValueError, UnicodeDecodeError):
                raise OAuthError(400, "invalid_request", "Malformed Basic authorization header")
        grant = form.get("grant_type")
        if not grant:
            raise OAuthError(400, "invalid_request", "Grant type is not set")
        if grant == "client_credentials":
            if basic_id is not None and form.get("client_id") not in (None, basic_id):
                raise OAuthError(400, "invalid_request", "Client authentication methods conflict")
            cid = basic_id if basic_id is not None else form.get("client_id")
            csec = basic_secret if basic_id is not None else form.get("client_secret")
            if cid != self.cfg.client_id or csec != self.cfg.client_secret:
                hdr = {"WWW-Authenticate": 'Basic realm="oauth2"'} if basic_id is not None else {}
                raise OAuthError(401, "invalid_client", "Client authentication failed", hdr)
        elif grant == JWT_BEARER:
            cid = form.get("client_id")
            if cid != "service-account":
                raise OAuthError(401, "invalid_client", "Client authentication failed")
            self.check_assertion(form.get("assertion"))
        else:
            raise OAuthError(400, "unsupported_grant_type", f"Grant type is not supported: {grant}")
        allowed = self.cfg.scope.split()
        requested = (form.get("scope") or "").split() or allowed
        bad = [s for s in requested if s not in allowed]
        if bad:
            raise OAuthError(400, "invalid_scope", f"Unknown/invalid scope(s): {bad}")
        token = secrets.token_urlsafe(32)
        self.s.tokens[token] = {"client_id": cid, "scope": " ".join(requested),
                                "expires_at": time.time() + self.cfg.token_ttl}
        return Response(200, {"access_token": token, "scope": " ".join(requested),
                              "token_type": "Bearer", "expires_in": int(self.cfg.token_ttl)},
                        {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def check_assertion(self, assertion):
        if not assertion:
            raise OAuthError(400, "invalid_request", "Missing assertion")
        try:
            parts = assertion.split(".")
            if len(parts) != 3:
                raise ValueError("not a JWS")
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (ValueError, UnicodeDecodeError):
            raise OAuthError(400, "invalid_grant", "Assertion is not a valid JWT")
        sa = self.cfg.service_account_id
        if not claims.get("iss") or claims.get("iss") != claims.get("sub") or (sa and claims["iss"] != sa):
            raise OAuthError(400, "invalid_grant", "JWT iss/sub do not name the service account")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.endswith("/am/oauth2/access_token") for a in auds):
            raise OAuthError(400, "invalid_grant", "JWT aud is not the token endpoint")
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < time.time():
            raise OAuthError(400, "invalid_grant", "JWT has expired")

    def authenticate(self):
        auth = self.headers.get("Authorization") or ""
        denied = CrestError(401, "Access Denied", headers={"WWW-Authenticate": 'Bearer realm="openidm"'})
        if not auth.startswith("Bearer "):
            raise denied
        tok = auth[7:].strip()
        if self.cfg.static_token and tok == self.cfg.static_token:
            return
        info = self.s.tokens.get(tok)
        if info is None or info["expires_at"] <= time.time():
            raise denied
        if IDM_SCOPE not in info["scope"].split():
            raise CrestError(403, "Access Denied: token lacks scope fr:idm:*")

    # ---- dispatch --------------------------------------------------------------------------
    def dispatch(self, method, path):
        if method == "POST" and self.is_token_path(path):
            return self.token()
        if not path.startswith("/openidm/"):
            raise CrestError(404, NOT_FOUND_URI)
        self.authenticate()
        self.api_version()
        rest = path[len("/openidm/managed/"):] if path.startswith("/openidm/managed/") else None
        if rest is None:
            raise CrestError(404, NOT_FOUND_URI)
        parts = [unquote(p) for p in rest.rstrip("/").split("/")] if rest.strip("/") else []
        if not parts or parts[0] not in (self.s.gname, self.s.uname):
            raise CrestError(404, NOT_FOUND_URI)
        kind = "group" if parts[0] == self.s.gname else "user"
        rel_name = "members" if kind == "group" else "groups"
        if len(parts) == 1:
            return self.groups_collection(method) if kind == "group" else self.users_collection(method)
        if len(parts) == 2:
            return self.group_instance(method, parts[1]) if kind == "group" \
                else self.user_instance(method, parts[1])
        if parts[2] != rel_name or len(parts) > 4:
            raise CrestError(404, NOT_FOUND_URI)
        if len(parts) == 3:
            return self.rel_collection(method, kind, parts[1])
        return self.rel_instance(method, kind, parts[1], parts[3])

    def is_token_path(self, path):
        p = path.rstrip("/")
        return p in ("/am/oauth2/access_token", "/am/oauth2/realms/root/access_token",
                     f"/am/oauth2/realms/root/realms/{self.cfg.am_realm}/access_token",
                     f"/am/oauth2/{self.cfg.am_realm}/access_token")


# --------------------------------------------------------------------------------------------
def admin_users(state, body):
    """POST /__admin/users body: [{"userName": "jdoe", "mail"?, "givenName"?, "sn"?, "_id"?,
    "accountStatus"?, ...any extra searchable property e.g. "country"}] -> 200 [stored users]"""
    return [state.make_user(spec) for spec in as_list(body)]


def admin_groups(state, body):
    """POST /__admin/groups body: [{"name": "employees", "description"?, "condition"?, "_id"?
    (default: name, or a UUID with --group-id-mode uuid), "members"?: [userName or user _id]}]
    -> 200 [group + "members": [{"_id": relationship id, "user_id", "userName", "grant"}]]"""
    out = []
    for spec in as_list(body):
        name = spec.get("name")
        if not name:
            raise ValueError("name required")
        gid = spec.get("_id") or (name if state.cfg.group_id_mode == "name" else str(uuid.uuid4()))
        if gid in state.groups:
            raise ValueError(f"group {gid!r} exists")
        if spec.get("condition"):
            state.condition_ast(spec["condition"])
        g = {"_id": gid, "_rev": state.next_rev(), "name": name,
             "condition": spec.get("condition"), "description": spec.get("description")}
        for k, v in spec.items():
            if k not in g and k != "members":
                g[k] = v
        state.groups[gid] = g
        for ref in spec.get("members", []):
            u = state.users.get(ref) or next((x for x in state.users.values()
                                              if x["userName"] == ref), None)
            if u is None:
                raise ValueError(f"unknown user {ref!r}")
            state.add_rel(gid, u["_id"])
        members = [{"_id": r["_id"], "user_id": r["user_id"],
                    "userName": state.users[r["user_id"]]["userName"], "grant": r["grant"]}
                   for r in state.group_rels(gid)]
        out.append(dict(g, members=members))
    return out


def admin_error_body(e):
    if isinstance(e, CrestError):
        return {"error": e.message, "detail": e.detail}
    return {"error": str(e)}


def admin_expire_tokens(state):
    for t in state.tokens.values():
        t["expires_at"] = 0
    return {"expired": len(state.tokens)}


class Handler(EmulatorHandler):
    server_version = "ForgeRockIDMEmulator/1.0"
    content_type = "application/json;charset=utf-8"

    def handle_admin(self, method, path, body):
        state = self.state
        return admin_dispatch(state, method, path, body, {
            ("POST", "/__admin/users"): lambda data: admin_users(state, data or []),
            ("POST", "/__admin/groups"): lambda data: admin_groups(state, data or []),
            ("POST", "/__admin/expire_tokens"): lambda data: admin_expire_tokens(state),
        }, errors=(CrestError,), error_body=admin_error_body)

    def handle_api(self, method, split, query, body):
        state, path = self.state, split.path
        resp = state.faults.check(method, path,
                                  lambda: CrestError(429, "Too Many Requests").response(),
                                  lambda status: CrestError(status, "Injected failure").response())
        app = App(state, self.headers, query, body, self.headers.get("Host") or "127.0.0.1")
        if resp is None:
            resp = answer(lambda: app.dispatch(method, path), (CrestError, OAuthError),
                          lambda e: CrestError(500, f"emulator error: {e}").response())
        state.requests.append({
            "method": method, "path": path, "query": split.query, "status": resp.status,
            "body": log_body(body, app.is_token_path(path)),
            "if_match": self.headers.get("If-Match"),
            "if_none_match": self.headers.get("If-None-Match"),
            "accept_api_version": self.headers.get("Accept-API-Version"),
        })
        return resp


def log_body(body, is_token):
    if body and is_token:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        for secret in ("client_secret", "assertion"):
            if secret in form:
                form[secret] = "<redacted>"
        return form
    return logged_body(body)



def parse_args(argv=None):
    ap = argument_parser("ForgeRock AIC / PingIDM managed groups emulator")
    ap.add_argument("--realm", default="alpha",
                    help='managed object prefix: alpha -> alpha_group; "" -> group/user')
    ap.add_argument("--am-realm", default="alpha",
                    help="AM realm in /am/oauth2/realms/root/realms/<am-realm>/access_token")
    ap.add_argument("--client-id", default="idm-provisioning")
    ap.add_argument("--client-secret", default="idm-provisioning-secret")
    ap.add_argument("--scope", default=IDM_SCOPE, help="space-separated scopes the client may get")
    ap.add_argument("--token-ttl", type=float, default=3599, help="seconds")
    ap.add_argument("--static-token", default=None, help="bearer token that is always valid")
    ap.add_argument("--service-account-id", default=None,
                    help="jwt-bearer grant: required iss/sub (default: any)")
    ap.add_argument("--require-api-version", action="store_true",
                    help="missing Accept-API-Version -> 400")
    ap.add_argument("--group-id-mode", choices=["name", "uuid"], default="name")
    ap.add_argument("--duplicate-status", choices=["412", "409", "allow"], default="412")
    ap.add_argument("--duplicate-member", choices=["duplicate", "error", "ignore"], default="duplicate")
    ap.add_argument("--conditional-static", choices=["refuse", "allow"], default="refuse")
    ap.add_argument("--invalid-ref-status", type=int, default=400)
    ap.add_argument("--case-sensitive", dest="case_insensitive", action="store_false",
                    help="string comparisons in _queryFilter and name uniqueness are case-sensitive")
    ap.add_argument("--max-page-size", type=int, default=0, help="cap on _pageSize (0 = none)")
    ap.add_argument("--trailing-empty-page", action="store_true")
    cfg = finish_args(ap, argv)
    cfg.duplicate_status_int = lambda: 409 if cfg.duplicate_status == "409" else 412
    return cfg


if __name__ == "__main__":
    run(parse_args, Handler, State)
