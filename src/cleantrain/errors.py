"""Errors a user can cause. The command line prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: an unknown key, a malformed file, an out-of-range setting."""
