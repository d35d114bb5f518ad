"""``python -m webui``: build the engine over the models folder and serve the UI."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipelines.errors import EaselError  # noqa: E402
from webui.cli import parse_args  # noqa: E402
from webui.security import security_from_args  # noqa: E402
from webui.server import build_context, serve  # noqa: E402
from webui.users import check_admins  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        security = security_from_args(config)  # refuse an unsafe exposure before loading anything
        check_admins(config.admin, security.credentials)
        ctx = build_context(config)
        serve(ctx, config, security)
    except EaselError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
