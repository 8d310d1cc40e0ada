"""Tests of create_counter_user.py against stand-ins of the omero-py objects it calls (there is
no omero-py nor OMERO server here). The stand-in IAdmin keeps privileges as omero-server's
AdminImpl does (read from its source): a light administrator's privileges are the ones its
config does not set false, and a user outside the system group has none.

Run: python3 -m unittest discover -s counter (scripts/test.sh does).
"""

import io
import os
import py_compile
import subprocess
import sys
import tempfile
import types
import unittest
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import create_counter_user as script

# LightAdminPrivileges.getAllPrivileges (omero-server), as AdminPrivilege values.
ALL = ["Chgrp", "Chown", "DeleteFile", "DeleteManagedRepo", "DeleteOwned", "DeleteScriptRepo",
       "ModifyGroup", "ModifyGroupMembership", "ModifyUser", "ReadSession", "Sudo",
       "WriteFile", "WriteManagedRepo", "WriteOwned", "WriteScriptRepo"]
ROOT, GUEST, SYSTEM, USER = 0, 1, 0, 1


class RValue:
    def __init__(self, val):
        self.val = val


class ApiUsageException(Exception):
    pass


class ExperimenterI:
    def __init__(self, id=None, loaded=True):
        self.id = None if id is None else RValue(id)
        self.loaded = loaded
        self.omeName = self.firstName = self.lastName = self.ldap = None

    def getId(self):
        return self.id


class ExperimenterGroupI:
    def __init__(self, id, loaded=True):
        self.id = RValue(id)


class AdminPrivilegeI:
    def __init__(self):
        self.value = None

    def setValue(self, value):
        self.value = value

    def getValue(self):
        return self.value


API = types.SimpleNamespace(
    ExperimenterI=ExperimenterI, ExperimenterGroupI=ExperimenterGroupI,
    AdminPrivilegeI=AdminPrivilegeI, rstring=RValue, rbool=RValue,
    ApiUsageException=ApiUsageException)


class FakeAdmin:
    """IAdmin, as far as the script uses it. ``calls`` records the writes; ``most`` the most
    privileges each user held after any write."""

    def __init__(self):
        self.users = {"root": ROOT, "guest": GUEST}
        self.groups = {ROOT: {SYSTEM, USER}, GUEST: set()}
        self.config = {}
        self.calls = []
        self.most = {}
        self.grant_all = False  # a server that ignores the privileges asked for

    def getSecurityRoles(self):
        return types.SimpleNamespace(rootId=ROOT, guestId=GUEST, systemGroupId=SYSTEM,
                                     userGroupId=USER)

    def lookupExperimenter(self, name):
        if name not in self.users:
            raise ApiUsageException("No such experimenter: " + name)
        e = ExperimenterI(self.users[name])
        e.omeName = RValue(name)
        return e

    def add_user(self, name, groups, privileges=None):
        uid = len(self.users) + 1
        self.users[name] = uid
        self.groups[uid] = set(groups)
        if privileges is not None:
            self.config[uid] = {p: p in privileges for p in ALL}
        return uid

    def privileges(self, uid):
        if SYSTEM not in self.groups[uid]:
            return []
        return [p for p in ALL if self.config.get(uid, {}).get(p, True)]

    def note(self, uid):
        self.most[uid] = max(self.most.get(uid, 0), len(self.privileges(uid)))

    def createRestrictedSystemUserWithPassword(self, user, privileges, password):
        names = [p.getValue().val for p in privileges]
        self.calls.append(("create", user.omeName.val, names, password.val, user.ldap.val,
                           user.firstName.val, user.lastName.val))
        uid = self.add_user(user.omeName.val, {SYSTEM, USER}, None if self.grant_all else names)
        self.note(uid)
        return uid

    def setAdminPrivileges(self, user, privileges):
        names = [p.getValue().val for p in privileges]
        self.calls.append(("setAdminPrivileges", user.id.val, names))
        self.config[user.id.val] = {p: p in names for p in ALL}
        self.note(user.id.val)

    def addGroups(self, user, groups):
        ids = [g.id.val for g in groups]
        self.calls.append(("addGroups", user.id.val, ids))
        self.groups[user.id.val] |= set(ids)
        self.note(user.id.val)

    def getMemberOfGroupIds(self, user):
        return sorted(self.groups[user.id.val])

    def getAdminPrivileges(self, user):
        out = []
        for name in self.privileges(user.id.val):
            p = AdminPrivilegeI()
            p.setValue(RValue(name))
            out.append(p)
        return out


class EnsureCounterUser(unittest.TestCase):
    def test_a_new_user_is_a_light_admin_with_read_session_only_in_one_call(self):
        admin = FakeAdmin()
        uid, done = script.ensure_counter_user(admin, API, "monitor", "s3cret")
        self.assertEqual(admin.calls, [
            ("create", "monitor", ["ReadSession"], "s3cret", False, "Session", "Counter")])
        self.assertEqual(admin.privileges(uid), ["ReadSession"])
        self.assertEqual(admin.groups[uid], {SYSTEM, USER})
        self.assertIn("created monitor", done)

    def test_an_existing_user_is_left_alone_unless_asked(self):
        for groups, privileges, described in (
                ({USER, 5}, None, "not an administrator"),
                ({SYSTEM, USER}, None, "an administrator with Chgrp, Chown"),  # a full admin
        ):
            admin = FakeAdmin()
            admin.add_user("monitor", groups, privileges)
            with self.assertRaises(script.Refused) as refused:
                script.ensure_counter_user(admin, API, "monitor", None)
            self.assertIn(described, str(refused.exception))
            self.assertIn("--restrict-existing", str(refused.exception))
            self.assertEqual(admin.calls, [], "nothing written")

    def test_restricting_an_existing_plain_user_never_gives_it_more_than_read_session(self):
        admin = FakeAdmin()
        uid = admin.add_user("monitor", {USER, 5})
        _, done = script.ensure_counter_user(admin, API, "monitor", None, restrict_existing=True)
        self.assertEqual(admin.calls, [("setAdminPrivileges", uid, ["ReadSession"]),
                                       ("addGroups", uid, [SYSTEM])])
        self.assertEqual(admin.privileges(uid), ["ReadSession"])
        self.assertEqual(admin.most[uid], 1, "at no step a fuller administrator")
        self.assertIn("was not an administrator", done)

    def test_restricting_an_existing_full_admin(self):
        admin = FakeAdmin()
        uid = admin.add_user("monitor", {SYSTEM, USER})
        script.ensure_counter_user(admin, API, "monitor", None, restrict_existing=True)
        self.assertEqual(admin.calls, [("setAdminPrivileges", uid, ["ReadSession"])])
        self.assertEqual(admin.privileges(uid), ["ReadSession"])

    def test_already_right_is_reported_and_nothing_written(self):
        admin = FakeAdmin()
        admin.add_user("monitor", {SYSTEM, USER}, ["ReadSession"])
        _, done = script.ensure_counter_user(admin, API, "monitor", None)
        self.assertIn("already", done)
        self.assertEqual(admin.calls, [])

    def test_root_and_guest_are_refused(self):
        for name in ("root", "guest"):
            admin = FakeAdmin()
            with self.assertRaises(script.Refused) as refused:
                script.ensure_counter_user(admin, API, name, None, restrict_existing=True)
            self.assertIn("OMERO's %s user" % name, str(refused.exception))
            self.assertEqual(admin.calls, [])

    def test_a_result_that_is_not_read_session_only_is_reported(self):
        admin = FakeAdmin()
        admin.grant_all = True
        with self.assertRaises(script.Refused) as refused:
            script.ensure_counter_user(admin, API, "monitor", "s3cret")
        self.assertIn("check it by hand", str(refused.exception))


class Main(unittest.TestCase):
    """The command line, with a stand-in omero.client."""

    def run_main(self, argv, admin, env):
        sessions = []

        class Client:
            def __init__(self, host=None, port=None):
                self.where = (host, port)

            def createSession(self, user, password):
                sessions.append((self.where, user, password))
                if password != "rootpw":
                    raise RuntimeError("Glacier2.PermissionDeniedException: Password check failed")
                return types.SimpleNamespace(getAdminService=lambda: admin)

            def closeSession(self):
                sessions.append("closed")

        api = types.SimpleNamespace(client=Client, **vars(API))
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ, env), redirect_stdout(out), redirect_stderr(err):
            code = script.main(argv, api=api)
        return code, out.getvalue(), err.getvalue(), sessions

    def test_creates_with_the_passwords_from_the_environment(self):
        admin = FakeAdmin()
        code, out, err, sessions = self.run_main(
            ["monitor", "--port", "14064"], admin,
            {"OMERO_ADMIN_PASSWORD": "rootpw", "OMERO_COUNTER_PASSWORD": "s3cret"})
        self.assertEqual((code, err), (0, ""))
        self.assertIn("created monitor", out)
        self.assertEqual(sessions, [(("localhost", 14064), "root", "rootpw"), "closed"])
        self.assertEqual(admin.calls[0][3], "s3cret")

    def test_a_refusal_and_a_failure_are_exit_codes_with_the_reason(self):
        admin = FakeAdmin()
        admin.add_user("monitor", {USER})
        code, _, err, _ = self.run_main(["monitor"], admin, {"OMERO_ADMIN_PASSWORD": "rootpw"})
        self.assertEqual(code, 1)
        self.assertIn("refused: monitor already exists", err)
        code, _, err, sessions = self.run_main(["monitor"], FakeAdmin(),
                                               {"OMERO_ADMIN_PASSWORD": "wrong"})
        self.assertEqual(code, 2)
        self.assertIn("failed: RuntimeError: Glacier2.PermissionDeniedException", err)
        self.assertEqual(sessions[-1], "closed")

    def test_the_file_compiles_and_runs_as_python_c_as_the_readme_says(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "create_counter_user.py")
        with tempfile.TemporaryDirectory() as tmp:
            py_compile.compile(path, cfile=os.path.join(tmp, "c.pyc"), doraise=True)
        with open(path) as f:
            source = f.read()
        # --help ends before omero-py is imported, so this runs without it.
        result = subprocess.run([sys.executable, "-c", source, "--help"], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--restrict-existing", result.stdout)


if __name__ == "__main__":
    unittest.main()
