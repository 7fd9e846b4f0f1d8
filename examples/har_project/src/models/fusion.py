"""Late fusion of the four encoders into one normalised embedding for SupCon."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import AudioEncoder, IMUEncoder, TextEncoder, VideoEncoder


class QuadModalNet(nn.Module):
    """Video + audio + IMU + text → concatenation → MLP → ``embed_dim`` → LayerNorm → L2 norm."""

    def __init__(
        self,
        embed_dim: int = 512,
        vocab_size: int = 1000,
        branch_dim: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.video = VideoEncoder(branch_dim)
        self.audio = AudioEncoder(branch_dim)
        self.imu = IMUEncoder(out_dim=branch_dim)
        self.text = TextEncoder(vocab_size, out_dim=branch_dim)
        self.head = nn.Sequential(
            nn.Linear(4 * branch_dim, embed_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, embed_dim),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        imu: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        fused = torch.cat(
            [self.video(video), self.audio(audio), self.imu(imu), self.text(text)], dim=1
        )
        return F.normalize(self.norm(self.head(fused)), dim=1)
