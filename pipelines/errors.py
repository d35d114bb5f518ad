"""The one exception type for problems a user can cause and fix."""


class EaselError(Exception):
    """A user-facing error: the message is shown as-is in the UI and returned by the API."""
