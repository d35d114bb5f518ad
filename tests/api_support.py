"""Helpers shared by the REST API, security, concurrency and fuzz tests (all traffic to 127.0.0.1)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, ImageDraw

USER, PASSWORD = "ann", "correct horse"
AUTH = (USER, PASSWORD)


def private_models_dir(shared_models: Path, root: Path) -> Path:
    """A models folder of our own (Lora/, VAE/ files to list) over the shared tiny checkpoints."""
    models = root / "models"
    (models / "Lora").mkdir(parents=True)
    (models / "VAE").mkdir()
    (models / "Stable-diffusion").symlink_to(shared_models / "Stable-diffusion", target_is_directory=True)
    (models / "Lora" / "tiny-style.safetensors").write_bytes(b"not loaded by the listing")
    (models / "VAE" / "tiny-vae.safetensors").write_bytes(b"not loaded by the listing")
    return models


def server_args(models: Path, outputs: Path, *extra: str) -> list[str]:
    return [
        "--models-dir",
        str(models),
        "--outputs-dir",
        str(outputs),
        "--embeddings-dir",
        str(models / "embeddings"),
        "--ckpt",
        "tiny-sd1.safetensors",
        "--no-demo",
        *extra,
    ]


def write_auth_file(folder: Path) -> Path:
    from webui.security import write_auth_file as write

    path = folder / "users.txt"
    write(path, [AUTH, ("bob", "other")])
    return path


def b64(image: Image.Image, fmt: str = "PNG", prefix: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{data}" if prefix else data


def decode(data: str) -> Image.Image:
    assert not data.startswith("data:"), "A1111 returns raw base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def picture_and_mask(size: int = 64) -> tuple[Image.Image, Image.Image]:
    picture = Image.new("RGB", (size, size), (200, 40, 40))
    ImageDraw.Draw(picture).ellipse((8, 8, size - 8, size - 8), fill=(30, 160, 220))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    return picture, mask


def tiny_txt2img(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {"prompt": "a red boat", "steps": 3, "width": 64, "height": 64, "seed": 21}
    payload.update(overrides)
    return payload
