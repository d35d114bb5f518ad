"""Tiny random-weight annotator models, saved as transformers folders the way a user copies them into
``models/annotators/<folder>/`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json``)."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _save(model: torch.nn.Module, processor: object, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def save_tiny_depth_anything(folder: Path, seed: int = 0) -> Path:
    """A Depth Anything (DINOv2 backbone, DPT head) of a few thousand weights, input 56 px (patches of 14)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    processor = DPTImageProcessor(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return _save(DepthAnythingForDepthEstimation(config), processor, folder)


def save_tiny_dpt(folder: Path, seed: int = 0) -> Path:
    """A MiDaS-style DPT (ViT backbone) of a few layers and channels, input 32 px."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_in_index=-1,
    )
    processor = DPTImageProcessor(
        size={"height": 32, "width": 32},
        keep_aspect_ratio=True,
        ensure_multiple_of=32,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return _save(DPTForDepthEstimation(config), processor, folder)


def save_tiny_segformer(folder: Path, seed: int = 0, labels: int = 150) -> Path:
    """A SegFormer with ADE20K's 150 classes and tiny stages, input 64 px."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=labels,
    )
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    return _save(SegformerForSemanticSegmentation(config), processor, folder)


def save_tiny_vitpose(folder: Path, seed: int = 0) -> Path:
    """A VitPose with a two-layer ViT and the simple decoder, COCO's 17 keypoint heatmaps, input 64x48."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[64, 48],
        patch_size=[16, 16],
        out_indices=[2],
    )
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    processor = VitPoseImageProcessor(size={"height": 64, "width": 48})
    return _save(VitPoseForPoseEstimation(config), processor, folder)
