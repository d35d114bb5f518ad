"""The server's configuration: the parsed command line, typed, built once by ``webui.cli.parse_args``.

Start-up code reads fields, never ``getattr(args, name, default)``: a misspelt name fails at once instead of
silently taking a second default. The defaults themselves live in one place, the argparse definitions in
``webui.cli`` (tests build a config with ``parse_args([...])`` and ``dataclasses.replace``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServerConfig:
    """One field per command-line option, named as its argparse ``dest`` (``/sdapi/v1/cmd-flags`` shows them)."""

    # models and files
    models_dir: Path
    ckpt_dir: Path  # resolved: <models_dir>/Stable-diffusion unless given
    embeddings_dir: Path
    outputs_dir: Path
    ckpt: str | None
    allow_pickle: bool
    no_demo: bool
    data_dir: Path  # resolved: the folder holding models_dir unless given; config.json lives here
    ui_settings_file: Path | None  # config.json elsewhere
    esrgan_models_path: Path | None
    realesrgan_models_path: Path | None
    swinir_models_path: Path | None
    dat_models_path: Path | None
    hat_models_path: Path | None
    allow_server_folders: bool
    extensions_dir: Path  # resolved: extensions/ beside <models_dir> unless given
    disable_all_extensions: bool
    controlnet_dir: Path  # resolved: <models_dir>/ControlNet unless given
    # compute
    device: str
    precision: str
    ram_cache: int | None
    # memory and speed (--medvram and --lowvram set ``memory``)
    memory: str
    medvram_sdxl: bool
    vae_tiling: str
    fp8_weights: bool
    compile: bool
    # server
    port: int
    host: str
    listen: bool
    auth: tuple[str, ...]
    auth_file: tuple[Path, ...]
    admin: tuple[str, ...]
    insecure_no_auth: bool
    allowed_hosts: tuple[str, ...]
    no_api: bool
    enable_insecure_extension_access: bool
    queue_size: int
    max_upload_mb: float
    session_days: float
    tls_certfile: Path | None
    tls_keyfile: Path | None
    tls_self_signed: bool
    login_free_failures: int
    login_lockout_failures: int

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> ServerConfig:
        """From ``build_parser().parse_args()``; repeatable options become tuples so the config stays immutable."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(args, f.name)  # every field is an option: a missing one is a bug, not a default
            values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    @property
    def bind_host(self) -> str:
        """The address to listen on: ``--listen`` means every interface."""
        return "0.0.0.0" if self.listen else self.host

    @property
    def server_folders_allowed(self) -> bool:
        """Batch from a server folder: always on this machine only; on a LAN only with --allow-server-folders."""
        return self.allow_server_folders or not self.listen

    @property
    def extension_admin_allowed(self) -> bool:
        """Installing/updating/removing extensions: on a loopback-only server, or when explicitly allowed (A1111)."""
        from webui.security import is_loopback

        return self.enable_insecure_extension_access or is_loopback(self.bind_host)

    @property
    def api_enabled(self) -> bool:
        return not self.no_api
