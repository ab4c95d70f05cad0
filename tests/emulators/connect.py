#!/usr/bin/env python3
"""Posit Connect users/groups API emulator for ldapsync tests (stdlib only, python3.11).

Written from the Posit Connect API reference (see docs/connect.md).

Process contract
----------------
    python3 tests/emulators/connect.py [--port 0] [options]
binds 127.0.0.1, prints exactly one line ``LISTENING http://127.0.0.1:PORT`` (flushed) and serves
until killed.  The API lives under ``/__api__``; admin endpoints (no auth) under ``/__admin``.

From the spec (faithful)
------------------------
* Auth header ``Authorization: Key <key>`` (the space matters).  Missing / other scheme / wrong key
  -> 401 ``{"code":24,"error":"The requested operation requires authentication.","payload":null}``.
* Error body ``{"code","error","payload":null}`` with the code/HTTP status/message table of spec 1.2.
* Creates answer **200** with the object (not 201); member add/remove and group delete answer **204**
  with an empty body; lock answers 200 with an empty body.
* Offset paging envelope ``{"results","current_page","total"}``; ``page_number`` (>=1, default 1),
  ``page_size`` (1..500, default 20; 10 for members), ``asc_order``.  Out of range -> 400.
* ``GET /v1/groups?prefix=`` pre-2025.04.0 ignores ``page_number`` (always page 1: the "page that
  repeats").  ``GET /v1/users?prefix=`` returns empty pages after the first one.
* Prefix on /v1/groups and /v1/users is case-insensitive, and may also be an exact DN / unique ID.
* LDAP: ``GET /v1/groups/remote`` is a fuzzy, case-insensitive prefix search ordered by similarity,
  ``guid`` null for directory groups not yet in Connect, opaque ``temp_ticket``; ``limit`` (1..500,
  default 20) and no page_number; ``PUT /v1/groups {temp_ticket}`` creates it (owner_guid null,
  members populated from the directory); a ticket for a group already in Connect ->
  400 code 131 "A group using the same unique ID already exists."; unknown ticket -> 400 code 127.
* Per-provider matrix of spec 2.4: POST /v1/groups on LDAP -> 400 code 120 (PushOnPullAuth);
  PUT /v1/groups or /v1/users on push providers -> 400 code 119 (PullOnPushAuth); POST /v1/users on
  LDAP / OAuth2-Google -> 400 code 120; duplicate group name -> 409 code 15; duplicate member ->
  409 code 16; duplicate username -> 409 code 8; owner_guid always null for LDAP groups and for
  SAML/OAuth2/Proxied with group provisioning; PATCH (rename) refused on LDAP; members of LDAP groups
  cannot be listed nor changed; members cannot be changed when the provider supplies membership
  (``--groups-auto-provision``); no DELETE for users (lock instead).
* ``GET /__api__/server_settings`` (unversioned) reports version + the ``authentication`` flags.
* Newer optional fields (``gid``, ``member_count`` on groups, ``external_id`` on users) only with
  ``--modern-fields`` (clients must tolerate both).

UNCONFIRMED assumptions (defaults chosen, how to change them)
---------------------------------------------------------------
* Refusal codes for operations the provider does not allow (remote search on push providers, member
  list/add/remove on LDAP or with provider-owned membership, PATCH name on LDAP, PATCH gid on
  Password/PAM/Proxied): 400 code 132 "The configured provider cannot access this endpoint."
* Unknown group GUID -> 404 code 4 (not 153); unknown user GUID -> 404 code 9; malformed GUIDs are
  treated as unknown (404), not 400 code 3.
* Removing a user who is not a member -> 404 code 17.  PUT /v1/users with a ticket for a user already
  in Connect -> 400 code 76.  Unparseable JSON body -> 400 code 87.  Missing required field -> 400
  code 12.  Bad paging / bad parameter / unique_id without GroupsByUniqueId / owner_guid rule
  violation -> 400 code 25.
* Group name uniqueness is case-sensitive (like usernames).  Remote search returns ``total`` = number
  of matches before ``limit`` (so it is not len(results)); remote-only users carry ``guid``,
  ``user_role`` and the time fields as null.  Tickets never expire (``--ticket-ttl SECONDS``).
* Remote search matches names *starting with* the prefix (``--remote-match substring`` widens it).
  ``--remote-max-results N`` makes searches with more than N matches fail 400 code 83.
* In buggy prefix paging the repeated first page reports ``current_page: 1``.
* Rate limiting (only via /__admin/faults): 429 + ``Retry-After`` + body code 277 "Rate limit
  exceeded.".  Injected 5xx use code 1 "An internal failure occurred.".
* ``server_settings`` needs no API key (the login page reads it); ``--server-settings-auth`` requires
  one.  Provider display names other than "LDAP"/"OAuth2" ("SAML", "Password", "PAM", "Proxy").
  ``external_user_search`` is false for generic OAuth2 (the only public fixture, an "OAuth2" server,
  says true: it was probably Google) and true for ``oauth2-google``.
* With ``--ldap-local-groups`` (LDAP without GroupSearchBaseDN) groups behave like Password groups
  (POST, members, rename allowed; remote group search refused).
* A built-in administrator user (``--admin-username``, default ``admin``) owns ``--api-key``; it is
  listed by /v1/users (and, for LDAP/Google, exists in the directory too).
* Roles: ``--publisher-key`` / ``--viewer-key`` add such users.  Viewers get 403 code 22 on writes
  and remote searches; publishers get 403 code 22 on user creation/lock and on changing groups they
  do not own.
* ``--page-size N`` is an emulator knob: it caps every page at N items whatever ``page_size`` asks
  (real Connect returns exactly page_size), so paging can be exercised with few objects.

Options: see ``--help``.
Admin endpoints (no auth): GET /__admin/state, POST /__admin/users, POST /__admin/groups,
POST /__admin/faults, POST /__admin/reset (shapes in the docstrings of the admin_* functions; faults:
emulator_common.RequestFaults).  Shared scaffolding (server, handler, admin plumbing): emulator_common.py.
"""

import base64
import datetime as _dt
import json
import re
import secrets
import threading
import time
import uuid
from urllib.parse import unquote

from emulator_common import (EmulatorHandler, RequestFaults, Response, admin_dispatch, answer,
                             argument_parser, as_list, finish_args, logged_body, q1, run)

# --------------------------------------------------------------------------------------------
# Error table (spec 1.2): code -> (HTTP status, message)
ERRORS = {
    1: (500, "An internal failure occurred."),
    2: (404, "The requested method or endpoint is not supported."),
    3: (400, "The requested object ID is invalid."),
    4: (404, "The requested object does not exist."),
    7: (400, "The requested username is not permitted."),
    8: (409, "The requested username is already in use. Usernames are case sensitive. "
             "Please ensure you are using the correct case."),
    9: (404, "The requested user could not be found."),
    12: (400, "A required parameter is missing."),
    14: (400, "Group name must be between less than 4096 alphanumeric characters."),
    15: (409, "The requested group name is already in use."),
    16: (409, "The user is already a member of the group."),
    17: (404, "The requested item could not be removed because it does not exist."),
    18: (404, "The requested item could not be changed because it does not exist."),
    19: (403, "You don't have permission to access this item."),
    20: (403, "You don't have permission to remove this item."),
    21: (403, "You don't have permission to change this item."),
    22: (403, "You don't have permission to perform this operation."),
    23: (403, "You don't have permission to give the user this role."),
    24: (401, "The requested operation requires authentication."),
    25: (400, "The parameter is invalid."),
    46: (400, "Internal user fields cannot be changed via API."),
    49: (403, "You don't have permission to lock/unlock this user."),
    76: (400, "A user using the same Unique ID already exists"),
    83: (400, "Too many search results. Be more specific."),
    87: (400, "The request body cannot be parsed"),
    112: (400, "The provided user role is not recognized."),
    119: (400, "The authentication provider does not support creating records from a retrieved "
               "ticket. POST new content instead."),
    120: (400, "The authentication provider does not support creating records from POST content. "
               "PUT a retrieved ticket instead."),
    121: (400, "The request JSON is invalid."),
    127: (400, "The temp_ticket is invalid."),
    129: (400, "The user unique ID cannot be blank."),
    130: (400, "The group unique ID cannot be blank."),
    131: (400, "A group using the same unique ID already exists."),
    132: (400, "The configured provider cannot access this endpoint."),
    153: (404, "The requested group could not be found."),
    277: (429, "Rate limit exceeded."),  # UNCONFIRMED status and message
}

PUSH_PROVIDERS = {"saml", "oauth2", "password", "pam", "proxy"}
PROVIDERS = ["ldap", "saml", "oauth2", "oauth2-google", "password", "pam", "proxy"]
PROVIDER_NAMES = {"ldap": "LDAP", "saml": "SAML", "oauth2": "OAuth2", "oauth2-google": "OAuth2",
                  "password": "Password", "pam": "PAM", "proxy": "Proxy"}
ROLES = ("viewer", "publisher", "administrator")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
GUID_RE = r"[^/]+"


class ApiError(Exception):
    def __init__(self, code, status=None, message=None, headers=None):
        super().__init__(code)
        st, msg = ERRORS.get(code, (400, "Error."))
        self.code = code
        self.status = status or st
        self.message = message or msg
        self.headers = headers or {}

    def response(self):
        return Response(self.status, {"code": self.code, "error": self.message, "payload": None},
                        self.headers)


def now_rfc3339():
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_tuple(v):
    out = []
    for part in re.split(r"[.\-]", v):
        try:
            out.append(int(part))
        except ValueError:
            break
    return tuple(out)


# --------------------------------------------------------------------------------------------
class State:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.RLock()
        self.reset()

    # ---- provider capabilities ------------------------------------------------------------
    @property
    def provider(self):
        return self.cfg.provider

    def ldap_remote_groups(self):
        return self.provider == "ldap" and not self.cfg.ldap_local_groups

    def has_directory_users(self):
        return self.provider in ("ldap", "oauth2-google")

    def provider_owns_membership(self):
        if self.provider == "ldap":
            return not self.cfg.ldap_local_groups
        if self.provider in ("saml", "oauth2", "oauth2-google", "proxy"):
            return self.cfg.groups_auto_provision
        return False

    def groups_by_unique_id(self):
        return self.cfg.groups_by_unique_id and self.provider in ("saml", "oauth2", "oauth2-google",
                                                                  "proxy")

    # ---- lifecycle ------------------------------------------------------------------------
    def reset(self):
        self.users = {}        # guid -> user record
        self.groups = {}       # guid -> group record
        self.members = {}      # group guid -> [user guid]
        self.dir_users = {}    # unique_id -> directory user
        self.dir_groups = {}   # unique_id -> directory group {name, dn, unique_id, members:[uid]}
        self.tickets = {}      # ticket -> (kind, unique_id, created)
        self.keys = {}         # api key -> user guid
        self.requests = []
        self.faults = RequestFaults()
        admin = self.add_user({"username": self.cfg.admin_username, "user_role": "administrator"})
        self.keys[self.cfg.api_key] = admin["guid"]
        if self.cfg.publisher_key:
            u = self.add_user({"username": "publisher", "user_role": "publisher"})
            self.keys[self.cfg.publisher_key] = u["guid"]
        if self.cfg.viewer_key:
            u = self.add_user({"username": "viewer", "user_role": "viewer"})
            self.keys[self.cfg.viewer_key] = u["guid"]

    # ---- users ----------------------------------------------------------------------------
    def add_user(self, spec, in_connect=True):
        username = spec.get("username")
        if not username:
            raise ValueError("username required")
        dn = spec.get("dn") or f"uid={username},ou=People,dc=example,dc=com"
        unique_id = spec.get("unique_id") or spec.get("external_id")
        if not unique_id and self.has_directory_users():
            unique_id = dn
        rec = {
            "username": username,
            "email": spec.get("email", f"{username}@example.com"),
            "first_name": spec.get("first_name", username.capitalize()),
            "last_name": spec.get("last_name", "User"),
            "dn": dn,
            "unique_id": unique_id,
        }
        if in_connect and any(u["username"] == username for u in self.users.values()):
            raise ValueError(f"duplicate username {username!r}")
        if self.has_directory_users() and spec.get("directory", True):
            self.dir_users[unique_id] = dict(rec)
        if not in_connect:
            return dict(rec, guid=None, in_connect=False)
        ts = now_rfc3339()
        user = dict(rec)
        user.update({
            "guid": spec.get("guid") or str(uuid.uuid4()),
            "user_role": spec.get("user_role", self.cfg.default_user_role),
            "created_time": ts, "updated_time": ts,
            "active_time": spec.get("active_time"),
            "confirmed": spec.get("confirmed", True),
            "locked": bool(spec.get("locked", False)),
        })
        if user["user_role"] not in ROLES:
            raise ValueError(f"bad user_role {user['user_role']!r}")
        self.users[user["guid"]] = user
        return user

    def user_view(self, u):
        out = {k: u[k] for k in ("email", "username", "first_name", "last_name", "user_role",
                                 "created_time", "updated_time", "active_time", "confirmed",
                                 "locked", "guid")}
        if self.cfg.modern_fields:
            out["external_id"] = u.get("unique_id")
        return out

    def user_by_unique_id(self, unique_id):
        for u in self.users.values():
            if unique_id is not None and u.get("unique_id") == unique_id:
                return u
        return None

    def user_by_name_or_guid(self, ref):
        if ref in self.users:
            return self.users[ref]
        for u in self.users.values():
            if u["username"] == ref:
                return u
        return None

    # ---- groups ---------------------------------------------------------------------------
    def new_group(self, name, owner_guid=None, unique_id=None, dn=None, gid=None, guid=None):
        g = {"guid": guid or str(uuid.uuid4()), "name": name, "owner_guid": owner_guid,
             "unique_id": unique_id, "dn": dn, "gid": gid}
        self.groups[g["guid"]] = g
        self.members[g["guid"]] = []
        return g

    def group_view(self, g):
        out = {"guid": g["guid"], "name": g["name"], "owner_guid": g["owner_guid"]}
        if self.cfg.modern_fields:
            out["gid"] = g.get("gid")
            out["member_count"] = len(self.members.get(g["guid"], []))
        return out

    def group_by_unique_id(self, unique_id):
        for g in self.groups.values():
            if unique_id is not None and g.get("unique_id") == unique_id:
                return g
        return None

    def new_ticket(self, kind, unique_id):
        t = base64.b64encode(secrets.token_bytes(30)).decode()
        self.tickets[t] = (kind, unique_id, time.time())
        return t

    def resolve_ticket(self, kind, ticket):
        ent = self.tickets.get(ticket)
        if not ent or ent[0] != kind:
            raise ApiError(127)
        if self.cfg.ticket_ttl and time.time() - ent[2] > self.cfg.ticket_ttl:
            raise ApiError(127)
        return ent[1]

    # ---- admin ----------------------------------------------------------------------------
    def dump(self):
        memberships = []
        for gguid, uguids in self.members.items():
            g = self.groups[gguid]
            for ug in uguids:
                memberships.append({"group_guid": gguid, "group_name": g["name"],
                                    "user_guid": ug, "username": self.users[ug]["username"]})
        groups = []
        for g in self.groups.values():
            d = dict(g)
            d["members"] = list(self.members[g["guid"]])
            d["member_usernames"] = [self.users[u]["username"] for u in self.members[g["guid"]]]
            groups.append(d)
        remote_groups = []
        for dg in self.dir_groups.values():
            cg = self.group_by_unique_id(dg["unique_id"])
            remote_groups.append({"name": dg["name"], "dn": dg["dn"], "unique_id": dg["unique_id"],
                                  "members": [self.dir_users[m]["username"]
                                              for m in dg["members"] if m in self.dir_users],
                                  "guid": cg["guid"] if cg else None})
        remote_users = []
        for du in self.dir_users.values():
            cu = self.user_by_unique_id(du["unique_id"])
            remote_users.append(dict(du, guid=cu["guid"] if cu else None))
        return {
            "provider": self.provider, "version": self.cfg.version,
            "groups": groups, "users": list(self.users.values()), "memberships": memberships,
            "remote_groups": remote_groups, "remote_users": remote_users,
            "faults": self.faults.dump(), "requests": self.requests,
        }


# --------------------------------------------------------------------------------------------
class ConnectApp:
    def __init__(self, state):
        self.s = state
        self.cfg = state.cfg
        g = GUID_RE
        self.routes = [
            ("GET", r"/__api__/server_settings", self.server_settings),
            ("GET", r"/__api__/v1/user", self.me),
            ("GET", r"/__api__/v1/users/remote", self.users_remote),
            ("GET", r"/__api__/v1/users", self.users_list),
            ("POST", r"/__api__/v1/users", self.users_create),
            ("PUT", r"/__api__/v1/users", self.users_create_remote),
            ("GET", rf"/__api__/v1/users/({g})", self.user_get),
            ("PUT", rf"/__api__/v1/users/({g})", self.user_update),
            ("POST", rf"/__api__/v1/users/({g})/lock", self.user_lock),
            ("GET", r"/__api__/v1/groups/remote", self.groups_remote),
            ("GET", r"/__api__/v1/groups", self.groups_list),
            ("POST", r"/__api__/v1/groups", self.groups_create),
            ("PUT", r"/__api__/v1/groups", self.groups_create_remote),
            ("GET", rf"/__api__/v1/groups/({g})", self.group_get),
            ("POST", rf"/__api__/v1/groups/({g})", self.group_modify_legacy),
            ("PATCH", rf"/__api__/v1/groups/({g})", self.group_patch),
            ("DELETE", rf"/__api__/v1/groups/({g})", self.group_delete),
            ("GET", rf"/__api__/v1/groups/({g})/members", self.members_list),
            ("POST", rf"/__api__/v1/groups/({g})/members", self.members_add),
            ("DELETE", rf"/__api__/v1/groups/({g})/members/({g})", self.members_remove),
        ]
        self.routes = [(m, re.compile(p + r"/?\Z"), h) for m, p, h in self.routes]

    # ---- plumbing -------------------------------------------------------------------------
    def dispatch(self, method, path, query, headers, body_bytes):
        handler, args = None, None
        for m, rx, h in self.routes:
            mm = rx.match(path)
            if mm and m == method:
                handler, args = h, [unquote(a) for a in mm.groups()]
                break
        if handler is None:
            raise ApiError(2)
        caller = None
        if handler != self.server_settings or self.cfg.server_settings_auth:
            caller = self.authenticate(headers)
        self.caller = caller
        self.body_bytes = body_bytes
        return handler(query, *args)

    def authenticate(self, headers):
        auth = headers.get("Authorization")
        if not auth or not auth.startswith("Key "):
            raise ApiError(24)
        guid = self.s.keys.get(auth[4:])
        if guid is None or guid not in self.s.users:
            raise ApiError(24)
        user = self.s.users[guid]
        if user["locked"]:
            raise ApiError(24)
        return user

    def json_body(self, required=True):
        if not self.body_bytes:
            if required:
                raise ApiError(87)
            return {}
        try:
            data = json.loads(self.body_bytes)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(87)
        if not isinstance(data, dict):
            raise ApiError(121)
        return data

    def require(self, role):
        if ROLE_RANK[self.caller["user_role"]] < ROLE_RANK[role]:
            raise ApiError(22)

    def is_admin(self):
        return self.caller["user_role"] == "administrator"

    def require_group_owner_or_admin(self, g):
        self.require("publisher")
        if not self.is_admin() and g["owner_guid"] != self.caller["guid"]:
            raise ApiError(22)

    def int_param(self, query, name, default, lo, hi=None):
        v = q1(query, name)
        if v is None or v == "":
            return default
        try:
            n = int(v)
        except ValueError:
            raise ApiError(25)
        if n < lo or (hi is not None and n > hi):
            raise ApiError(25)
        return n

    def bool_param(self, query, name, default):
        v = q1(query, name)
        if v is None or v == "":
            return default
        if v.lower() in ("true", "1"):
            return True
        if v.lower() in ("false", "0"):
            return False
        raise ApiError(25)

    def paging(self, query, default_size):
        page = self.int_param(query, "page_number", 1, 1)
        size = self.int_param(query, "page_size", default_size, 1, 500)
        size = min(size, self.cfg.page_size)
        return page, size

    def get_group(self, guid):
        g = self.s.groups.get(guid)
        if g is None:
            raise ApiError(4)
        return g

    def get_user(self, guid):
        u = self.s.users.get(guid)
        if u is None:
            raise ApiError(9)
        return u

    def buggy_group_prefix(self):
        mode = self.cfg.groups_prefix_paging
        if mode == "auto":
            return version_tuple(self.cfg.version) < (2025, 4, 0)
        return mode == "buggy"

    # ---- server settings ------------------------------------------------------------------
    def server_settings(self, query):
        s, p = self.s, self.s.provider
        remote_groups = s.ldap_remote_groups()
        auth = {
            "handles_credentials": p in ("ldap", "password", "pam"),
            "handles_login": p != "proxy",
            "external_user_data": p in ("ldap", "saml", "oauth2", "oauth2-google", "proxy"),
            "external_user_search": p in ("ldap", "oauth2-google"),
            "external_user_id": p in ("ldap", "saml", "oauth2", "oauth2-google", "proxy"),
            "groups_enabled": True,
            "external_group_search": remote_groups,
            "external_group_members": s.provider_owns_membership(),
            "external_group_id": remote_groups or s.groups_by_unique_id(),
            "external_group_owner": s.provider_owns_membership(),
            "unique_usernames": True,
            "name": PROVIDER_NAMES[p],
            "notice": "",
            "warning_delay": 0,
            "API_key_auth": True,
        }
        return Response(200, {"version": self.cfg.version, "build": "emulator",
                              "authentication": auth})

    # ---- users ----------------------------------------------------------------------------
    def me(self, query):
        return Response(200, self.s.user_view(self.caller))

    def user_get(self, query, guid):
        return Response(200, self.s.user_view(self.get_user(guid)))

    @staticmethod
    def user_matches_prefix(u, prefix):
        p = prefix.lower()
        full = f"{u.get('first_name') or ''} {u.get('last_name') or ''}".lower()
        return (u["username"].lower().startswith(p)
                or (u.get("first_name") or "").lower().startswith(p)
                or (u.get("last_name") or "").lower().startswith(p)
                or full.startswith(p)
                or (u.get("unique_id") is not None and u["unique_id"] == prefix)
                or (u.get("dn") or "").lower() == p)

    def users_list(self, query):
        prefix = q1(query, "prefix")
        page, size = self.paging(query, 20)
        asc = self.bool_param(query, "asc_order", True)
        sort = q1(query, "sort") or "username"
        if sort not in ("first_name", "last_name", "username", "active_time", "created_time",
                        "user_role"):
            raise ApiError(25)
        users = list(self.s.users.values())
        if prefix:
            users = [u for u in users if self.user_matches_prefix(u, prefix)]
        roles = q1(query, "user_role")
        if roles:
            wanted = roles.split("|")
            if any(r not in ROLES for r in wanted):
                raise ApiError(25)
            users = [u for u in users if u["user_role"] in wanted]
        status = q1(query, "account_status")
        if status:
            wanted = status.split("|")
            if any(x not in ("locked", "licensed", "inactive") for x in wanted):
                raise ApiError(25)

            def ok(u):
                return (("locked" in wanted and u["locked"])
                        or ("licensed" in wanted and not u["locked"])
                        or ("inactive" in wanted and u["active_time"] is None))
            users = [u for u in users if ok(u)]
        users.sort(key=lambda u: (str(u.get(sort) or "").lower(), u["guid"]), reverse=not asc)
        total = len(users)
        if prefix and page > 1 and self.cfg.users_prefix_paging == "empty-after-first":
            results = []
        else:
            results = users[(page - 1) * size:(page - 1) * size + size]
        return Response(200, {"results": [self.s.user_view(u) for u in results],
                              "current_page": page, "total": total})

    def remote_limit(self, query):
        return self.int_param(query, "limit", 20, 1, 500)

    def remote_name_match(self, name, prefix):
        n, p = name.lower(), prefix.lower()
        if self.cfg.remote_match == "substring":
            return p in n
        return n.startswith(p)

    @staticmethod
    def similarity_key(name, prefix):
        n, p = name.lower(), prefix.lower()
        return (0 if n == p else 1, 0 if n.startswith(p) else 1, len(n) - len(p), n)

    def remote_search(self, query, entries, name_fields, item):
        """GET /v1/{users,groups}/remote: directory ``entries`` whose ``name_fields`` match the
        prefix (or whose DN / unique ID is the prefix), most similar first; ``item(entry)``."""
        self.require("publisher")
        prefix = q1(query, "prefix") or ""
        limit = self.remote_limit(query)
        found = [d for d in entries
                 if any(self.remote_name_match(d.get(f) or "", prefix) for f in name_fields)
                 or (prefix and d["dn"].lower() == prefix.lower())
                 or (prefix and d["unique_id"] == prefix)]
        if self.cfg.remote_max_results and len(found) > self.cfg.remote_max_results:
            raise ApiError(83)
        found.sort(key=lambda d: self.similarity_key(d[name_fields[0]], prefix))
        results = [item(d) for d in found[:limit]]
        return Response(200, {"results": results, "current_page": 1, "total": len(found)})

    def ticket_entry(self, kind, directory):
        """PUT /v1/{users,groups} {temp_ticket}: (unique_id, directory entry) of the ticket."""
        self.require("publisher")
        ticket = self.json_body().get("temp_ticket")
        if not ticket:
            raise ApiError(12)
        unique_id = self.s.resolve_ticket(kind, ticket)
        entry = directory.get(unique_id)
        if entry is None:
            raise ApiError(127)
        return unique_id, entry

    def users_remote(self, query):
        if not self.s.has_directory_users():
            raise ApiError(132)

        def item(du):
            cu = self.s.user_by_unique_id(du["unique_id"])
            if cu:
                out = self.s.user_view(cu)
            else:
                out = {"email": du["email"], "username": du["username"],
                       "first_name": du["first_name"], "last_name": du["last_name"],
                       "user_role": None, "created_time": None, "updated_time": None,
                       "active_time": None, "confirmed": True, "locked": False, "guid": None}
            out["temp_ticket"] = self.s.new_ticket("user", du["unique_id"])
            return out
        return self.remote_search(query, self.s.dir_users.values(),
                                  ("username", "first_name", "last_name"), item)

    def users_create_remote(self, query):
        if not self.s.has_directory_users():
            raise ApiError(119)
        unique_id, du = self.ticket_entry("user", self.s.dir_users)
        if self.s.user_by_unique_id(unique_id):
            raise ApiError(76)
        if any(u["username"] == du["username"] for u in self.s.users.values()):
            raise ApiError(8)
        user = self.s.add_user(dict(du, directory=False))
        return Response(200, self.s.user_view(user))

    def users_create(self, query):
        if self.s.provider not in PUSH_PROVIDERS:
            raise ApiError(120)
        self.require("administrator")
        body = self.json_body()
        username = body.get("username")
        if username is None:
            raise ApiError(12)
        if not isinstance(username, str) or not username.strip() or re.search(r"[\s/]", username):
            raise ApiError(7)
        role = body.get("user_role") or self.cfg.default_user_role
        if role not in ROLES:
            raise ApiError(112)
        unique_id = body.get("unique_id") or body.get("external_id")
        if self.s.provider in ("saml", "oauth2") and not unique_id:
            raise ApiError(129)
        if any(u["username"] == username for u in self.s.users.values()):
            raise ApiError(8)
        if unique_id and self.s.user_by_unique_id(unique_id):
            raise ApiError(76)
        spec = {k: body[k] for k in ("email", "first_name", "last_name") if body.get(k) is not None}
        spec.update(username=username, user_role=role, unique_id=unique_id,
                    confirmed=not body.get("user_must_set_password", False))
        user = self.s.add_user(spec)
        return Response(200, self.s.user_view(user))

    def user_update(self, query, guid):
        u = self.get_user(guid)
        if u["guid"] != self.caller["guid"]:
            self.require("administrator")
        body = self.json_body()
        allowed = {"email", "username", "first_name", "last_name", "user_role"}
        for k in body:
            if k not in allowed:
                raise ApiError(46)
        if "user_role" in body:
            if body["user_role"] not in ROLES:
                raise ApiError(112)
            if not self.is_admin():
                raise ApiError(23)
        if "username" in body and body["username"] != u["username"]:
            if any(x["username"] == body["username"] for x in self.s.users.values()):
                raise ApiError(8)
        u.update({k: body[k] for k in allowed if k in body})
        u["updated_time"] = now_rfc3339()
        out = {k: u[k] for k in ("email", "username", "first_name", "last_name", "user_role",
                                 "updated_time")}
        return Response(200, out)

    def user_lock(self, query, guid):
        self.require("administrator")
        u = self.get_user(guid)
        body = self.json_body()
        if not isinstance(body.get("locked"), bool):
            raise ApiError(12)
        if u["guid"] == self.caller["guid"] and body["locked"]:
            raise ApiError(49)
        u["locked"] = body["locked"]
        u["updated_time"] = now_rfc3339()
        return Response(200, raw=b"", content_type="application/json")

    # ---- groups ---------------------------------------------------------------------------
    @staticmethod
    def group_matches_prefix(g, prefix):
        p = prefix.lower()
        return (g["name"].lower().startswith(p)
                or (g.get("dn") or "").lower() == p
                or (g.get("unique_id") is not None and g["unique_id"] == prefix))

    def groups_list(self, query):
        prefix = q1(query, "prefix")
        page, size = self.paging(query, 20)
        asc = self.bool_param(query, "asc_order", True)
        groups = sorted(self.s.groups.values(), key=lambda g: (g["name"].lower(), g["guid"]),
                        reverse=not asc)
        if prefix:
            groups = [g for g in groups if self.group_matches_prefix(g, prefix)]
            if self.buggy_group_prefix():
                page = 1  # pre-2025.04.0: page_number ignored, first page repeats
        results = groups[(page - 1) * size:(page - 1) * size + size]
        return Response(200, {"results": [self.s.group_view(g) for g in results],
                              "current_page": page, "total": len(groups)})

    def group_get(self, query, guid):
        return Response(200, self.s.group_view(self.get_group(guid)))

    def groups_remote(self, query):
        if not self.s.ldap_remote_groups():
            raise ApiError(132)

        def item(dg):
            cg = self.s.group_by_unique_id(dg["unique_id"])
            return {"name": dg["name"], "guid": cg["guid"] if cg else None,
                    "temp_ticket": self.s.new_ticket("group", dg["unique_id"])}
        return self.remote_search(query, self.s.dir_groups.values(), ("name",), item)

    def groups_create_remote(self, query):
        if not self.s.ldap_remote_groups():
            raise ApiError(119)
        unique_id, dg = self.ticket_entry("group", self.s.dir_groups)
        if self.s.group_by_unique_id(unique_id):
            raise ApiError(131)
        g = self.s.new_group(dg["name"], None, unique_id, dg["dn"])
        for m in dg["members"]:
            cu = self.s.user_by_unique_id(m)
            if cu:
                self.s.members[g["guid"]].append(cu["guid"])
        return Response(200, self.s.group_view(g))

    def check_group_name(self, name):
        if name is None:
            raise ApiError(12)
        if not isinstance(name, str) or not name.strip() or len(name) > 4096:
            raise ApiError(14)

    def groups_create(self, query):
        if self.s.ldap_remote_groups():
            raise ApiError(120)
        self.require("publisher")
        body = self.json_body()
        name = body.get("name")
        self.check_group_name(name)
        unique_id = body.get("unique_id")
        gid = body.get("gid")
        if self.s.groups_by_unique_id():
            if unique_id is None or str(unique_id).strip() == "":
                raise ApiError(130)
            if self.s.group_by_unique_id(unique_id):
                raise ApiError(131)
        else:
            if unique_id is not None:
                raise ApiError(25)
            if any(g["name"] == name for g in self.s.groups.values()):
                raise ApiError(15)
        if gid is not None:
            if not self.is_admin() or self.s.provider not in ("saml", "oauth2", "oauth2-google"):
                raise ApiError(25)
        owner = None if self.s.provider_owns_membership() else self.caller["guid"]
        g = self.s.new_group(name, owner, unique_id, None, gid)
        return Response(200, self.s.group_view(g))

    def apply_group_update(self, g, body, allow_gid):
        p = self.s.provider
        if not body:
            return
        known = {"name", "owner_guid", "gid"}
        if any(k not in known for k in body) or (not allow_gid and "gid" in body):
            raise ApiError(25)
        if "name" in body:
            if self.s.ldap_remote_groups():
                raise ApiError(132)
            self.check_group_name(body["name"])
            if (body["name"] != g["name"] and not self.s.groups_by_unique_id()
                    and any(x["name"] == body["name"] for x in self.s.groups.values())):
                raise ApiError(15)
        if "owner_guid" in body:
            new_owner = body["owner_guid"]
            if self.s.ldap_remote_groups():
                raise ApiError(132)
            if self.s.provider_owns_membership():
                if new_owner is not None:
                    raise ApiError(25)   # can only clear
            else:
                if new_owner is None:
                    raise ApiError(25)   # can assign/transfer, not clear
            if new_owner is not None and new_owner not in self.s.users:
                raise ApiError(9)
        if "gid" in body:
            if p in ("password", "pam", "proxy"):
                raise ApiError(132)
            if body["gid"] is not None and not isinstance(body["gid"], int):
                raise ApiError(25)
        for k in known:
            if k in body:
                g[k] = body[k]

    def group_patch(self, query, guid):
        if not self.cfg.patch_groups:
            raise ApiError(2)
        g = self.get_group(guid)
        self.require_group_owner_or_admin(g)
        self.apply_group_update(g, self.json_body(), allow_gid=True)
        return Response(200, self.s.group_view(g))

    def group_modify_legacy(self, query, guid):
        g = self.get_group(guid)
        if self.s.ldap_remote_groups():
            raise ApiError(132)
        self.require_group_owner_or_admin(g)
        body = self.json_body()
        if "owner_guid" in body and body["owner_guid"] is None and not self.s.provider_owns_membership():
            body.pop("owner_guid")   # legacy endpoint: null means "unchanged"
        self.apply_group_update(g, body, allow_gid=False)
        return Response(200, self.s.group_view(g))

    def group_delete(self, query, guid):
        g = self.get_group(guid)
        self.require_group_owner_or_admin(g)
        del self.s.groups[guid]
        del self.s.members[guid]
        return Response(204)

    def check_member_ops(self):
        if self.s.provider_owns_membership():
            raise ApiError(132)

    def members_list(self, query, guid):
        g = self.get_group(guid)
        if self.s.ldap_remote_groups():
            raise ApiError(132)
        page, size = self.paging(query, 10)
        asc = self.bool_param(query, "asc_order", True)
        sort = q1(query, "sort") or "first_name"
        if sort not in ("first_name", "user_role", "active_time"):
            raise ApiError(25)
        users = [self.s.users[u] for u in self.s.members[g["guid"]]]
        users.sort(key=lambda u: (str(u.get(sort) or "").lower(), u["username"]), reverse=not asc)
        results = users[(page - 1) * size:(page - 1) * size + size]
        return Response(200, {"results": [self.s.user_view(u) for u in results],
                              "current_page": page, "total": len(users)})

    def members_add(self, query, guid):
        g = self.get_group(guid)
        self.check_member_ops()
        self.require_group_owner_or_admin(g)
        body = self.json_body()
        user_guid = body.get("user_guid")
        if not user_guid:
            raise ApiError(12)
        self.get_user(user_guid)
        if user_guid in self.s.members[guid]:
            raise ApiError(16)
        self.s.members[guid].append(user_guid)
        return Response(204)

    def members_remove(self, query, guid, user_guid):
        g = self.get_group(guid)
        self.check_member_ops()
        if user_guid != self.caller["guid"]:   # anyone may remove themselves
            self.require_group_owner_or_admin(g)
        self.get_user(user_guid)
        if user_guid not in self.s.members[guid]:
            raise ApiError(17)
        self.s.members[guid].remove(user_guid)
        return Response(204)


# --------------------------------------------------------------------------------------------
# Admin endpoints

def admin_users(state, body):
    """POST /__admin/users  body: [{"username": "alice", "email"?, "first_name"?, "last_name"?,
    "user_role"? (default --default-user-role), "unique_id"? (LDAP default: the DN), "dn"?,
    "locked"?, "guid"?, "remote_only"? (LDAP/Google: only in the directory, not in Connect)}]
    -> 200 [user records as in /__admin/state (guid null when remote_only)]"""
    out = []
    for spec in as_list(body):
        remote_only = bool(spec.get("remote_only")) or spec.get("in_connect") is False
        if remote_only and not state.has_directory_users():
            raise ValueError("remote_only users need --provider ldap or oauth2-google")
        out.append(state.add_user(spec, in_connect=not remote_only))
    return out


def admin_groups(state, body):
    """POST /__admin/groups  body: [{"name": "Data Science", "members"?: [username|user guid],
    "remote_only"? (LDAP: exists only in the directory until PUT /v1/groups), "dn"?, "unique_id"?
    (LDAP default: the DN), "owner_guid"? (default: null for provider-managed groups, else admin),
    "gid"?, "guid"?}]
    LDAP (remote groups): the group goes into the directory (members must be directory users) and,
    unless remote_only, into Connect with the members that are Connect users.
    Other providers: Connect group only.
    -> 200 [{"guid" (null when remote_only), "name", "owner_guid", "unique_id", "dn", "members": [user guids]}]"""
    out = []
    for spec in as_list(body):
        name = spec.get("name")
        if not name:
            raise ValueError("name required")
        remote_only = bool(spec.get("remote_only")) or spec.get("in_connect") is False
        member_refs = spec.get("members", [])
        if state.ldap_remote_groups():
            dn = spec.get("dn") or f"cn={name},ou=Groups,dc=example,dc=com"
            unique_id = spec.get("unique_id") or dn
            dir_members = []
            for ref in member_refs:
                du = next((d for d in state.dir_users.values()
                           if d["username"] == ref or d["unique_id"] == ref), None)
                if du is None:
                    cu = state.users.get(ref)
                    du = state.dir_users.get(cu["unique_id"]) if cu else None
                if du is None:
                    raise ValueError(f"unknown directory user {ref!r}")
                dir_members.append(du["unique_id"])
            state.dir_groups[unique_id] = {"name": name, "dn": dn, "unique_id": unique_id,
                                           "members": dir_members}
            if remote_only:
                out.append({"guid": None, "name": name, "owner_guid": None,
                            "unique_id": unique_id, "dn": dn, "members": []})
                continue
            if state.group_by_unique_id(unique_id):
                raise ValueError(f"group {unique_id!r} already in Connect")
            g = state.new_group(name, None, unique_id, dn, spec.get("gid"), spec.get("guid"))
            for m in dir_members:
                cu = state.user_by_unique_id(m)
                if cu:
                    state.members[g["guid"]].append(cu["guid"])
        else:
            if remote_only:
                raise ValueError("remote_only groups need --provider ldap")
            default_owner = None if state.provider_owns_membership() else state.keys[state.cfg.api_key]
            g = state.new_group(name, spec.get("owner_guid", default_owner), spec.get("unique_id"),
                                spec.get("dn"), spec.get("gid"), spec.get("guid"))
            for ref in member_refs:
                u = state.user_by_name_or_guid(ref)
                if u is None:
                    raise ValueError(f"unknown user {ref!r}")
                if u["guid"] not in state.members[g["guid"]]:
                    state.members[g["guid"]].append(u["guid"])
        out.append(dict(g, members=list(state.members[g["guid"]])))
    return out


# --------------------------------------------------------------------------------------------
class Handler(EmulatorHandler):
    server_version = "PositConnectEmulator/1.0"

    def common_headers(self):
        return {"X-Correlation-ID": str(uuid.uuid4())}

    def handle_admin(self, method, path, body):
        state = self.state
        return admin_dispatch(state, method, path, body, {
            ("POST", "/__admin/users"): lambda data: admin_users(state, data or []),
            ("POST", "/__admin/groups"): lambda data: admin_groups(state, data or []),
        })

    def handle_api(self, method, split, query, body):
        state, path = self.state, split.path
        resp = state.faults.check(
            method, path,
            lambda: Response(429, {"code": 277, "error": ERRORS[277][1], "payload": None}),
            lambda status: Response(status, {"code": 1, "error": ERRORS[1][1], "payload": None}))
        if resp is None:
            resp = answer(lambda: ConnectApp(state).dispatch(method, path, query, self.headers, body),
                          ApiError, lambda e: ApiError(1, message=f"emulator error: {e}").response())
        state.requests.append({"method": method, "path": path, "query": split.query,
                               "status": resp.status, "body": logged_body(body)})
        return resp



def parse_args(argv=None):
    ap = argument_parser("Posit Connect users/groups API emulator")
    ap.add_argument("--api-key", default="connect-key-123", help="administrator API key")
    ap.add_argument("--publisher-key", default=None, help="also create a publisher with this key")
    ap.add_argument("--viewer-key", default=None, help="also create a viewer with this key")
    ap.add_argument("--admin-username", default="admin")
    ap.add_argument("--provider", choices=PROVIDERS, default="ldap")
    ap.add_argument("--version", default="2024.09.0",
                    help="reported by server_settings; < 2025.04.0 enables the groups prefix bug")
    ap.add_argument("--page-size", type=int, default=500,
                    help="cap on items per page (emulator knob; default 500 = no cap)")
    ap.add_argument("--groups-prefix-paging", choices=["auto", "buggy", "fixed"], default="auto",
                    help="auto: buggy (page_number ignored with prefix) iff version < 2025.04.0")
    ap.add_argument("--users-prefix-paging", choices=["empty-after-first", "fixed"],
                    default="empty-after-first")
    ap.add_argument("--groups-auto-provision", action="store_true",
                    help="SAML/OAuth2/Proxied: provider supplies membership (member edits refused)")
    ap.add_argument("--groups-by-unique-id", action="store_true",
                    help="SAML/OAuth2/Proxied: POST /v1/groups takes unique_id; names may repeat")
    ap.add_argument("--ldap-local-groups", action="store_true",
                    help="LDAP without group search: groups are local (POST/members allowed)")
    ap.add_argument("--no-patch", dest="patch_groups", action="store_false",
                    help="older server without PATCH /v1/groups/{guid} (404 code 2)")
    ap.add_argument("--modern-fields", action="store_true",
                    help="add gid/member_count to groups and external_id to users")
    ap.add_argument("--default-user-role", choices=ROLES, default="viewer")
    ap.add_argument("--remote-match", choices=["prefix", "substring"], default="prefix")
    ap.add_argument("--remote-max-results", type=int, default=0,
                    help="remote searches with more matches fail 400 code 83 (0 = never)")
    ap.add_argument("--ticket-ttl", type=float, default=0, help="seconds; 0 = tickets never expire")
    ap.add_argument("--server-settings-auth", action="store_true",
                    help="require the API key on GET /__api__/server_settings")
    cfg = finish_args(ap, argv)
    if not 1 <= cfg.page_size <= 500:
        ap.error("--page-size must be 1..500")
    return cfg


if __name__ == "__main__":
    run(parse_args, Handler, State)
