"""Create the OMERO user the session counter logs in as where it counts a read-write node: a
light administrator whose only privilege is ``ReadSession``.

Where it is needed. On a read-write node OMERO lets a caller read another user's session only
if it holds ``ReadSession`` (omero-server ``BasicACLVoter``); without it the counter sees only
user names, so it cannot leave out shares. On a read-only-database node (the counter's default)
the sessions are served from memory with no permission check (omero-server
``SessionProviderInMemory.findSessionById``), so a plain user sees them all, and this script is
not needed; a plain user is made with the CLI, e.g.::

    omero group add session-counter
    omero user add monitor Session Counter session-counter

(read from OMERO's source, not observed). Run this script only when the counter also counts the
read-write node (``spec.sessionCounter.defaultFor: All``, or ``sessionProbe: {type: Counter}``).

Why a script. OMERO.web's admin pages show any administrator holding ``ReadSession`` as a full
"administrator" and give every privilege to the account when its form is saved (omero-web
``webadmin/views.py``, ``webclient/webclient_gateway.py`` ``get_privileges_from_form``); its
"restricted administrator" choices do not include ``ReadSession``. ``omero user add --admin``
makes a full administrator and has no privilege option (omero-py ``plugins/user.py``). Only the
API can: ``IAdmin.createRestrictedSystemUserWithPassword`` / ``setAdminPrivileges`` (omero-blitz
``src/main/slice/omero/api/IAdmin.ice``; omero-server ``ome/logic/AdminImpl.java``).

Run it against the read-write node (making a user writes the database), as root or a full
administrator, with the Python of the node's image, which has omero-py; from the repository::

    kubectl exec -it deploy/<cluster>-<read-write node> -c omero-server -- \\
        /opt/omero/server/venv3/bin/python -c "$(cat counter/create_counter_user.py)" monitor

It asks for the administrator's password and the new user's (twice), or reads them from
``OMERO_ADMIN_PASSWORD`` and ``OMERO_COUNTER_PASSWORD``. Put the user name and the new password
in the Secret that ``spec.sessionCounter.credentialsSecret`` names. ``--help`` lists the options
(server, port, administrator). A user that already exists is left as it is and reported, unless
it is already a ReadSession-only light administrator; ``--restrict-existing`` makes it one
(removing every other administrator privilege it has).

Written from OMERO's source and tested against stand-ins of the API objects it calls
(``test_create_counter_user.py``); it has not been run against a real OMERO server.
"""

import argparse
import getpass
import os
import sys
import types

PRIVILEGE = "ReadSession"


class Refused(Exception):
    """Something the script will not do, with what to do instead."""


def omero_api():
    """The omero-py names the script uses (imported here: the tests run without omero-py)."""
    import omero
    import omero.clients  # noqa: F401  (registers the model classes, omero.model.*I)
    from omero.rtypes import rbool, rstring
    return types.SimpleNamespace(
        client=omero.client,
        ExperimenterI=omero.model.ExperimenterI,
        ExperimenterGroupI=omero.model.ExperimenterGroupI,
        AdminPrivilegeI=omero.model.AdminPrivilegeI,
        rstring=rstring,
        rbool=rbool,
        ApiUsageException=omero.ApiUsageException,
    )


def read_session_only(api):
    """The privilege list ``[ReadSession]``, as omero-py's gateway builds privileges
    (``BlitzGateway.updateAdminPrivileges``)."""
    privilege = api.AdminPrivilegeI()
    privilege.setValue(api.rstring(PRIVILEGE))
    return [privilege]


def value(rtype):
    return getattr(rtype, "val", rtype)


def state_of(admin, api, user_id, roles):
    """``(in the system group, the names of its administrator privileges)``."""
    user = api.ExperimenterI(user_id, False)
    in_system = roles.systemGroupId in list(admin.getMemberOfGroupIds(user))
    # getAdminPrivileges is empty for a user outside the system group (AdminImpl).
    privileges = sorted(value(p.getValue()) for p in admin.getAdminPrivileges(user))
    return in_system, privileges


def is_read_session_only(state):
    return state == (True, [PRIVILEGE])


def ensure_counter_user(admin, api, name, password, first_name="Session", last_name="Counter",
                        restrict_existing=False):
    """Makes ``name`` a light administrator with ``ReadSession`` only; returns ``(id, what was
    done)``. ``admin`` is the caller's ``IAdmin`` service."""
    roles = admin.getSecurityRoles()
    try:
        existing = admin.lookupExperimenter(name)
    except api.ApiUsageException:  # "No such experimenter" (AdminImpl.lookupExperimenter)
        existing = None
    if existing is None:
        if not password:
            raise Refused("no password for the new user %s: give it (OMERO_COUNTER_PASSWORD)" % name)
        user = api.ExperimenterI()
        user.omeName = api.rstring(name)
        user.firstName = api.rstring(first_name)
        user.lastName = api.rstring(last_name)
        user.ldap = api.rbool(False)
        # In the system group (its default group) and the user group, with every other
        # privilege set false in its config, in one call (AdminImpl).
        user_id = admin.createRestrictedSystemUserWithPassword(
            user, read_session_only(api), api.rstring(password))
        done = "created %s (id %d), a light administrator with only %s" % (name, user_id, PRIVILEGE)
    else:
        user_id = value(existing.getId())
        if user_id in (roles.rootId, roles.guestId):
            raise Refused("%s is OMERO's %s user: the counter needs an account of its own" % (
                name, "root" if user_id == roles.rootId else "guest"))
        in_system, privileges = state_of(admin, api, user_id, roles)
        if is_read_session_only((in_system, privileges)):
            return user_id, "%s (id %d) is already a light administrator with only %s" % (
                name, user_id, PRIVILEGE)
        now = ("an administrator with %s" % ", ".join(privileges) if in_system and privileges
               else "an administrator with no privileges" if in_system else "not an administrator")
        if not restrict_existing:
            raise Refused(
                "%s already exists (id %d) and is %s; left as it is. Choose another name, or run again "
                "with --restrict-existing to make it a light administrator with only %s (removing its "
                "other privileges)" % (name, user_id, now, PRIVILEGE))
        user = api.ExperimenterI(user_id, False)
        # Privileges first, then the system group: it never holds more than ReadSession.
        admin.setAdminPrivileges(user, read_session_only(api))
        if not in_system:
            admin.addGroups(user, [api.ExperimenterGroupI(roles.systemGroupId, False)])
        done = "%s (id %d) was %s; now a light administrator with only %s (its password is unchanged)" % (
            name, user_id, now, PRIVILEGE)
    state = state_of(admin, api, user_id, roles)
    if not is_read_session_only(state):
        raise Refused("after the change %s is in the system group: %s, with privileges %s; expected "
                      "only %s: check it by hand" % (name, state[0], state[1], PRIVILEGE))
    return user_id, done


def password_from(variable, prompt, confirm=False):
    given = os.environ.get(variable)
    if given:
        return given
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise Refused("the passwords differ")
    return first


def main(argv=None, api=None):
    parser = argparse.ArgumentParser(
        description="Create the OMERO user the session counter logs in as on read-write nodes: a "
                    "light administrator with only the ReadSession privilege (not needed on "
                    "read-only-database nodes, where a plain user is enough).")
    parser.add_argument("user", help="the counter's user name, as in its Secret (e.g. monitor)")
    parser.add_argument("--server", default="localhost",
                        help="the read-write node's host (default localhost: run it in that pod)")
    parser.add_argument("--port", type=int, default=4064,
                        help="its Glacier2 SSL port (default 4064; another if omero.ports moves it)")
    parser.add_argument("--admin", default="root", help="an administrator's user name (default root)")
    parser.add_argument("--first-name", default="Session")
    parser.add_argument("--last-name", default="Counter")
    parser.add_argument("--restrict-existing", action="store_true",
                        help="if the user exists, make it a light administrator with only ReadSession")
    args = parser.parse_args(argv)
    api = api or omero_api()
    try:
        admin_password = password_from("OMERO_ADMIN_PASSWORD", "password of %s: " % args.admin)
        client = api.client(host=args.server, port=args.port)
        try:
            session = client.createSession(args.admin, admin_password)
            exists = True
            try:
                session.getAdminService().lookupExperimenter(args.user)
            except api.ApiUsageException:
                exists = False
            password = None if exists else password_from(
                "OMERO_COUNTER_PASSWORD", "new password of %s: " % args.user, confirm=True)
            _, done = ensure_counter_user(
                session.getAdminService(), api, args.user, password, args.first_name,
                args.last_name, args.restrict_existing)
        finally:
            client.closeSession()
    except Refused as e:
        sys.stderr.write("refused: %s\n" % e)
        return 1
    except Exception as e:  # OMERO's refusals (a wrong password, a weak new one) in its words
        sys.stderr.write("failed: %s: %s\n" % (e.__class__.__name__, getattr(e, "message", "") or e))
        return 2
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
