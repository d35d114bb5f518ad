"""Installing, updating and removing user extensions: ``git clone``/``git pull`` (no shell) or a local folder copy.

Whether a caller may do this at all (not on a server open to the LAN without
``--enable-insecure-extension-access``) is the web UI's decision; this module only does it safely: a git URL must
be http(s) or ssh (git's ``ext::`` and ``file://`` transports are refused), git never prompts, every git call has a
time limit, a clone lands in a temporary folder first and is moved into place only once its manifest reads.
Changes take effect on the next start, as the tab says.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipelines.errors import EaselError
from pipelines.extensions.manifest import MANIFEST, read_manifest

GIT_TIMEOUT_S = 120.0
_GIT_URL = re.compile(r"^(https?://[^\s]+|ssh://[^\s]+|[\w.-]+@[\w.-]+:[\w./~-]+)$")


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise EaselError("git is not installed on this machine: install it, or install from a local folder") from None
    except subprocess.TimeoutExpired:
        raise EaselError(f"git {args[0]} took longer than {GIT_TIMEOUT_S:.0f} s and was stopped") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise EaselError(f"git {args[0]} failed: {detail[-1] if detail else f'exit status {done.returncode}'}")
    return done.stdout


def is_git_url(source: str) -> bool:
    return bool(_GIT_URL.match(source.strip()))


def install(source: str, user_dir: Path, taken: set[str]) -> str:
    """Install from a git URL or a local folder into ``user_dir/<name>``; returns the extension's name.

    ``taken``: names already present (built-in or user); installing one of them again is refused.
    """
    source = source.strip()
    if not source:
        raise EaselError("give a git URL (https://...) or the path of a folder on this machine")
    user_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=user_dir))
    try:
        target = staging / "extension"
        if is_git_url(source):
            _git("clone", "--depth", "1", "--", source, str(target))
        elif "://" in source or source.startswith("ext::"):
            raise EaselError("only http(s) and ssh git URLs can be installed from (not file:// or ext::)")
        else:
            folder = Path(source).expanduser()
            if not (folder / MANIFEST).is_file():
                raise EaselError(f"{source}: not a folder with an {MANIFEST} in it")
            shutil.copytree(folder, target, symlinks=True)
        manifest = read_manifest(target)
        if manifest.name in taken:
            raise EaselError(f"an extension named '{manifest.name}' is already installed")
        final = user_dir / manifest.name
        if final.exists():
            raise EaselError(f"{final} already exists: remove it first")
        os.replace(target, final)
        return manifest.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def update(folder: Path) -> str:
    """``git pull --ff-only`` in a git-installed extension; returns git's summary line."""
    if not (folder / ".git").exists():
        raise EaselError(f"{folder.name} was not installed with git: nothing to update from")
    out = _git("pull", "--ff-only", cwd=folder).strip().splitlines()
    return out[-1] if out else "updated"


def remove(folder: Path, user_dir: Path) -> None:
    """Delete a user extension's folder (never anything outside the user extensions folder)."""
    resolved = folder.resolve()
    if resolved.parent != user_dir.resolve() or not (resolved / MANIFEST).exists():
        raise EaselError(f"{folder} is not a user extension folder")
    shutil.rmtree(resolved)
