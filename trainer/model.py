"""The quadmodal model: one small encoder per modality, then a fusion MLP to one embedding.

Read top to bottom: the shared conv block, the encoder shape every modality follows (a backbone
that pools its input to one vector, then a linear head), the four encoders, the fusion, and the
model that ties them together. Every encoder pools adaptively, so frame size, clip length,
spectrogram size, IMU window and text length may all differ from the defaults. There is no
BatchNorm anywhere: frozen backbones and DDP replicas then carry no running statistics that could
drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quad_doctor.trainer.config import (
    MODALITIES,
    EncoderConfig,
    FusionConfig,
    ModelConfig,
    TextEncoderConfig,
)

# Width of every modality's encoding (the head's output) that the fusion concatenates.
ENCODING_DIM = 128
# Channel widths are kept small: one training step at batch 32 must fit in ~40 ms on 2 CPU cores.
VIDEO_CHANNELS = (8, 32)
AUDIO_CHANNELS = (16, 32, 64)
SENSOR_CHANNELS = (32, 64, 64)
SENSOR_KERNEL = 5  # taps per 1D conv over IMU samples
TEMPORAL_KERNEL = 3  # frames the (2+1)D temporal conv mixes
# The per-frame maps are pooled to this grid before the temporal conv, so its cost does not grow
# with the frame size.
VIDEO_GRID = 3
GROUP_NORM_GROUPS = 4
TEXT_WIDTH = 64
TEXT_HEADS = 4
TEXT_LAYERS = 1
TEXT_FEEDFORWARD = 128
MAX_TEXT_LENGTH = 512  # rows of the learned position table
PAD_TOKEN = 0


def conv_block(dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A stride-2 convolution (1D or 2D), GroupNorm and ReLU: halves every spatial/time axis."""
    # ReLU, not GELU: on the large early feature maps GELU's backward took ~4 ms of a ~40 ms step
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2),
        nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
        nn.ReLU(),
    )


def conv_stack(
    dims: int, in_channels: int, channels: tuple[int, ...], kernel_size: int
) -> nn.Sequential:
    """Stride-2 conv blocks through `channels` in turn."""
    widths = (in_channels, *channels)
    return nn.Sequential(
        *(conv_block(dims, widths[i], widths[i + 1], kernel_size) for i in range(len(channels)))
    )


class ModalityEncoder(nn.Module):
    """A backbone that pools one modality to a vector, then a linear head to `ENCODING_DIM`.

    `freeze_backbone` gives the backbone's parameters `requires_grad=False`, as when fine-tuning
    only the projection of a pretrained encoder; `freeze_head` does the same to the head.
    """

    def __init__(self, backbone: nn.Module, backbone_width: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone_width, ENCODING_DIM)
        self.backbone.requires_grad_(not cfg.freeze_backbone)
        self.head.requires_grad_(not cfg.freeze_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class VideoBackbone(nn.Module):
    """(2+1)D: stride-2 2D convs on each frame, then a 1D conv over frames at every grid cell."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = conv_stack(2, 3, VIDEO_CHANNELS, kernel_size=3)
        self.grid = nn.AdaptiveAvgPool2d(VIDEO_GRID)
        width = VIDEO_CHANNELS[-1]
        self.temporal = nn.Sequential(
            nn.Conv1d(width, width, TEMPORAL_KERNEL, padding=TEMPORAL_KERNEL // 2),
            nn.GroupNorm(GROUP_NORM_GROUPS, width),
            nn.ReLU(),
        )

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        x = self.grid(self.spatial(video.flatten(0, 1)))  # (B*T, C, g, g)
        channels = x.shape[1]
        # every grid cell becomes one sequence over frames: (B*g*g, C, T)
        x = x.reshape(batch, frames, channels, -1).permute(0, 3, 2, 1).flatten(0, 1)
        x = self.temporal(x)
        return x.reshape(batch, -1, channels, frames).mean(dim=(1, 3))


class VideoEncoder(ModalityEncoder):
    """Video clips (B, T, 3, H, W) in [0, 1] → (B, ENCODING_DIM)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(VideoBackbone(), VIDEO_CHANNELS[-1], cfg)


class AudioEncoder(ModalityEncoder):
    """Spectrograms (B, 1, F, T) → (B, ENCODING_DIM) through 2D convs and global pooling."""

    def __init__(self, cfg: EncoderConfig) -> None:
        backbone = nn.Sequential(
            conv_stack(2, 1, AUDIO_CHANNELS, kernel_size=3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        super().__init__(backbone, AUDIO_CHANNELS[-1], cfg)


class SensorEncoder(ModalityEncoder):
    """IMU windows (B, 6, T) → (B, ENCODING_DIM) through 1D convs over time and global pooling."""

    def __init__(self, cfg: EncoderConfig) -> None:
        backbone = nn.Sequential(
            conv_stack(1, 6, SENSOR_CHANNELS, kernel_size=SENSOR_KERNEL),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        super().__init__(backbone, SENSOR_CHANNELS[-1], cfg)


class TextBackbone(nn.Module):
    """Token + learned position embeddings, a small pre-norm Transformer, masked mean pooling."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, TEXT_WIDTH, padding_idx=PAD_TOKEN)
        self.position_embedding = nn.Embedding(MAX_TEXT_LENGTH, TEXT_WIDTH)
        layer = nn.TransformerEncoderLayer(
            TEXT_WIDTH,
            TEXT_HEADS,
            TEXT_FEEDFORWARD,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors only speed up inference on long padded batches and warn with norm_first
        self.transformer = nn.TransformerEncoder(
            layer, TEXT_LAYERS, norm=nn.LayerNorm(TEXT_WIDTH), enable_nested_tensor=False
        )

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        if length > MAX_TEXT_LENGTH:
            raise ValueError(f"text has {length} tokens; the model takes at most {MAX_TEXT_LENGTH}")
        padding = tokens == PAD_TOKEN
        # An all-padding row would mask every key and softmax over nothing is NaN; let such a row
        # attend to its own padding instead, and drop it in the pooling below (→ a zero vector).
        attention_padding = padding & ~padding.all(dim=1, keepdim=True)
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        x = self.transformer(x, src_key_padding_mask=attention_padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class TextEncoder(ModalityEncoder):
    """Token ids (B, L), 0 = padding → (B, ENCODING_DIM); rows may be all padding."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__(TextBackbone(cfg.vocab_size), TEXT_WIDTH, cfg)


class Fusion(nn.Module):
    """Concatenated encodings → MLP → optional LayerNorm → optional L2 normalisation."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(ENCODING_DIM * len(MODALITIES), cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.dim, cfg.dim),
        )
        self.norm = nn.LayerNorm(cfg.dim) if cfg.layer_norm else nn.Identity()
        self.l2_normalize = cfg.l2_normalize
        self.requires_grad_(not cfg.freeze)

    def forward(self, encodings: dict[str, Tensor]) -> Tensor:
        x = torch.cat([encodings[name] for name in MODALITIES], dim=1)
        x = self.norm(self.mlp(x))
        return F.normalize(x, dim=1) if self.l2_normalize else x


class QuadModel(nn.Module):
    """Video, audio, IMU and text of one sample → one fused embedding (B, fusion.dim).

    `encode` exposes each modality's encoding and `fusion` maps those to the embedding, so a caller
    can keep the encodings' gradients to see how much each modality drives the loss.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {
                "video": VideoEncoder(cfg.video),
                "audio": AudioEncoder(cfg.audio),
                "sensor": SensorEncoder(cfg.sensor),
                "text": TextEncoder(cfg.text),
            }
        )
        self.fusion = Fusion(cfg.fusion)

    def encode(
        self, video: Tensor, audio: Tensor, sensor: Tensor, text: Tensor
    ) -> dict[str, Tensor]:
        """Each modality's encoding (B, ENCODING_DIM), keyed in `MODALITIES` order."""
        inputs = {"video": video, "audio": audio, "sensor": sensor, "text": text}
        return {name: self.encoders[name](inputs[name]) for name in MODALITIES}

    def forward(self, video: Tensor, audio: Tensor, sensor: Tensor, text: Tensor) -> Tensor:
        return self.fusion(self.encode(video, audio, sensor, text))


def build_model(cfg: ModelConfig) -> QuadModel:
    """The quadmodal model for a model config, with PyTorch's default initialisation."""
    return QuadModel(cfg)
