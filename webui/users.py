"""Who is asking: the logged-in user name of a UI event or an API request, and the --admin check at start-up.

Without a login every request is the same user, "" (a single-user machine: everyone sees and may cancel everything).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipelines.errors import EaselError
from webui.security import USER_SCOPE_KEY, Credentials


def ui_user(request: Any) -> str:
    """The user of a Gradio event (``gr.Request``; Gradio sets ``username`` from the login cookie)."""
    return (getattr(request, "username", None) or "") if request is not None else ""


def api_user(request: Any) -> str:
    """The user of a FastAPI request, as the security middleware authenticated it (Basic auth or the UI's cookie)."""
    return str(request.scope.get(USER_SCOPE_KEY) or "")


def check_admins(admins: Iterable[str], credentials: Credentials) -> None:
    """Every --admin must be one of the logins; a misspelt name would silently leave the queue without an admin."""
    unknown = sorted(set(admins) - set(credentials.users))
    if unknown:
        raise EaselError(f"--admin {', '.join(unknown)}: not a login from --auth/--auth-file")
