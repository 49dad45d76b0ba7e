"""Pieces of error and log messages that many modules share.

Standard library only, at the bottom of the imports, so that any module can
word its messages the same way.
"""


def abbreviate(names, limit=8, separator=", "):
    """'a, b, c' for messages; long lists cut to ``limit`` with the count."""
    names = list(names)
    shown = separator.join(names[:limit])
    if len(names) > limit:
        shown += "%s... (%d in all)" % (separator, len(names))
    return shown
