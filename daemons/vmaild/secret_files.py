"""Who else can read the database password? One warning line (``vmaild check`` and at the
start of ``vmaild serve``) when the file holding it is readable beyond vmaild.

The file is ``[database] password_file``, or vmaild.conf itself when ``password =`` is in it.
What is accepted (the shipped layout is ``root:vmail 0640``, install.sh):
- the owner: root, the user vmaild runs as, or the mail owner ``[mailbox] uid`` (the user the
  shipped unit runs vmaild as: ``vmaild check`` typically runs as root);
- read access for the group only when it is root's group, vmaild's own (primary) group, or
  ``[mailbox] gid``: any other group's members could read it;
- no read access for others (o+r), ever.
ACLs are not looked at. A warning, not an error: the file is the admin's, and vmaild still
has to start.
"""

from __future__ import annotations

import os
import stat

from .config import Config


def exposure(cfg: Config) -> str | None:
    """One line saying who else can read the password, or None."""
    db = cfg.database
    if db.password_file:
        path, what = db.password_file, "[database] password_file"
    elif db.password:
        path, what = cfg.path, "[database] password"
    else:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # a file that cannot be read was refused when the config was loaded
    mode = stat.S_IMODE(st.st_mode)
    owners = {0, os.geteuid(), cfg.mailbox.uid}
    groups = {0, os.getegid(), cfg.mailbox.gid}
    problems = []
    if mode & stat.S_IROTH:
        problems.append("readable by every local user")
    if mode & stat.S_IRGRP and st.st_gid not in groups:
        problems.append(f"readable by group {_group(st.st_gid)}")
    if st.st_uid not in owners:
        problems.append(f"owned by {_user(st.st_uid)}")
    if not problems:
        return None
    return (
        f"{path}: holds the database password ({what}) and is {' and '.join(problems)} "
        f"(mode {mode:04o}); fix: chown root:{_group(cfg.mailbox.gid)} {path} && chmod 0640 {path}"
    )


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
