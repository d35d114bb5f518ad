"""Credentials, the exposure rule and host names, without a server."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from pipelines.errors import EaselError
from webui.cli import parse_args
from webui.config import ServerConfig
from webui.security import (
    Credentials,
    is_loopback,
    parse_credential,
    read_auth_file,
    security_from_args,
    split_host_header,
    write_auth_file,
)


def args(**kw: object) -> ServerConfig:
    base = {"host": "127.0.0.1", "listen": False, "auth": (), "auth_file": (), "insecure_no_auth": False}
    return dataclasses.replace(parse_args([]), **{**base, **kw})  # type: ignore[arg-type]


def test_credentials_parse_and_check() -> None:
    assert parse_credential("ann:pa:ss") == ("ann", "pa:ss")
    for bad in ("ann", ":x", "ann:"):
        with pytest.raises(EaselError, match="user:password"):
            parse_credential(bad)
    creds = Credentials({"ann": "pa:ss"})
    header = "Basic " + base64.b64encode(b"ann:pa:ss").decode()
    assert creds.check_basic_header(header) is True
    assert creds.check_basic_header("Basic " + base64.b64encode(b"ann:nope").decode()) is False
    assert creds.check_basic_header("Basic !!!") is False
    assert creds.check_basic_header(None) is None and creds.check_basic_header("Bearer x") is None


def test_listen_without_credentials_refuses_with_a_way_out() -> None:
    with pytest.raises(EaselError, match="--auth USER:PASSWORD.*--auth-file"):
        security_from_args(args(listen=True))
    with pytest.raises(EaselError, match="refusing"):
        security_from_args(args(host="192.168.1.4"))
    assert security_from_args(args(listen=True, insecure_no_auth=True)).host == "0.0.0.0"
    assert security_from_args(args(listen=True, auth=["a:b"])).credentials.check("a", "b")
    assert security_from_args(args()).host == "127.0.0.1"


def test_auth_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_auth_file(path, [("ann", "one"), ("bob", "two")])
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_auth_file(path) == [("ann", "one"), ("bob", "two")]
    path.chmod(0o644)
    with pytest.raises(EaselError, match="chmod 600"):
        read_auth_file(path)
    path.chmod(0o600)
    path.write_text("# users\n\nann:one\n")
    assert read_auth_file(path) == [("ann", "one")]
    path.write_text("no colon here\n")
    with pytest.raises(EaselError, match="line 1"):
        read_auth_file(path)


def test_host_names() -> None:
    assert split_host_header("Example.COM:7860") == "example.com"
    assert split_host_header("[::1]:7860") == "::1"
    assert split_host_header("192.168.0.2") == "192.168.0.2"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.0.2")
