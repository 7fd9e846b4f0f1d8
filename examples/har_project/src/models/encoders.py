"""Per-modality encoders: each maps one stream to a ``[batch, out_dim]`` feature vector."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(conv: type[nn.Module], norm: type[nn.Module], cin: int, cout: int, stride):
    return nn.Sequential(
        conv(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class VideoEncoder(nn.Module):
    """Small 3D CNN over ``[batch, T, 3, H, W]`` clips."""

    def __init__(self, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _conv_block(nn.Conv3d, nn.BatchNorm3d, 3, 16, stride=(1, 2, 2)),
            _conv_block(nn.Conv3d, nn.BatchNorm3d, 16, 32, stride=2),
            _conv_block(nn.Conv3d, nn.BatchNorm3d, 32, 64, stride=2),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(64, out_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # Conv3d wants channels before time.
        return self.proj(self.backbone(video.permute(0, 2, 1, 3, 4)))


class AudioEncoder(nn.Module):
    """Small 2D CNN over ``[batch, 1, F, T]`` spectrograms."""

    def __init__(self, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _conv_block(nn.Conv2d, nn.BatchNorm2d, 1, 16, stride=1),
            _conv_block(nn.Conv2d, nn.BatchNorm2d, 16, 32, stride=2),
            _conv_block(nn.Conv2d, nn.BatchNorm2d, 32, 64, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(64, out_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(audio))


class IMUEncoder(nn.Module):
    """1D CNN over ``[batch, 6, T]`` accelerometer + gyroscope windows."""

    def __init__(self, in_channels: int = 6, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _conv_block(nn.Conv1d, nn.BatchNorm1d, in_channels, 32, stride=1),
            _conv_block(nn.Conv1d, nn.BatchNorm1d, 32, 64, stride=2),
            _conv_block(nn.Conv1d, nn.BatchNorm1d, 64, 64, stride=2),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(64, out_dim)

    def forward(self, imu: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(imu))


class TextEncoder(nn.Module):
    """Bag of embeddings over ``[batch, L]`` token ids (0 = padding, ignored in the mean)."""

    def __init__(self, vocab_size: int = 1000, embed_dim: int = 128, out_dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.proj = nn.Linear(embed_dim, out_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(text))
