"""Errors a user can cause (bad config, missing file, ...): the CLI prints their message and exits 2."""


class UserError(Exception):
    """A problem with what the user asked for, stated in one sentence that says what to do."""
