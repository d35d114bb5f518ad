"""``--admin USER``: needs a login to name, and must name one of them (a typo would leave the queue without one)."""

from __future__ import annotations

import pytest

from pipelines.errors import EaselError
from webui.cli import parse_args
from webui.security import Credentials
from webui.users import check_admins


def test_admin_is_parsed_and_repeatable() -> None:
    config = parse_args(["--auth", "ann:pw", "--auth", "bob:pw2", "--admin", "ann", "--admin", "bob"])
    assert config.admin == ("ann", "bob")
    assert parse_args([]).admin == ()


def test_admin_without_any_login_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--admin", "ann"])
    assert "--admin names a login" in capsys.readouterr().err


def test_admin_must_be_a_known_login() -> None:
    credentials = Credentials.from_sources([("ann", "pw"), ("bob", "pw2")], [])
    check_admins(["ann"], credentials)
    with pytest.raises(EaselError, match="--admin anna: not a login"):
        check_admins(["anna"], credentials)
