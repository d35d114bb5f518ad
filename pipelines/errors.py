"""The one exception type for problems a user can cause and fix."""


class EaselError(Exception):
    """A user-facing error: the message is shown as-is in the UI and returned by the API."""


class RequestTooLargeError(EaselError):
    """A request whose images, results or settings exceed a size limit (the API answers 413, not 422)."""
