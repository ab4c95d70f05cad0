"""Self-tests for tests/emulators/forgerock.py (stdlib unittest; runs the emulator as a subprocess).

    python3 -m unittest discover -s tests/emulators -p 'test_*.py'
"""

import base64
import json
import os
import sys
import time
import unittest
from urllib.parse import quote, urlencode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulator_testcase import EmulatorProcess, EmulatorTestCase  # noqa: E402

TOKEN_PATH = "/am/oauth2/realms/root/realms/alpha/access_token"
CREDS = {"grant_type": "client_credentials", "client_id": "idm-provisioning",
         "client_secret": "idm-provisioning-secret", "scope": "fr:idm:*"}
G = "/openidm/managed/alpha_group"
U = "/openidm/managed/alpha_user"


def q(s):
    return quote(s, safe="")


class Emulator(EmulatorProcess):
    SCRIPT = "forgerock.py"
    token = None

    def get_token(self, path=TOKEN_PATH, **over):
        form = dict(CREDS, **over)
        return self.req("POST", path, raw=urlencode(form).encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})

    def api(self, method, path, body=None, headers=None):
        if self.token is None:
            st, _, tok = self.get_token()
            assert st == 200, tok
            self.token = tok["access_token"]
        h = {"Authorization": f"Bearer {self.token}", "Accept-API-Version": "resource=1.0"}
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}   # None = do not send that header
        return self.req(method, path, body, h)


class Base(EmulatorTestCase):
    EMULATOR = Emulator

    def setUp(self):
        super().setUp()
        self.emu.token = None

    def assertCrest(self, result, status, message=None):
        st, _, body = result
        self.assertEqual(st, status, body)
        self.assertEqual(body["code"], status)
        self.assertIn("reason", body)
        self.assertIn("message", body)
        if message is not None:
            self.assertEqual(body["message"], message)
        return body


class Tokens(Base):
    ARGS = ("--static-token", "static-abc", "--token-ttl", "1")

    def test_client_credentials(self):
        e = self.emu
        st, hdrs, tok = e.get_token()
        self.assertEqual(st, 200)
        self.assertEqual(set(tok), {"access_token", "scope", "token_type", "expires_in"})
        self.assertEqual((tok["token_type"], tok["scope"], tok["expires_in"]), ("Bearer", "fr:idm:*", 1))
        self.assertEqual(e.get_token(path="/am/oauth2/access_token")[0], 200)
        # HTTP Basic client authentication
        basic = base64.b64encode(b"idm-provisioning:idm-provisioning-secret").decode()
        st, _, _ = e.req("POST", TOKEN_PATH, raw=b"grant_type=client_credentials",
                         headers={"Authorization": f"Basic {basic}",
                                  "Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(st, 200)

    def test_token_errors(self):
        e = self.emu
        st, _, body = e.get_token(client_secret="wrong")
        self.assertEqual((st, body["error"]), (401, "invalid_client"))
        st, _, body = e.get_token(grant_type="password")
        self.assertEqual((st, body["error"]), (400, "unsupported_grant_type"))
        st, _, body = e.get_token(scope="fr:am:*")
        self.assertEqual((st, body["error"]), (400, "invalid_scope"))
        st, _, body = e.req("POST", TOKEN_PATH, body=CREDS)   # JSON instead of a form
        self.assertEqual((st, body["error"]), (400, "invalid_request"))
        self.assertEqual(e.get_token(path="/am/oauth2/realms/root/realms/bravo/access_token")[0], 404)

    def test_jwt_bearer(self):
        def b64(d):
            return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        claims = {"iss": "sa-1", "sub": "sa-1", "aud": "https://tenant:443/am/oauth2/access_token",
                  "exp": int(time.time()) + 180, "jti": "x"}
        jwt = f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2ln"
        form = {"client_id": "service-account", "grant_type":
                "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt, "scope": "fr:idm:*"}
        hdr = {"Content-Type": "application/x-www-form-urlencoded"}
        st, _, tok = self.emu.req("POST", "/am/oauth2/access_token", raw=urlencode(form).encode(),
                                  headers=hdr)
        self.assertEqual(st, 200, tok)
        claims["exp"] = int(time.time()) - 5
        form["assertion"] = f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2ln"
        st, _, body = self.emu.req("POST", "/am/oauth2/access_token", raw=urlencode(form).encode(),
                                   headers=hdr)
        self.assertEqual((st, body["error"]), (400, "invalid_grant"))

    def test_bearer_required_and_expiry(self):
        e = self.emu
        body = self.assertCrest(e.req("GET", f"{G}?_queryFilter=true"), 401, "Access Denied")
        self.assertEqual(body["reason"], "Unauthorized")
        self.assertCrest(e.req("GET", f"{G}?_queryFilter=true",
                               headers={"Authorization": "Bearer nope"}), 401)
        self.assertEqual(e.api("GET", f"{G}?_queryFilter=true")[0], 200)
        time.sleep(1.2)
        self.assertCrest(e.api("GET", f"{G}?_queryFilter=true"), 401)
        st, _, _ = e.req("GET", f"{G}?_queryFilter=true", headers={"Authorization": "Bearer static-abc"})
        self.assertEqual(st, 200)

    def test_admin_expire(self):
        e = self.emu
        self.assertEqual(e.api("GET", f"{G}?_queryFilter=true")[0], 200)
        e.admin("POST", "expire_tokens")
        self.assertCrest(e.api("GET", f"{G}?_queryFilter=true"), 401)


class Groups(Base):
    def test_create_read_duplicate(self):
        e = self.emu
        st, hdrs, g = e.api("POST", f"{G}?_action=create", {"name": "employees", "description": "d"})
        self.assertEqual(st, 201)
        self.assertEqual(g["_id"], "employees")
        self.assertEqual(set(g), {"_id", "_rev", "name", "condition", "description"})
        self.assertIsNone(g["condition"])
        self.assertEqual(hdrs["ETag"], f'"{g["_rev"]}"')
        self.assertTrue(hdrs["Location"].endswith("/openidm/managed/alpha_group/employees"))
        self.assertCrest(e.api("POST", f"{G}?_action=create", {"name": "Employees"}), 412,
                         "Create rejected as Object with same ID already exists and was detected.")
        st, _, g2 = e.api("POST", G, {"name": "employees2"})   # no _action: still a create
        self.assertEqual((st, g2["_id"]), (201, "employees2"))
        body = self.assertCrest(e.api("POST", f"{G}?_action=create", {"description": "x"}), 403,
                                "Failed policy validation")
        self.assertEqual(body["detail"]["failedPolicyRequirements"][0]["property"], "name")
        st, _, rd = e.api("GET", f"{G}/employees")
        self.assertEqual((st, rd), (200, g))
        self.assertCrest(e.api("GET", f"{G}/nope"), 404)
        self.assertCrest(e.api("GET", "/openidm/managed/bravo_group?_queryFilter=true"), 404)
        self.assertCrest(e.api("GET", "/openidm/nothing"), 404,
                         "The server has not found anything matching the request URI")

    def test_query_filters(self):
        e = self.emu
        e.admin("POST", "groups", [{"name": "alpha team"}, {"name": "beta"}, {"name": "gamma"}])
        def names(f, extra=""):
            st, _, body = e.api("GET", f"{G}?_queryFilter={q(f)}{extra}")
            self.assertEqual(st, 200, body)
            return [r["name"] for r in body["result"]]
        self.assertEqual(names('name eq "BETA"'), ["beta"])
        self.assertEqual(names('/name eq "beta"'), ["beta"])
        self.assertEqual(names("true"), ["alpha team", "beta", "gamma"])
        self.assertEqual(names("false"), [])
        self.assertEqual(names('name eq "beta" or name sw "gam"'), ["beta", "gamma"])
        self.assertEqual(names('!(name eq "beta") and name co "a"'), ["alpha team", "gamma"])
        self.assertEqual(names('name pr'), ["alpha team", "beta", "gamma"])
        self.assertEqual(names("true", "&_sortKeys=-name"), ["gamma", "beta", "alpha team"])
        st, _, body = e.api("GET", f"{G}?_queryFilter=true&_fields=_id")
        self.assertEqual(body["result"][0], {"_id": "alpha team", "_rev": body["result"][0]["_rev"]})
        for bad in ("name eq beta", "name ew \"a\"", "name eq", "(name eq \"a\"", "/members[x eq 1]"):
            self.assertCrest(e.api("GET", f"{G}?_queryFilter={q(bad)}"), 400)
        self.assertCrest(e.api("GET", G), 400)

    def test_users_query(self):
        e = self.emu
        users = e.admin("POST", "users", [{"userName": "jdoe", "mail": "j@x.org"},
                                          {"userName": "scarter", "mail": "s@x.org"}])
        f1 = q('userName eq "jdoe"')
        st, _, body = e.api("GET", f"{U}?_queryFilter={f1}&_fields=_id,userName,mail")
        self.assertEqual(st, 200)
        self.assertEqual(body["result"], [{"_id": users[0]["_id"], "_rev": users[0]["_rev"],
                                           "userName": "jdoe", "mail": "j@x.org"}])
        f2 = q('mail eq "s@x.org" or userName eq "jdoe"')
        _, _, body = e.api("GET", f"{U}?_queryFilter={f2}")
        self.assertEqual(sorted(r["userName"] for r in body["result"]), ["jdoe", "scarter"])
        f3 = q('userName eq "nobody"')
        _, _, body = e.api("GET", f"{U}?_queryFilter={f3}")
        self.assertEqual((body["result"], body["resultCount"]), ([], 0))

    def test_paging(self):
        e = self.emu
        e.admin("POST", "groups", [{"name": f"g{i}"} for i in range(5)])
        seen, cookie, pages = [], None, 0
        while True:
            url = f"{G}?_queryFilter=true&_pageSize=2"
            if cookie:
                url += f"&_pagedResultsCookie={q(cookie)}"
            st, _, body = e.api("GET", url)
            self.assertEqual(st, 200)
            self.assertEqual(body["totalPagedResults"], -1)
            self.assertEqual(body["totalPagedResultsPolicy"], "NONE")
            self.assertEqual(body["resultCount"], len(body["result"]))
            seen += [r["name"] for r in body["result"]]
            pages += 1
            cookie = body["pagedResultsCookie"]
            if cookie is None:
                break
        self.assertEqual((seen, pages), ([f"g{i}" for i in range(5)], 3))
        _, _, body = e.api("GET", f"{G}?_queryFilter=true&_pageSize=2&_totalPagedResultsPolicy=EXACT")
        self.assertEqual(body["totalPagedResults"], 5)
        _, _, body = e.api("GET", f"{G}?_queryFilter=true&_pageSize=2&_pagedResultsOffset=4")
        self.assertEqual([r["name"] for r in body["result"]], ["g4"])
        self.assertCrest(e.api("GET", f"{G}?_queryFilter=true&_pageSize=2&_pagedResultsCookie=garbage"), 400)
        _, _, first = e.api("GET", f"{G}?_queryFilter=true&_pageSize=2")
        other = q('name sw "g"')
        self.assertCrest(e.api("GET", f"{G}?_queryFilter={other}&_pageSize=2&_pagedResultsCookie="
                                      f"{q(first['pagedResultsCookie'])}"), 400)

    def test_revisions_and_if_match(self):
        e = self.emu
        _, _, g = e.api("POST", f"{G}?_action=create", {"name": "ops"})
        rev0 = g["_rev"]
        st, hdrs, g1 = e.api("PUT", f"{G}/ops", {"name": "ops", "description": "v1"},
                             headers={"If-Match": f'"{rev0}"'})
        self.assertEqual(st, 200)
        self.assertNotEqual(g1["_rev"], rev0)
        self.assertEqual(hdrs["ETag"], f'"{g1["_rev"]}"')
        body = self.assertCrest(e.api("PUT", f"{G}/ops", {"name": "ops", "description": "v2"},
                                      headers={"If-Match": rev0}), 412)
        self.assertEqual(body["reason"], "Precondition Failed")
        self.assertEqual(body["message"],
                         f"Update rejected as current Object revision {g1['_rev']} is different than "
                         f"expected by caller ({rev0}), the object has changed since retrieval.")
        self.assertCrest(e.api("PATCH", f"{G}/ops", [{"operation": "replace", "field": "/description",
                                                       "value": "x"}], headers={"If-Match": rev0}), 412)
        st, _, g2 = e.api("PATCH", f"{G}/ops", [{"operation": "replace", "field": "/description",
                                                  "value": "x"}], headers={"If-Match": g1["_rev"]})
        self.assertEqual((st, g2["description"]), (200, "x"))
        st, _, g3 = e.api("PATCH", f"{G}/ops", [{"operation": "replace", "field": "/name",
                                                  "value": "operations"}])   # unconditional
        self.assertEqual((st, g3["_id"], g3["name"]), (200, "ops", "operations"))
        self.assertCrest(e.api("DELETE", f"{G}/ops", headers={"If-Match": g2["_rev"]}), 412)
        st, _, deleted = e.api("DELETE", f"{G}/ops", headers={"If-Match": g3["_rev"]})
        self.assertEqual((st, deleted["_id"]), (200, "ops"))
        self.assertCrest(e.api("GET", f"{G}/ops"), 404)
        self.assertCrest(e.api("DELETE", f"{G}/ops"), 404)
        self.assertCrest(e.api("PATCH", f"{G}/ops", []), 404)

    def test_put_create_semantics(self):
        e = self.emu
        st, _, g = e.api("PUT", f"{G}/{q('new one')}", {"name": "new one"}, headers={"If-None-Match": "*"})
        self.assertEqual((st, g["_id"]), (201, "new one"))
        self.assertCrest(e.api("PUT", f"{G}/{q('new one')}", {"name": "new one"},
                               headers={"If-None-Match": "*"}), 412)
        self.assertCrest(e.api("PUT", f"{G}/x", {"name": "x"}, headers={"If-None-Match": "abc"}), 400)
        self.assertCrest(e.api("PUT", f"{G}/y", {"name": "y"}, headers={"If-Match": "some-rev"}), 404)
        self.assertEqual(e.api("PUT", f"{G}/z", {"name": "z"})[0], 201)   # upsert

    def test_accept_api_version(self):
        e = self.emu
        self.assertEqual(e.api("GET", f"{G}?_queryFilter=true", headers={"Accept-API-Version":
                                                                       "protocol=2.1,resource=1.0"})[0], 200)
        self.assertCrest(e.api("GET", f"{G}?_queryFilter=true", headers={"Accept-API-Version":
                                                                       "resource=2.0"}), 400)
        st, _, _ = e.api("GET", f"{G}?_queryFilter=true", headers={"Accept-API-Version": None})
        self.assertEqual(st, 200)


class Members(Base):
    def setUp(self):
        super().setUp()
        self.users = self.emu.admin("POST", "users", [
            {"userName": "jdoe"}, {"userName": "scarter", "country": "FR"},
            {"userName": "bjensen", "country": "FR"}])
        self.emu.admin("POST", "groups", [{"name": "employees"}])

    def ref(self, i):
        return {"_ref": f"managed/alpha_user/{self.users[i]['_id']}"}

    def test_add_list_remove(self):
        e = self.emu
        _, _, g0 = e.api("GET", f"{G}/employees")
        st, _, rel = e.api("POST", f"{G}/employees/members?_action=create", self.ref(0))
        self.assertEqual(st, 201)
        self.assertEqual(rel["_refResourceId"], self.users[0]["_id"])
        self.assertEqual(rel["_refResourceCollection"], "managed/alpha_user")
        self.assertEqual(rel["_refProperties"]["_id"], rel["_id"])
        _, _, g1 = e.api("GET", f"{G}/employees")
        self.assertEqual(g1["_rev"], g0["_rev"])   # membership does not bump the group rev
        self.assertNotIn("members", g1)
        _, _, g2 = e.api("GET", f"{G}/employees?_fields=name,members")
        self.assertEqual([m["_refProperties"]["_id"] for m in g2["members"]], [rel["_id"]])
        st, _, body = e.api("GET", f"{G}/employees/members?_queryFilter=true&_fields={q('_ref/*,userName')}")
        self.assertEqual(st, 200)
        self.assertEqual(body["result"][0]["userName"], "jdoe")
        self.assertIn("_refResourceRev", body["result"][0])
        # delete by user id is wrong (404); by relationship id works
        self.assertCrest(e.api("DELETE", f"{G}/employees/members/{self.users[0]['_id']}"), 404)
        st, _, d = e.api("DELETE", f"{G}/employees/members/{rel['_id']}")
        self.assertEqual((st, d["_id"]), (200, rel["_id"]))
        self.assertEqual(e.admin("GET", "state")["memberships"], [])

    def test_bad_refs(self):
        e = self.emu
        self.assertCrest(e.api("POST", f"{G}/employees/members?_action=create",
                               {"_ref": f"managed/user/{self.users[0]['_id']}"}), 400)
        self.assertCrest(e.api("POST", f"{G}/employees/members?_action=create",
                               {"_ref": "managed/alpha_user/missing"}), 400)
        self.assertCrest(e.api("POST", f"{G}/nope/members?_action=create", self.ref(0)), 404)

    def test_duplicate_member_default_creates_second_relationship(self):
        e = self.emu
        e.api("POST", f"{G}/employees/members?_action=create", self.ref(0))
        e.api("POST", f"{G}/employees/members?_action=create", self.ref(0))
        self.assertEqual(len(e.admin("GET", "state")["memberships"]), 2)

    def test_patch_members(self):
        e = self.emu
        st, _, g = e.api("PATCH", f"{G}/employees",
                         [{"operation": "add", "field": "/members/-", "value": self.ref(0)},
                          {"operation": "add", "field": "/members/-", "value": self.ref(1)}])
        self.assertEqual(st, 200)
        self.assertNotIn("members", g)
        e.api("PATCH", f"{G}/employees", [{"operation": "add", "field": "/members/-", "value": self.ref(0)}])
        ms = e.admin("GET", "state")["memberships"]
        self.assertEqual(sorted(m["userName"] for m in ms), ["jdoe", "scarter"])   # set semantics
        rel = next(m for m in ms if m["userName"] == "jdoe")
        value = dict(self.ref(0), _refProperties={"_id": rel["_id"]})
        e.api("PATCH", f"{G}/employees", [{"operation": "remove", "field": "/members", "value": value}])
        self.assertEqual([m["userName"] for m in e.admin("GET", "state")["memberships"]], ["scarter"])
        # the user side mirror
        _, _, body = e.api("GET", f"{U}/{self.users[1]['_id']}/groups?_queryFilter=true")
        self.assertEqual(body["result"][0]["_refResourceId"], "employees")

    def test_conditional_group(self):
        e = self.emu
        st, _, g = e.api("POST", f"{G}?_action=create", {"name": "fr", "condition": '/country eq "FR"'})
        self.assertEqual((st, g["condition"]), (201, '/country eq "FR"'))
        _, _, body = e.api("GET", f"{G}/fr/members?_queryFilter=true")
        self.assertEqual(sorted(r["_refResourceId"] for r in body["result"]),
                         sorted([self.users[1]["_id"], self.users[2]["_id"]]))
        self.assertTrue(all(r["_refProperties"]["_grantType"] == "conditional" for r in body["result"]))
        self.assertCrest(e.api("POST", f"{G}/fr/members?_action=create", self.ref(0)), 400)
        self.assertCrest(e.api("PATCH", f"{G}/fr", [{"operation": "add", "field": "/members/-",
                                                     "value": self.ref(0)}]), 400)
        self.assertCrest(e.api("DELETE", f"{G}/fr/members/{body['result'][0]['_id']}"), 400)
        # removing the condition removes the members
        e.api("PATCH", f"{G}/fr", [{"operation": "replace", "field": "/condition", "value": None}])
        _, _, body = e.api("GET", f"{G}/fr/members?_queryFilter=true")
        self.assertEqual(body["result"], [])


class Faults(Base):
    def test_429_and_500(self):
        e = self.emu
        e.api("GET", f"{G}?_queryFilter=true")   # fetch a token first
        e.admin("POST", "faults", {"rate_limit_next": 2, "retry_after": 2, "path_prefix": "/openidm"})
        for _ in range(2):
            st, hdrs, body = e.api("GET", f"{G}?_queryFilter=true")
            self.assertEqual((st, hdrs.get("Retry-After"), body["code"]), (429, "2", 429))
        self.assertEqual(e.api("GET", f"{G}?_queryFilter=true")[0], 200)
        e.admin("POST", "faults", {"fail_next": 1, "fail_status": 503})
        self.assertCrest(e.get_token(), 503)   # token endpoint is subject to faults too
        self.assertEqual(e.get_token()[0], 200)
        reqs = e.admin("GET", "state")["requests"]
        self.assertEqual([r["status"] for r in reqs], [200, 200, 429, 429, 200, 503, 200])
        self.assertEqual(reqs[0]["body"]["client_secret"], "<redacted>")
        self.assertEqual(reqs[1]["accept_api_version"], "resource=1.0")


class SelfManagedRealm(Base):
    ARGS = ("--realm", "", "--group-id-mode", "uuid", "--duplicate-status", "409",
            "--require-api-version", "--duplicate-member", "error", "--max-page-size", "1",
            "--trailing-empty-page")

    def test_plain_names(self):
        e = self.emu
        st, _, g = e.api("POST", "/openidm/managed/group?_action=create", {"name": "staff"})
        self.assertEqual(st, 201)
        self.assertNotEqual(g["_id"], "staff")
        self.assertCrest(e.api("POST", "/openidm/managed/group?_action=create", {"name": "staff"}), 409)
        self.assertCrest(e.api("GET", f"{G}?_queryFilter=true"), 404)
        u = e.admin("POST", "users", [{"userName": "jdoe"}])[0]
        ref = {"_ref": f"managed/user/{u['_id']}"}
        self.assertEqual(e.api("POST", f"/openidm/managed/group/{g['_id']}/members?_action=create", ref)[0], 201)
        self.assertCrest(e.api("POST", f"/openidm/managed/group/{g['_id']}/members?_action=create", ref), 409)
        self.assertCrest(e.api("GET", "/openidm/managed/group?_queryFilter=true",
                               headers={"Accept-API-Version": None}), 400)

    def test_page_cap_and_trailing_empty_page(self):
        e = self.emu
        e.admin("POST", "groups", [{"name": "a"}, {"name": "b"}])
        _, _, p1 = e.api("GET", "/openidm/managed/group?_queryFilter=true&_pageSize=100")
        self.assertEqual(len(p1["result"]), 1)
        _, _, p2 = e.api("GET", "/openidm/managed/group?_queryFilter=true&_pageSize=100"
                                f"&_pagedResultsCookie={q(p1['pagedResultsCookie'])}")
        self.assertEqual(len(p2["result"]), 1)
        self.assertIsNotNone(p2["pagedResultsCookie"])
        _, _, p3 = e.api("GET", "/openidm/managed/group?_queryFilter=true&_pageSize=100"
                                f"&_pagedResultsCookie={q(p2['pagedResultsCookie'])}")
        self.assertEqual((p3["result"], p3["pagedResultsCookie"]), ([], None))


if __name__ == "__main__":
    unittest.main()
