"""Self-tests for tests/emulators/connect.py (stdlib unittest; runs the emulator as a subprocess).

    python3 -m unittest discover -s tests/emulators -p 'test_*.py'
"""

import os
import sys
import unittest
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulator_testcase import EmulatorProcess, EmulatorTestCase  # noqa: E402

KEY = "connect-key-123"
AUTH = {"Authorization": f"Key {KEY}"}


class Emulator(EmulatorProcess):
    SCRIPT = "connect.py"

    def api(self, method, path, body=None, headers=None, raw=None):
        h = dict(AUTH)
        h.update(headers or {})
        return self.req(method, "/__api__" + path, body, h, raw)


class Base(EmulatorTestCase):
    EMULATOR = Emulator

    def assertError(self, result, status, code, message=None):
        st, _, body = result
        self.assertEqual(st, status, body)
        self.assertEqual(body["code"], code, body)
        self.assertIn("error", body)
        self.assertIsNone(body["payload"])
        if message:
            self.assertEqual(body["error"], message)


class ProcessContract(unittest.TestCase):
    def test_listening_line_and_admin_state(self):
        emu = Emulator()
        try:
            self.assertRegex(emu.line, r"^LISTENING http://127\.0\.0\.1:\d+\n$")
            state = emu.admin("GET", "state")
            for key in ("groups", "users", "memberships", "requests"):
                self.assertIn(key, state)
            emu.api("GET", "/v1/user")
            state = emu.admin("GET", "state")
            self.assertEqual(state["requests"][-1],
                             {"method": "GET", "path": "/__api__/v1/user", "query": "",
                              "status": 200, "body": None})
        finally:
            emu.close()


class Auth(Base):
    def test_missing_wrong_and_good_key(self):
        e = self.emu
        msg = "The requested operation requires authentication."
        self.assertError(e.req("GET", "/__api__/v1/users"), 401, 24, msg)
        self.assertError(e.req("GET", "/__api__/v1/users", headers={"Authorization": KEY}), 401, 24)
        self.assertError(e.req("GET", "/__api__/v1/users",
                               headers={"Authorization": f"Bearer {KEY}"}), 401, 24)
        self.assertError(e.req("GET", "/__api__/v1/users",
                               headers={"Authorization": "Key nope"}), 401, 24)
        st, _, body = e.api("GET", "/v1/user")
        self.assertEqual(st, 200)
        self.assertEqual(body["user_role"], "administrator")

    def test_unknown_endpoint(self):
        self.assertError(self.emu.api("GET", "/v1/nothing"), 404, 2)
        self.assertError(self.emu.api("PATCH", "/v1/users"), 404, 2)

    def test_server_settings_public_and_ldap_flags(self):
        st, _, body = self.emu.req("GET", "/__api__/server_settings")
        self.assertEqual(st, 200)
        self.assertEqual(body["version"], "2024.09.0")
        a = body["authentication"]
        self.assertEqual(a["name"], "LDAP")
        self.assertTrue(a["external_group_search"])
        self.assertTrue(a["external_group_members"])
        self.assertTrue(a["groups_enabled"])

    def test_bad_json_body(self):
        self.assertError(self.emu.api("PUT", "/v1/groups", raw=b"{not json",
                                      headers={"Content-Type": "application/json"}), 400, 87)


class LdapProvider(Base):
    def seed(self):
        e = self.emu
        users = e.admin("POST", "users", [{"username": "alice"},
                                          {"username": "bob", "remote_only": True}])
        self.assertIsNotNone(users[0]["guid"])
        self.assertIsNone(users[1]["guid"])
        groups = e.admin("POST", "groups", [
            {"name": "Data Science", "members": ["alice", "bob"]},
            {"name": "Data Science Apprentices", "remote_only": True, "members": ["alice"]},
            {"name": "Marketing", "remote_only": True},
        ])
        return users, groups

    def test_remote_search_and_put_ticket(self):
        e = self.emu
        users, groups = self.seed()
        st, _, body = e.api("GET", "/v1/groups/remote?prefix=" + quote("data science"))
        self.assertEqual(st, 200)
        self.assertEqual([r["name"] for r in body["results"]],
                         ["Data Science", "Data Science Apprentices"])
        self.assertEqual(body["results"][0]["guid"], groups[0]["guid"])
        self.assertIsNone(body["results"][1]["guid"])
        self.assertEqual(body["current_page"], 1)
        self.assertEqual(body["total"], 2)
        ticket = body["results"][1]["temp_ticket"]
        st, _, g = e.api("PUT", "/v1/groups", {"temp_ticket": ticket})
        self.assertEqual(st, 200)
        self.assertEqual(g["name"], "Data Science Apprentices")
        self.assertIsNone(g["owner_guid"])
        self.assertEqual(set(g), {"guid", "name", "owner_guid"})
        # members populated from the directory
        state = e.admin("GET", "state")
        ms = [m["username"] for m in state["memberships"] if m["group_guid"] == g["guid"]]
        self.assertEqual(ms, ["alice"])
        # again -> 131 (seed: "A group using the same unique ID already exists")
        self.assertError(e.api("PUT", "/v1/groups", {"temp_ticket": ticket}), 400, 131,
                         "A group using the same unique ID already exists.")
        self.assertError(e.api("PUT", "/v1/groups", {"temp_ticket": body["results"][0]["temp_ticket"]}),
                         400, 131)
        self.assertError(e.api("PUT", "/v1/groups", {"temp_ticket": "bogus"}), 400, 127)
        self.assertError(e.api("PUT", "/v1/groups", {}), 400, 12)
        # now the search reports the guid
        _, _, body = e.api("GET", "/v1/groups/remote?prefix=Data")
        self.assertTrue(all(r["guid"] for r in body["results"]))

    def test_remote_search_limit(self):
        self.seed()
        st, _, body = self.emu.api("GET", "/v1/groups/remote?prefix=Data&limit=1")
        self.assertEqual(len(body["results"]), 1)
        self.assertEqual(body["total"], 2)
        self.assertError(self.emu.api("GET", "/v1/groups/remote?prefix=Data&limit=501"), 400, 25)

    def test_refusals(self):
        e = self.emu
        _, groups = self.seed()
        gid = groups[0]["guid"]
        alice = e.admin("GET", "state")["users"][1]["guid"]
        self.assertError(e.api("POST", "/v1/groups", {"name": "new"}), 400, 120)
        self.assertError(e.api("GET", f"/v1/groups/{gid}/members"), 400, 132)
        self.assertError(e.api("POST", f"/v1/groups/{gid}/members", {"user_guid": alice}), 400, 132)
        self.assertError(e.api("DELETE", f"/v1/groups/{gid}/members/{alice}"), 400, 132)
        self.assertError(e.api("PATCH", f"/v1/groups/{gid}", {"name": "renamed"}), 400, 132)
        self.assertError(e.api("POST", "/v1/users", {"username": "carol"}), 400, 120)

    def test_delete_group_and_404(self):
        e = self.emu
        _, groups = self.seed()
        gid = groups[0]["guid"]
        st, _, body = e.api("DELETE", f"/v1/groups/{gid}")
        self.assertEqual((st, body), (204, None))
        self.assertError(e.api("GET", f"/v1/groups/{gid}"), 404, 4)
        self.assertError(e.api("DELETE", f"/v1/groups/{gid}"), 404, 4)

    def test_remote_users(self):
        e = self.emu
        self.seed()
        st, _, body = e.api("GET", "/v1/users/remote?prefix=bo")
        self.assertEqual(st, 200)
        self.assertEqual(len(body["results"]), 1)
        self.assertIsNone(body["results"][0]["guid"])
        ticket = body["results"][0]["temp_ticket"]
        st, _, user = e.api("PUT", "/v1/users", {"temp_ticket": ticket})
        self.assertEqual(st, 200)
        self.assertEqual(user["username"], "bob")
        self.assertEqual(user["user_role"], "viewer")
        self.assertError(e.api("PUT", "/v1/users", {"temp_ticket": ticket}), 400, 76)
        # a group ticket is not a user ticket
        _, _, gb = e.api("GET", "/v1/groups/remote?prefix=Marketing")
        self.assertError(e.api("PUT", "/v1/users", {"temp_ticket": gb["results"][0]["temp_ticket"]}),
                         400, 127)

    def test_prefix_matches_dn(self):
        e = self.emu
        _, groups = self.seed()
        dn = groups[0]["dn"]
        _, _, body = e.api("GET", "/v1/groups?prefix=" + quote(dn))
        self.assertEqual([g["name"] for g in body["results"]], ["Data Science"])


class PasswordProvider(Base):
    ARGS = ("--provider", "password")

    def test_groups_and_members(self):
        e = self.emu
        me = e.api("GET", "/v1/user")[2]
        alice = e.admin("POST", "users", [{"username": "alice"}])[0]
        st, _, g = e.api("POST", "/v1/groups", {"name": "engineering"})
        self.assertEqual(st, 200)
        self.assertEqual(g["owner_guid"], me["guid"])
        self.assertError(e.api("POST", "/v1/groups", {"name": "engineering"}), 409, 15,
                         "The requested group name is already in use.")
        self.assertError(e.api("POST", "/v1/groups", {}), 400, 12)
        self.assertError(e.api("POST", "/v1/groups", {"name": "x", "unique_id": "u"}), 400, 25)
        self.assertError(e.api("PUT", "/v1/groups", {"temp_ticket": "x"}), 400, 119)
        self.assertError(e.api("GET", "/v1/groups/remote?prefix=e"), 400, 132)
        self.assertError(e.api("GET", "/v1/users/remote?prefix=a"), 400, 132)
        self.assertError(e.api("PUT", "/v1/users", {"temp_ticket": "x"}), 400, 119)
        gid = g["guid"]
        st, _, body = e.api("POST", f"/v1/groups/{gid}/members", {"user_guid": alice["guid"]})
        self.assertEqual((st, body), (204, None))
        self.assertError(e.api("POST", f"/v1/groups/{gid}/members", {"user_guid": alice["guid"]}),
                         409, 16)
        self.assertError(e.api("POST", f"/v1/groups/{gid}/members",
                               {"user_guid": "00000000-0000-0000-0000-000000000000"}), 404, 9)
        st, _, body = e.api("GET", f"/v1/groups/{gid}/members")
        self.assertEqual([u["username"] for u in body["results"]], ["alice"])
        self.assertEqual(body["total"], 1)
        st, _, _ = e.api("DELETE", f"/v1/groups/{gid}/members/{alice['guid']}")
        self.assertEqual(st, 204)
        self.assertError(e.api("DELETE", f"/v1/groups/{gid}/members/{alice['guid']}"), 404, 17)
        # rename
        e.api("POST", "/v1/groups", {"name": "ops"})
        st, _, body = e.api("PATCH", f"/v1/groups/{gid}", {"name": "platform"})
        self.assertEqual((st, body["name"]), (200, "platform"))
        self.assertError(e.api("PATCH", f"/v1/groups/{gid}", {"name": "ops"}), 409, 15)
        self.assertError(e.api("PATCH", f"/v1/groups/{gid}", {"owner_guid": None}), 400, 25)
        self.assertError(e.api("PATCH", f"/v1/groups/{gid}", {"gid": 1234}), 400, 132)

    def test_users_create(self):
        e = self.emu
        st, _, u = e.api("POST", "/v1/users", {"username": "carol", "email": "c@x", "user_role": "publisher"})
        self.assertEqual(st, 200)
        self.assertEqual(u["user_role"], "publisher")
        self.assertError(e.api("POST", "/v1/users", {"username": "carol"}), 409, 8)
        self.assertError(e.api("POST", "/v1/users", {"username": "dave", "user_role": "god"}), 400, 112)
        self.assertError(e.api("POST", "/v1/users", {"email": "x"}), 400, 12)
        st, _, body = e.api("POST", f"/v1/users/{u['guid']}/lock", {"locked": True})
        self.assertEqual((st, body), (200, None))
        self.assertTrue(e.api("GET", f"/v1/users/{u['guid']}")[2]["locked"])
        self.assertError(e.api("GET", "/v1/users/does-not-exist"), 404, 9)

    def test_server_settings(self):
        a = self.emu.req("GET", "/__api__/server_settings")[2]["authentication"]
        self.assertEqual(a["name"], "Password")
        self.assertFalse(a["external_group_search"])
        self.assertFalse(a["external_group_members"])


class SamlAutoProvision(Base):
    ARGS = ("--provider", "saml", "--groups-auto-provision")

    def test_member_changes_refused(self):
        e = self.emu
        alice = e.admin("POST", "users", [{"username": "alice", "unique_id": "a-1"}])[0]
        st, _, g = e.api("POST", "/v1/groups", {"name": "sales"})
        self.assertEqual(st, 200)
        self.assertIsNone(g["owner_guid"])
        self.assertError(e.api("POST", f"/v1/groups/{g['guid']}/members",
                               {"user_guid": alice["guid"]}), 400, 132)
        self.assertEqual(e.api("GET", f"/v1/groups/{g['guid']}/members")[0], 200)
        self.assertError(e.api("POST", "/v1/users", {"username": "bob"}), 400, 129)
        st, _, _ = e.api("POST", "/v1/users", {"username": "bob", "unique_id": "b-1"})
        self.assertEqual(st, 200)
        self.assertError(e.api("POST", "/v1/users", {"username": "bob2", "unique_id": "b-1"}), 400, 76)
        a = e.req("GET", "/__api__/server_settings")[2]["authentication"]
        self.assertEqual((a["name"], a["external_group_members"]), ("SAML", True))


class OAuthByUniqueId(Base):
    ARGS = ("--provider", "oauth2", "--groups-by-unique-id")

    def test_unique_id_rules(self):
        e = self.emu
        self.assertError(e.api("POST", "/v1/groups", {"name": "a"}), 400, 130)
        self.assertEqual(e.api("POST", "/v1/groups", {"name": "a", "unique_id": "g1"})[0], 200)
        self.assertEqual(e.api("POST", "/v1/groups", {"name": "a", "unique_id": "g2"})[0], 200)
        self.assertError(e.api("POST", "/v1/groups", {"name": "b", "unique_id": "g1"}), 400, 131)


class Paging(Base):
    def seed_groups(self, n=5):
        self.emu.admin("POST", "groups", [{"name": f"team-{i}"} for i in range(1, n + 1)]
                       + [{"name": "other"}])

    def pages(self, path):
        out = []
        for p in range(1, 5):
            sep = "&" if "?" in path else "?"
            _, _, body = self.emu.api("GET", f"{path}{sep}page_number={p}&page_size=2")
            out.append([g["name"] for g in body["results"]])
        return out

    def test_plain_paging(self):
        self.seed_groups()
        self.assertEqual(self.pages("/v1/groups"),
                         [["other", "team-1"], ["team-2", "team-3"], ["team-4", "team-5"], []])
        _, _, body = self.emu.api("GET", "/v1/groups?page_size=2&page_number=2")
        self.assertEqual((body["current_page"], body["total"]), (2, 6))

    def test_prefix_page_repeats_before_2025_04(self):
        self.seed_groups()
        pages = self.pages("/v1/groups?prefix=TEAM")
        self.assertEqual(pages, [["team-1", "team-2"]] * 4)
        _, _, body = self.emu.api("GET", "/v1/groups?prefix=team&page_size=2&page_number=3")
        self.assertEqual((body["current_page"], body["total"]), (1, 5))

    def test_bad_paging_params(self):
        for q in ("page_size=0", "page_size=501", "page_number=0", "page_size=abc", "asc_order=maybe"):
            self.assertError(self.emu.api("GET", f"/v1/groups?{q}"), 400, 25)

    def test_users_prefix_empty_after_first(self):
        self.emu.admin("POST", "users", [{"username": f"zz{i}"} for i in range(5)])
        _, _, p1 = self.emu.api("GET", "/v1/users?prefix=zz&page_size=2&page_number=1")
        _, _, p2 = self.emu.api("GET", "/v1/users?prefix=zz&page_size=2&page_number=2")
        self.assertEqual(len(p1["results"]), 2)
        self.assertEqual(p2["results"], [])
        self.assertEqual(p2["total"], 5)
        _, _, all2 = self.emu.api("GET", "/v1/users?page_size=2&page_number=2")
        self.assertEqual(len(all2["results"]), 2)


class PagingFixedVersion(Paging):
    ARGS = ("--version", "2025.04.0", "--users-prefix-paging", "fixed")

    def test_prefix_page_repeats_before_2025_04(self):
        self.seed_groups()
        self.assertEqual(self.pages("/v1/groups?prefix=team"),
                         [["team-1", "team-2"], ["team-3", "team-4"], ["team-5"], []])

    def test_users_prefix_empty_after_first(self):
        self.emu.admin("POST", "users", [{"username": f"zz{i}"} for i in range(5)])
        _, _, p2 = self.emu.api("GET", "/v1/users?prefix=zz&page_size=2&page_number=2")
        self.assertEqual(len(p2["results"]), 2)


class PageSizeCap(Base):
    ARGS = ("--page-size", "2", "--provider", "password")

    def test_cap(self):
        self.emu.admin("POST", "groups", [{"name": f"g{i}"} for i in range(5)])
        _, _, body = self.emu.api("GET", "/v1/groups?page_size=500")
        self.assertEqual(len(body["results"]), 2)
        self.assertEqual(body["total"], 5)


class Faults(Base):
    def test_rate_limit_and_failures(self):
        e = self.emu
        e.admin("POST", "faults", {"rate_limit_next": 2, "retry_after": 3})
        for _ in range(2):
            st, hdrs, body = e.api("GET", "/v1/users")
            self.assertEqual(st, 429)
            self.assertEqual(hdrs.get("Retry-After"), "3")
            self.assertEqual(body["code"], 277)
        self.assertEqual(e.api("GET", "/v1/users")[0], 200)
        e.admin("POST", "faults", {"fail_next": 1, "fail_status": 503})
        self.assertEqual(e.api("GET", "/v1/users")[0], 503)
        self.assertEqual(e.api("GET", "/v1/users")[0], 200)
        e.admin("POST", "faults", {"fail_next": 1, "fail_status": 502, "fail_body": "text"})
        st, _, body = e.api("GET", "/v1/users")
        self.assertEqual(st, 502)
        self.assertIsInstance(body, str)
        statuses = [r["status"] for r in e.admin("GET", "state")["requests"]]
        self.assertEqual(statuses, [429, 429, 200, 503, 200, 502])

    def test_path_filter_and_no_retry_after(self):
        e = self.emu
        e.admin("POST", "faults", {"rate_limit_next": 1, "retry_after": None,
                                   "path_prefix": "/__api__/v1/groups"})
        self.assertEqual(e.api("GET", "/v1/users")[0], 200)
        st, hdrs, _ = e.api("GET", "/v1/groups")
        self.assertEqual(st, 429)
        self.assertNotIn("Retry-After", hdrs)


class Roles(Base):
    ARGS = ("--provider", "password", "--viewer-key", "view-1", "--publisher-key", "pub-1")

    def test_viewer_and_publisher(self):
        e = self.emu
        v = {"Authorization": "Key view-1"}
        self.assertError(e.api("POST", "/v1/groups", {"name": "x"}, headers=v), 403, 22)
        self.assertEqual(e.api("GET", "/v1/groups", headers=v)[0], 200)
        p = {"Authorization": "Key pub-1"}
        st, _, mine = e.api("POST", "/v1/groups", {"name": "mine"}, headers=p)
        self.assertEqual(st, 200)
        _, _, theirs = e.api("POST", "/v1/groups", {"name": "theirs"})
        self.assertError(e.api("DELETE", f"/v1/groups/{theirs['guid']}", headers=p), 403, 22)
        self.assertEqual(e.api("DELETE", f"/v1/groups/{mine['guid']}", headers=p)[0], 204)
        self.assertError(e.api("POST", "/v1/users", {"username": "z"}, headers=p), 403, 22)


class ModernFields(Base):
    ARGS = ("--provider", "password", "--modern-fields", "--no-patch")

    def test_fields_and_no_patch(self):
        e = self.emu
        _, _, g = e.api("POST", "/v1/groups", {"name": "a"})
        self.assertEqual(g["member_count"], 0)
        self.assertIn("gid", g)
        self.assertError(e.api("PATCH", f"/v1/groups/{g['guid']}", {"name": "b"}), 404, 2)
        st, _, g2 = e.api("POST", f"/v1/groups/{g['guid']}", {"name": "b"})
        self.assertEqual((st, g2["name"]), (200, "b"))


if __name__ == "__main__":
    unittest.main()
