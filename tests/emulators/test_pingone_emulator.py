"""Self-test for tests/emulators/pingone.py (stdlib unittest; run from the repo root:
python3 -m unittest tests/emulators/test_pingone_emulator.py)."""

import base64
import os
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulator_testcase import EmulatorProcess, EmulatorTestCase  # noqa: E402

ENV = "11111111-2222-3333-4444-555555555555"
SYNC = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
IMPORT_CT = "application/vnd.pingidentity.propagation.provisioningsync.groupimport+json"


class Emu(EmulatorProcess):
    SCRIPT = "pingone.py"
    token = None

    def get_token(self, **kw):
        form = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
        basic = base64.b64encode(b"ldapsync-client:s3cret-client").decode()
        s, _, b = self.req("POST", f"/{ENV}/as/token", raw=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"})
        assert s == 200, (s, b)
        self.token = b["access_token"]
        return b

    def api(self, method, path, body=None, ct="application/json", token=None, headers=None):
        h = {"Authorization": f"Bearer {token or self.token}"}
        if body is not None:
            h["Content-Type"] = ct
        h.update(headers or {})
        url = path if path.startswith("http") else f"/v1/environments/{ENV}{path}"
        return self.req(method, url, body=body, headers=h)

    def imp(self, body, sync=SYNC, ct=IMPORT_CT):
        return self.api("POST", f"/propagation/provisioningSyncs/{sync}", body, ct=ct)


def grp(uid, name, op=None, **attrs):
    g = {"uniqueId": uid, "attributes": {"name": name, "member": [], **attrs}}
    if op:
        g["operation"] = op
    return g


class Base(EmulatorTestCase):
    EMULATOR = Emu

    def setUp(self):
        super().setUp()
        self.emu.get_token()

    def assertP1Error(self, status, body, want_status, code, detail_code=None, target=None):
        self.assertEqual(status, want_status, body)
        self.assertIsInstance(body, dict)
        self.assertEqual(body["code"], code)
        self.assertTrue(body["id"] and body["message"])
        if detail_code:
            codes = [(d["code"], d.get("target")) for d in body["details"]]
            self.assertTrue(any(c == detail_code and (target is None or t == target) for c, t in codes), codes)


class TestAuth(Base):
    def test_token_basic_and_post(self):
        tok = self.emu.get_token()
        self.assertEqual(tok["token_type"], "Bearer")
        self.assertEqual(tok["expires_in"], 3600)
        self.assertEqual(len(tok["access_token"].split(".")), 3)
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "ldapsync-client",
                                       "client_secret": "s3cret-client"}).encode()
        s, h, b = self.emu.req("POST", f"/{ENV}/as/token", raw=form,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(s, 200, b)
        self.assertEqual(h["Cache-Control"], "no-store")
        self.assertEqual(self.emu.state()["tokens_issued"], 3)  # setUp + 2

    def test_token_errors(self):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "ldapsync-client",
                                       "client_secret": "wrong"}).encode()
        ctype = {"Content-Type": "application/x-www-form-urlencoded"}
        s, _, b = self.emu.req("POST", f"/{ENV}/as/token", raw=form, headers=ctype)
        self.assertEqual((s, b["error"]), (401, "invalid_client"))
        basic = base64.b64encode(b"ldapsync-client:nope").decode()
        s, h, b = self.emu.req("POST", f"/{ENV}/as/token", raw=b"grant_type=client_credentials",
                               headers=dict(ctype, Authorization=f"Basic {basic}"))
        self.assertEqual((s, b["error"]), (401, "invalid_client"))
        self.assertIn("WWW-Authenticate", h)
        good = base64.b64encode(b"ldapsync-client:s3cret-client").decode()
        s, _, b = self.emu.req("POST", f"/{ENV}/as/token", raw=b"grant_type=password",
                               headers=dict(ctype, Authorization=f"Basic {good}"))
        self.assertEqual((s, b["error"]), (400, "unsupported_grant_type"))
        s, _, b = self.emu.req("POST", f"/{ENV}/as/token", raw=b"",
                               headers=dict(ctype, Authorization=f"Basic {good}"))
        self.assertEqual((s, b["error"]), (400, "invalid_request"))
        s, _, b = self.emu.req("POST", "/00000000-0000-0000-0000-000000000000/as/token",
                               raw=b"grant_type=client_credentials", headers=dict(ctype, Authorization=f"Basic {good}"))
        self.assertP1Error(s, b, 404, "NOT_FOUND")
        self.assertEqual(self.emu.state()["tokens_issued"], 1)

    def test_api_requires_valid_bearer(self):
        s, h, b = self.emu.req("GET", f"/v1/environments/{ENV}/groups")
        self.assertP1Error(s, b, 401, "ACCESS_FAILED", "INVALID_TOKEN")
        self.assertTrue(h["Correlation-Id"])
        s, _, b = self.emu.api("GET", "/groups", token="not-a-token")
        self.assertP1Error(s, b, 401, "ACCESS_FAILED", "INVALID_TOKEN")
        s, _, b = self.emu.api("GET", "/groups")
        self.assertEqual(s, 200, b)

    def test_unknown_environment(self):
        s, _, b = self.emu.req("GET", "/v1/environments/00000000-0000-0000-0000-000000000000/groups",
                               headers={"Authorization": f"Bearer {self.emu.token}"})
        self.assertP1Error(s, b, 403, "ACCESS_FAILED")

    def test_expire_tokens_fault(self):
        self.emu.admin("POST", "faults", {"expire_tokens": True})
        s, _, b = self.emu.api("GET", "/groups")
        self.assertP1Error(s, b, 401, "ACCESS_FAILED", "INVALID_TOKEN")
        self.emu.get_token()
        self.assertEqual(self.emu.api("GET", "/groups")[0], 200)


class TestTokenTtl(Base):
    ARGS = ("--token-ttl", "1")

    def test_token_expires(self):
        self.assertEqual(self.emu.api("GET", "/groups")[0], 200)
        time.sleep(1.2)
        s, _, b = self.emu.api("GET", "/groups")
        self.assertP1Error(s, b, 401, "ACCESS_FAILED", "INVALID_TOKEN")


class TestImport(Base):
    def test_wrong_content_type_is_415(self):
        s, _, b = self.emu.imp({"groups": []}, ct="application/json")
        self.assertP1Error(s, b, 415, "INVALID_REQUEST")
        self.assertEqual(self.emu.state()["imports"], [])

    def test_unknown_sync_id_is_404(self):
        s, _, b = self.emu.imp({"groups": []}, sync="ffffffff-0000-0000-0000-000000000000")
        self.assertP1Error(s, b, 404, "NOT_FOUND")

    def test_validation(self):
        cases = [
            ({}, "REQUIRED_VALUE", "groups"),
            ({"groups": {}}, "INVALID_VALUE", "groups"),
            ({"groups": [{"attributes": {"name": "x"}}]}, "REQUIRED_VALUE", "groups[0].uniqueId"),
            ({"groups": [{"uniqueId": "u1"}]}, "REQUIRED_VALUE", "groups[0].attributes"),
            ({"groups": [grp("u1", "x", op="REMOVED")]}, "INVALID_VALUE", "groups[0].operation"),
            ({"groups": [grp("u1", "x", member="cn=a")]}, "INVALID_VALUE", "groups[0].attributes.member"),
            ({"groups": [{"uniqueId": "u1", "attributes": {"dn": "cn=x"}}]}, "REQUIRED_VALUE",
             "groups[0].attributes.name"),
            ({"groups": [], "next_token": "t"}, "INVALID_VALUE", "next_token"),
            ({"groups": [], "nextToken": 5}, "INVALID_VALUE", "nextToken"),
        ]
        for body, code, target in cases:
            with self.subTest(body=body):
                s, _, b = self.emu.imp(body)
                self.assertP1Error(s, b, 400, "INVALID_DATA", code, target)
        s, _, b = self.emu.req("POST", f"/v1/environments/{ENV}/propagation/provisioningSyncs/{SYNC}",
                               raw=b"{not json", headers={"Authorization": f"Bearer {self.emu.token}",
                                                           "Content-Type": IMPORT_CT + "; charset=utf-8"})
        self.assertP1Error(s, b, 400, "INVALID_REQUEST")
        self.assertEqual(self.emu.state()["imports"], [])

    def test_full_then_delta_cycle(self):
        s, _, b = self.emu.imp({"groups": [grp("g1", "Admins", member=["cn=a"], active="true",
                                                objectguid=["g1"], dn="cn=Admins,dc=x"),
                                            grp("g2", "Users")]})
        self.assertEqual((s, b), (200, {}))
        s, _, _ = self.emu.imp({"groups": [grp("g3", "Ops")], "nextToken": "usn-100"})
        self.assertEqual(s, 200)
        s, _, _ = self.emu.imp({"startToken": "usn-100", "nextToken": "usn-200",
                                "groups": [grp("g1", "Admins", op="UPDATED", member=["cn=b"]),
                                           grp("g2", "Users\nDEL:g2", op="DELETED")]})
        self.assertEqual(s, 200)
        st = self.emu.state()
        self.assertEqual([i.get("startToken") for i in st["imports"]], [None, None, "usn-100"])
        self.assertEqual(st["imports"][2]["syncId"], SYNC)
        self.assertEqual(st["provisioning_tokens"], {SYNC: "usn-200"})
        ext = st["external_groups"][SYNC]
        self.assertEqual(ext["g1"]["member"], ["cn=b"])
        self.assertFalse(ext["g1"]["deleted"])
        self.assertTrue(ext["g2"]["deleted"])
        names = sorted(g["name"] for g in st["groups"])
        self.assertEqual(names, ["Admins", "Ops"])
        self.assertTrue(all(g["sourceType"] == "GATEWAY" for g in st["groups"]))

    def test_fail_imports_after(self):
        self.emu.admin("POST", "faults", {"fail_imports_after": 1, "fail_status": 500})
        self.assertEqual(self.emu.imp({"groups": [grp("g1", "A")]})[0], 200)
        for _ in range(2):
            s, _, b = self.emu.imp({"groups": [grp("g2", "B")]})
            self.assertP1Error(s, b, 500, "UNEXPECTED_ERROR")
        self.emu.admin("POST", "faults", {})
        self.assertEqual(self.emu.imp({"groups": [grp("g2", "B")]})[0], 200)
        self.assertEqual(len(self.emu.state()["imports"]), 2)

    def test_materialised_external_group_is_not_editable(self):
        self.emu.imp({"groups": [grp("g1", "Ext")]})
        gid = self.emu.state()["groups"][0]["id"]
        user = self.emu.admin("POST", "users", [{"username": "u"}])[0]
        s, _, b = self.emu.api("POST", f"/users/{user['id']}/memberOfGroups", {"id": gid})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "CONSTRAINT_VIOLATION")


class TestImportLimits(Base):
    ARGS = ("--max-batch-groups", "2", "--max-body-bytes", "2000", "--import-response", "empty202",
            "--enforce-start-token", "--full-sync-deletes-unseen")

    def test_batch_limit(self):
        s, _, b = self.emu.imp({"groups": [grp(f"g{i}", f"G{i}") for i in range(3)]})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "SIZE_LIMIT_EXCEEDED", "groups")
        s, _, b = self.emu.imp({"groups": [grp(f"g{i}", f"G{i}") for i in range(2)]})
        self.assertEqual((s, b), (202, None))

    def test_body_limit_413(self):
        s, h, b = self.emu.imp({"groups": [grp("g1", "G", member=["x" * 3000])]})
        self.assertP1Error(s, b, 413, "INVALID_REQUEST", "SIZE_LIMIT_EXCEEDED")
        self.assertEqual(self.emu.api("GET", "/groups")[0], 200)

    def test_start_token_enforced_and_full_sync_deletes(self):
        self.assertEqual(self.emu.imp({"groups": [grp("g1", "A"), grp("g2", "B")], "nextToken": "t1"})[0], 202)
        s, _, b = self.emu.imp({"startToken": "bogus", "groups": []})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "INVALID_VALUE", "startToken")
        self.assertEqual(self.emu.imp({"startToken": "t1", "groups": [], "nextToken": "t2"})[0], 202)
        # new full sync (no startToken) that no longer contains g2
        self.assertEqual(self.emu.imp({"groups": [grp("g1", "A")], "nextToken": "t3"})[0], 202)
        ext = self.emu.state()["external_groups"][SYNC]
        self.assertFalse(ext["g1"]["deleted"])
        self.assertTrue(ext["g2"]["deleted"])


class TestGroups(Base):
    def test_create_read_update_delete(self):
        s, h, g = self.emu.api("POST", "/groups", {"name": "Admins", "description": "d", "externalId": "guid-1"})
        self.assertEqual(s, 201, g)
        self.assertEqual(g["environment"]["id"], ENV)
        self.assertTrue(g["_links"]["self"]["href"].endswith(g["id"]))
        s, _, got = self.emu.api("GET", f"/groups/{g['id']}")
        self.assertEqual((s, got["name"], got["externalId"]), (200, "Admins", "guid-1"))
        s, _, put = self.emu.api("PUT", f"/groups/{g['id']}", {"name": "Admins2"})
        self.assertEqual(s, 200)
        self.assertNotIn("description", put)  # full replace
        self.assertEqual(self.emu.api("DELETE", f"/groups/{g['id']}")[0], 204)
        for method, body in (("GET", None), ("PUT", {"name": "x"}), ("DELETE", None)):
            s, _, b = self.emu.api(method, f"/groups/{g['id']}", body)
            self.assertP1Error(s, b, 404, "NOT_FOUND")

    def test_create_validation_and_415(self):
        s, _, b = self.emu.api("POST", "/groups", {"description": "no name"})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "REQUIRED_VALUE", "name")
        s, _, b = self.emu.api("POST", "/groups", {"name": "x"}, ct="text/plain")
        self.assertP1Error(s, b, 415, "INVALID_REQUEST")
        s, _, b = self.emu.api("PATCH", "/groups/whatever", {"name": "x"})
        self.assertEqual(s, 405)

    def test_uniqueness(self):
        _, _, g = self.emu.api("POST", "/groups", {"name": "Admins"})
        s, _, b = self.emu.api("POST", "/groups", {"name": "admins"})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "UNIQUENESS_VIOLATION", "name")
        self.assertEqual(b["details"][0]["innerError"]["existingId"], g["id"])
        _, _, g2 = self.emu.api("POST", "/groups", {"name": "Other"})
        s, _, b = self.emu.api("PUT", f"/groups/{g2['id']}", {"name": "ADMINS"})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "UNIQUENESS_VIOLATION")

    def test_filter_and_paging(self):
        ids = [self.emu.api("POST", "/groups", {"name": f"G{i}", "externalId": f"ext-{i}"})[2]["id"]
               for i in range(250)]
        s, _, b = self.emu.api("GET", "/groups?" + urllib.parse.urlencode({"filter": 'name eq "g7"'}))
        self.assertEqual([g["id"] for g in b["_embedded"]["groups"]], [ids[7]])
        s, _, b = self.emu.api("GET", "/groups?" + urllib.parse.urlencode(
            {"filter": '(externalId eq "ext-3") or (externalId eq "ext-4")'}))
        self.assertEqual(sorted(g["id"] for g in b["_embedded"]["groups"]), sorted([ids[3], ids[4]]))
        s, _, b = self.emu.api("GET", "/groups?" + urllib.parse.urlencode({"filter": 'description co "x"'}))
        self.assertP1Error(s, b, 400, "INVALID_DATA", "INVALID_FILTER", "filter")
        s, _, b = self.emu.api("GET", "/groups?limit=5000")
        self.assertP1Error(s, b, 400, "INVALID_DATA", "OUT_OF_RANGE", "limit")
        seen, url, pages = [], "/groups?limit=1000", 0
        while url:
            s, _, b = self.emu.api("GET", url)
            self.assertEqual(s, 200)
            seen += [g["id"] for g in b["_embedded"]["groups"]]
            self.assertLessEqual(b["size"], 100)  # limit is capped by --page-size
            url = b["_links"].get("next", {}).get("href")
            pages += 1
        self.assertEqual((seen, pages), (ids, 3))


class TestUniqueness409(Base):
    ARGS = ("--uniqueness-status", "409", "--duplicate-membership", "400")

    def test_409_and_duplicate_membership(self):
        _, _, g = self.emu.api("POST", "/groups", {"name": "A"})
        s, _, b = self.emu.api("POST", "/groups", {"name": "A"})
        self.assertEqual(s, 409)
        self.assertEqual(b["details"][0]["code"], "UNIQUENESS_VIOLATION")
        u = self.emu.admin("POST", "users", [{"username": "alice"}])[0]
        self.assertEqual(self.emu.api("POST", f"/users/{u['id']}/memberOfGroups", {"id": g["id"]})[0], 201)
        s, _, b = self.emu.api("POST", f"/users/{u['id']}/memberOfGroups", {"id": g["id"]})
        self.assertP1Error(s, b, 400, "INVALID_DATA", "UNIQUENESS_VIOLATION")


class TestMembership(Base):
    def test_users_membership_and_nesting(self):
        users = self.emu.admin("POST", "users", [
            {"username": "alice", "email": "alice@example.com", "externalId": "uid-a"},
            {"username": "bob", "email": "bob@example.com", "externalId": "uid-b"}])
        alice, bob = users
        for q, want in (('username eq "ALICE"', alice), ('email eq "bob@example.com"', bob),
                        ('externalId eq "uid-a"', alice)):
            s, _, b = self.emu.api("GET", "/users?" + urllib.parse.urlencode({"filter": q}))
            self.assertEqual([u["id"] for u in b["_embedded"]["users"]], [want["id"]], q)
        _, _, child = self.emu.api("POST", "/groups", {"name": "Child"})
        _, _, parent = self.emu.api("POST", "/groups", {"name": "Parent"})
        s, _, m = self.emu.api("POST", f"/users/{alice['id']}/memberOfGroups", {"id": child["id"]})
        self.assertEqual((s, m["id"], m["type"]), (201, child["id"], "DIRECT"))
        self.assertEqual(self.emu.api("POST", f"/users/{alice['id']}/memberOfGroups", {"id": child["id"]})[0], 201)
        s, _, b = self.emu.api("POST", f"/users/{alice['id']}/memberOfGroups", {"id": "nope"})
        self.assertP1Error(s, b, 404, "NOT_FOUND")
        s, _, b = self.emu.api("POST", "/users/nope/memberOfGroups", {"id": child["id"]})
        self.assertP1Error(s, b, 404, "NOT_FOUND")
        s, _, b = self.emu.api("DELETE", f"/users/{bob['id']}/memberOfGroups/{child['id']}")
        self.assertP1Error(s, b, 404, "NOT_FOUND")
        # nesting: child is a member of parent
        s, _, n = self.emu.api("POST", f"/groups/{child['id']}/memberOfGroups", {"id": parent["id"]})
        self.assertEqual((s, n["id"]), (201, parent["id"]))
        st = self.emu.state()
        self.assertEqual(st["memberships"], {child["id"]: [alice["id"]]})
        self.assertEqual(st["group_memberships"], {child["id"]: [parent["id"]]})
        s, _, b = self.emu.api("GET", f"/users/{alice['id']}/memberOfGroups")
        types = {m["id"]: m["type"] for m in b["_embedded"]["groupMemberships"]}
        self.assertEqual(types, {child["id"]: "DIRECT", parent["id"]: "INDIRECT"})
        q = urllib.parse.urlencode({"filter": f'memberOfGroups[id eq "{parent["id"]}" and type eq "DIRECT"]'})
        self.assertEqual(self.emu.api("GET", f"/users?{q}")[2]["_embedded"]["users"], [])
        q = urllib.parse.urlencode({"filter": f'memberOfGroups[id eq "{parent["id"]}"]'})
        self.assertEqual([u["id"] for u in self.emu.api("GET", f"/users?{q}")[2]["_embedded"]["users"]],
                         [alice["id"]])
        self.assertEqual(self.emu.api("DELETE", f"/groups/{child['id']}/memberOfGroups/{parent['id']}")[0], 204)
        self.assertEqual(self.emu.api("DELETE", f"/groups/{child['id']}/memberOfGroups/{parent['id']}")[0], 404)
        self.assertEqual(self.emu.api("DELETE", f"/users/{alice['id']}/memberOfGroups/{child['id']}")[0], 204)
        self.assertEqual(self.emu.state()["memberships"], {})


class TestFaults(Base):
    def test_rate_limit(self):
        self.emu.admin("POST", "faults", {"rate_limit_next": 2, "retry_after": 3})
        for _ in range(2):
            s, h, b = self.emu.api("GET", "/groups")
            self.assertP1Error(s, b, 429, "REQUEST_LIMITED", "LIMIT_EXCEEDED")
            self.assertEqual(h["Retry-After"], "3")
        self.assertEqual(self.emu.api("GET", "/groups")[0], 200)
        statuses = [r["status"] for r in self.emu.state()["requests"] if r["path"].startswith("/v1/")]
        self.assertEqual(statuses, [429, 429, 200])

    def test_fail_next_and_bad_fault_key(self):
        self.emu.admin("POST", "faults", {"fail_next": 1, "fail_status": 503})
        s, h, b = self.emu.api("GET", "/groups")
        self.assertP1Error(s, b, 503, "UNEXPECTED_ERROR")
        self.assertIn("Retry-After", h)
        self.assertEqual(self.emu.api("GET", "/groups")[0], 200)
        s, _, b = self.emu.req("POST", "/__admin/faults", body={"rate_limit": 1})
        self.assertEqual(s, 400)

    def test_reset(self):
        self.emu.api("POST", "/groups", {"name": "A"})
        self.emu.admin("POST", "reset")
        st = self.emu.state()
        self.assertEqual((st["groups"], st["tokens_issued"], st["requests"]), ([], 0, []))
        s, _, b = self.emu.api("GET", "/groups")  # tokens were cleared too
        self.assertEqual(s, 401)


if __name__ == "__main__":
    unittest.main()
