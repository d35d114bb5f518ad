"""The ``python -m webui`` command line: the one place the server's options and their defaults are declared."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.models.devices import PRECISIONS
from pipelines.runtime.memory_policy import SETTINGS, VAE_TILING_SETTINGS
from pipelines.runtime.queue import DEFAULT_QUEUE_SIZE
from webui.config import ServerConfig
from webui.login_guard import ThrottlePolicy
from webui.security import DEFAULT_MAX_UPLOAD_MB, DEFAULT_SESSION_DAYS

UPSCALER_FLAGS = (
    ("esrgan", "ESRGAN"),
    ("realesrgan", "RealESRGAN"),
    ("swinir", "SwinIR"),
    ("dat", "DAT"),
    ("hat", "HAT"),
)
"""``--<flag>-models-path`` options (A1111's names) and the folder under ``--models-dir`` each replaces."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m webui",
        description="Easel: a Stable Diffusion web UI. Starts on http://127.0.0.1:7860 by default.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models = parser.add_argument_group("models and files")
    models.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="A1111-layout models folder: Stable-diffusion/, VAE/, Lora/ inside it",
    )
    models.add_argument(
        "--ckpt-dir",
        type=Path,
        default=None,
        help="checkpoints folder, if not <models-dir>/Stable-diffusion (point it at an A1111/Forge folder)",
    )
    models.add_argument("--embeddings-dir", type=Path, default=Path("embeddings"), help="textual-inversion embeddings")
    models.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="where generated images are saved")
    models.add_argument("--ckpt", default=None, help="checkpoint to load at start (name, file name or stem)")
    models.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .ckpt/.pt/.bin pickle checkpoints (loaded weights-only); they are refused otherwise",
    )
    models.add_argument("--no-demo", action="store_true", help="do not build the random-weight demo model")
    models.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where config.json, ui-config.json and the --tls-self-signed certificate live "
        "(default: the folder that holds --models-dir, as A1111 keeps config.json beside models/)",
    )
    models.add_argument(
        "--ui-settings-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="the settings file, if not <data-dir>/config.json (A1111's option of the same name)",
    )
    for flag, folder in UPSCALER_FLAGS:
        models.add_argument(
            f"--{flag}-models-path", type=Path, default=None, help=f"{folder} upscalers, if not <models-dir>/{folder}"
        )
    models.add_argument(
        "--allow-server-folders",
        action="store_true",
        help="let the Extras tab read a folder on the server (batch from folder) even under --listen",
    )
    models.add_argument(
        "--extensions-dir",
        type=Path,
        default=None,
        help="user extensions folder, if not extensions/ beside the models folder (Easel's own are in its extensions/)",
    )
    models.add_argument("--disable-all-extensions", action="store_true", help="load no extension, built-in or user")
    models.add_argument(
        "--controlnet-dir",
        type=Path,
        default=None,
        help="ControlNet models, if not <models-dir>/ControlNet (point it at sd-webui-controlnet's models/ folder)",
    )

    compute = parser.add_argument_group("compute")
    compute.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    compute.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: fp16 on GPUs, fp32 on CPU")
    compute.add_argument(
        "--ram-cache",
        type=int,
        default=None,
        help="checkpoints kept in RAM after switching away (None: as many as fit in half the free RAM)",
    )

    memory = parser.add_argument_group("memory and speed")
    memory.add_argument(
        "--memory",
        default="auto",
        choices=SETTINGS,
        help="where the model's weights live: auto decides per image from free VRAM, the model and the size; "
        "high keeps everything on the GPU, medium moves one part at a time (text encoders, UNet, VAE), low streams "
        "the UNet block by block",
    )
    memory.add_argument(
        "--medvram", dest="memory", action="store_const", const="medium", help="A1111's name for --memory medium"
    )
    memory.add_argument(
        "--lowvram", dest="memory", action="store_const", const="low", help="A1111's name for --memory low"
    )
    memory.add_argument(
        "--medvram-sdxl", action="store_true", help="--memory medium for SDXL models only (auto for the others)"
    )
    memory.add_argument(
        "--vae-tiling",
        default="auto",
        choices=VAE_TILING_SETTINGS,
        help="decode/encode large images in tiles: auto when the whole image would not fit",
    )
    memory.add_argument(
        "--fp8-weights",
        action="store_true",
        help="store UNet weights as float8 (e4m3), computed in fp16/bf16: half the UNet's VRAM; pixels change slightly",
    )
    memory.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (first image of each size compiles, slowly; falls back when unsupported)",
    )

    server = parser.add_argument_group("server")
    server.add_argument("--port", type=int, default=7860, help="port to listen on")
    server.add_argument("--host", default="127.0.0.1", help="address to bind")
    server.add_argument(
        "--listen", action="store_true", help="bind 0.0.0.0 so the LAN can reach it (requires --auth or --auth-file)"
    )
    server.add_argument(
        "--auth", action="append", default=[], metavar="USER:PASSWORD", help="a login for the UI and API (repeatable)"
    )
    server.add_argument(
        "--auth-file",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a file of user:password lines; refused when group or others can read it (chmod 600)",
    )
    server.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="USER",
        help="a login (from --auth/--auth-file) who may cancel anyone's job in the queue (repeatable)",
    )
    server.add_argument(
        "--insecure-no-auth", action="store_true", help="allow --listen without credentials (trusted networks only)"
    )
    server.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="extra host names the server answers to (DNS names of this machine; IP addresses always work)",
    )
    server.add_argument("--no-api", action="store_true", help="do not serve the /sdapi/v1 REST API")
    server.add_argument(
        "--enable-insecure-extension-access",
        action="store_true",
        help="allow installing, updating and removing extensions from the UI even when the server is open to the LAN "
        "(an extension is code that runs on this machine)",
    )
    server.add_argument(
        "--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="generations that may wait or run at once"
    )
    server.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest request or upload accepted, in MB"
    )
    server.add_argument(
        "--tls-certfile",
        type=Path,
        default=None,
        metavar="PATH",
        help="serve HTTPS with this certificate (PEM); with --tls-keyfile. Passwords then never cross the LAN in clear",
    )
    server.add_argument(
        "--tls-keyfile",
        type=Path,
        default=None,
        metavar="PATH",
        help="the certificate's private key (PEM, unencrypted); refused when group or others can read it",
    )
    server.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a certificate made for this machine on first start (in <data-dir>/tls/, reused later; "
        "browsers ask once to trust it: compare the SHA-256 fingerprint printed at start)",
    )
    server.add_argument(
        "--session-days",
        type=float,
        default=DEFAULT_SESSION_DAYS,
        help="a UI login lasts this long, then the login page shows again",
    )
    server.add_argument(
        "--login-free-failures",
        type=int,
        default=ThrottlePolicy.free_failures,
        metavar="N",
        help="wrong passwords an address may send before each next try must wait (doubling from 1 s)",
    )
    server.add_argument(
        "--login-lockout-failures",
        type=int,
        default=ThrottlePolicy.lockout_failures,
        metavar="N",
        help="wrong passwords within 15 minutes that lock an address out for 15 minutes",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """The command line (``sys.argv`` when None) as the server's typed configuration; exits on a bad option."""
    args = build_parser().parse_args(argv)
    args.ckpt_dir = args.ckpt_dir or args.models_dir / "Stable-diffusion"
    args.data_dir = args.data_dir or args.models_dir.parent
    if args.tls_self_signed and (args.tls_certfile or args.tls_keyfile):
        build_parser().error("--tls-self-signed makes its own certificate: leave out --tls-certfile/--tls-keyfile")
    args.extensions_dir = args.extensions_dir or args.models_dir.parent / "extensions"
    args.controlnet_dir = args.controlnet_dir or args.models_dir / "ControlNet"
    if args.queue_size < 1:
        build_parser().error("--queue-size must be at least 1")
    if args.admin and not (args.auth or args.auth_file):
        build_parser().error("--admin names a login: it needs --auth or --auth-file (without a login all are equal)")
    if args.session_days <= 0 or not args.login_free_failures >= 1 or args.login_lockout_failures < 1:
        build_parser().error("--session-days, --login-free-failures and --login-lockout-failures must be positive")
    return ServerConfig.from_namespace(args)
