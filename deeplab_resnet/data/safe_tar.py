"""A tarfile extraction filter that does not rely on resolving paths alone.

Standard library only.
"""
import os
import tarfile


class EscapingMemberError(tarfile.FilterError):
    """A member whose name or link target could lead outside the root."""

    def __init__(self, tarinfo, why):
        super(EscapingMemberError, self).__init__()
        self.tarinfo, self._why = tarinfo, why

    def __str__(self):
        return "member %r %s" % (self.tarinfo.name, self._why)


def members_within():
    """A tarfile filter: the ``data`` filter, then our own check of each name.

    The ``data`` filter of Python before 3.9.23/3.10.18/3.11.13/3.12.11/
    3.13.4 can be bypassed through symlinks whose resolved path exceeds
    PATH_MAX (CVE-2025-4517), where ``os.path.realpath`` stops resolving.
    So, on the names alone, without resolving anything: a name or link
    target may not be absolute or hold '..', and no member may lie under a
    symlink member. Neither published archive has a symlink.
    """
    symlinks = set()

    def check(member, dest_path):
        member = tarfile.data_filter(member, dest_path)
        name = member.name.replace("\\", "/").strip("/")
        parts = name.split("/")
        if member.name.startswith("/") or os.pardir in parts:
            raise EscapingMemberError(member, "is absolute or holds '..'")
        if any("/".join(parts[:i]) in symlinks for i in range(1, len(parts))):
            raise EscapingMemberError(member, "lies under a symlink member")
        if member.issym() or member.islnk():
            target = member.linkname.replace("\\", "/")
            if target.startswith("/") or os.pardir in target.split("/"):
                raise EscapingMemberError(member, "links to %r, absolute or with '..'"
                                          % member.linkname)
            if member.issym():
                symlinks.add(name)
        return member
    return check
