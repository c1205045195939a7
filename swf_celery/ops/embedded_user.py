"""The OS users that run embedded clusters when we are root: one system user per cluster.

PostgreSQL refuses to run as root, so root's clusters run as system users, and each
cluster has its own: ``swfpg-<key>``, where ``<key>`` is the name of the cluster's service
folder (``/var/lib/swf-celery/<key>``, a hash of ``$SWF_HOME``). The user is made with
``useradd --system --user-group --no-create-home --shell /usr/sbin/nologin`` on the
cluster's first start, owns only that folder (mode 0700) and has no supplementary group,
so one cluster's superuser, who runs programs as that user (``COPY … TO PROGRAM``),
cannot read, write or signal another cluster. ``swf-celery db remove`` ends the user's
processes and deletes the user.

Older versions ran every root cluster as the one user ``swf-postgres``
(:data:`LEGACY_USER`); it is looked up to recognise their clusters, never created for a
cluster, and its processes are never signalled (other checkouts may still use it).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swf_celery.errors import EmbeddedPostgresError

#: Every cluster user's name starts with this; the rest is the service folder's name.
USER_PREFIX = "swfpg-"
#: The user that ran every root cluster in older versions.
LEGACY_USER = "swf-postgres"
#: Linux's limit on a user name.
NAME_LIMIT = 32


def name_for(cluster: Path) -> str:
    """The system user of the cluster whose service folder is ``cluster``."""
    name = USER_PREFIX + cluster.name
    if len(name) > NAME_LIMIT or not cluster.name.isalnum():
        raise EmbeddedPostgresError(f"{cluster} cannot name a system user ({name!r})")
    return name


def find(name: str) -> pwd.struct_passwd | None:
    """The user ``name``, or None when there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def name_of(uid: int) -> str:
    """The name of the user ``uid`` (the number when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def ensure(name: str, home: Path) -> pwd.struct_passwd:
    """The system user ``name`` (home directory ``home``, not created), made on first
    use with a group of its own."""
    existing = find(name)
    if existing is None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        try:
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home",
                 "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                 "--comment", "swf-celery embedded PostgreSQL", name],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            existing = find(name)  # made meanwhile by a concurrent start
            if existing is None:
                detail = getattr(exc, "stderr", "") or str(exc)
                raise EmbeddedPostgresError(
                    f"running as root, the embedded PostgreSQL runs as the system user "
                    f"{name!r} and useradd failed: {detail.strip()}; create it (`useradd "
                    f"--system --user-group --no-create-home --shell /usr/sbin/nologin "
                    f"{name}`), or set SWF_DATABASE_URL") from exc
        else:
            existing = pwd.getpwnam(name)
    if existing.pw_uid == 0 or existing.pw_gid == 0:
        raise EmbeddedPostgresError(f"the system user {name!r} is root's (uid or group 0): "
                                    "refusing to run the embedded server as it")
    return existing


def is_legacy(cluster: Path) -> bool:
    """Whether the service folder ``cluster`` is an older version's, owned by
    :data:`LEGACY_USER`."""
    legacy = find(LEGACY_USER)
    try:
        return legacy is not None and os.lstat(cluster).st_uid == legacy.pw_uid
    except OSError:
        return False


def for_cluster(cluster: Path) -> pwd.struct_passwd | None:
    """The user that runs the programs of the cluster in the service folder ``cluster``:
    None (this process's) unless we are root; as root the cluster's own user (made on
    first use), or :data:`LEGACY_USER` while an older version's cluster is there."""
    if os.geteuid() != 0:
        return None
    if is_legacy(cluster):
        return pwd.getpwnam(LEGACY_USER)
    return ensure(name_for(cluster), cluster)


def running_name(cluster: Path, data: Path) -> str:
    """The name of the user that runs the cluster ``data`` (in the folder ``cluster``):
    the data directory's owner when there is one, else the user that would (none is
    made here)."""
    try:
        return name_of(os.lstat(data).st_uid)
    except OSError:
        pass
    return name_for(cluster) if os.geteuid() == 0 else name_of(os.geteuid())


def run_kwargs(user: pwd.struct_passwd | None, home: Path | None = None) -> dict[str, Any]:
    """subprocess arguments that run a program as ``user`` with no supplementary group
    (none when ``user`` is None: the program runs as we do)."""
    if user is None:
        return {}
    env = dict(os.environ, HOME=str(home or "/"), USER=user.pw_name, LOGNAME=user.pw_name)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


def processes(uid: int) -> list[int]:
    """The pids of the processes with ``uid`` as their real, effective, saved or file
    system user (an empty list without ``/proc``)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if str(uid) in line.split()[1:]:
                    found.append(int(entry.name))
                break
    return found


def end_processes(user: pwd.struct_passwd) -> None:
    """Kill every process of ``user`` (what a cluster's superuser left running with
    ``COPY … TO PROGRAM``, say), and wait until they are gone.

    ``kill -9 -1`` run as that user reaches all of its processes and only those in one
    system call, so one that forks meanwhile does not escape.
    """
    if not user.pw_name.startswith(USER_PREFIX) or user.pw_uid == 0:
        # Only a cluster's own user: never the shared LEGACY_USER, whose processes are
        # other checkouts' servers.
        raise EmbeddedPostgresError(f"refusing to end the processes of {user.pw_name!r}")
    kill = shutil.which("kill") or "/bin/kill"
    deadline = time.monotonic() + 10
    while True:
        subprocess.run([kill, "-9", "-1"], capture_output=True, cwd="/",
                       timeout=30, **run_kwargs(user))
        if not processes(user.pw_uid) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def delete(user: pwd.struct_passwd) -> None:
    """End the processes of a cluster's user and delete the user and its group; a failure
    is said on stderr (the next start of a cluster of that name ends its processes)."""
    end_processes(user)
    userdel = shutil.which("userdel") or "/usr/sbin/userdel"
    proc = subprocess.run([userdel, user.pw_name], capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        print(f"could not delete the system user {user.pw_name}: {proc.stderr.strip()}",
              file=sys.stderr)
        return
    try:
        grp.getgrnam(user.pw_name)
    except KeyError:
        return  # userdel removed the user's own group
    groupdel = shutil.which("groupdel") or "/usr/sbin/groupdel"
    subprocess.run([groupdel, user.pw_name], capture_output=True, cwd="/")
