"""The quadmodal model: shapes, fusion toggles, frozen backbones, padding and gradient flow."""

from __future__ import annotations

import pytest
import torch

from quad_doctor.trainer.config import MODALITIES, FusionConfig, ModelConfig
from quad_doctor.trainer.losses import SupConLoss
from quad_doctor.trainer.model import ENCODING_DIM, QuadModel, build_model

BATCH = 6
FUSION_DIM = 32  # small, to keep the tests fast; the default is 512


def make_batch(
    batch: int = BATCH,
    frames: int = 8,
    frame_size: int = 24,
    spectrogram: tuple[int, int] = (32, 32),
    imu_length: int = 128,
    text_length: int = 24,
    vocab_size: int = 1000,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, vocab_size, (batch, text_length), generator=generator)
    text[:, text_length // 2 :] = 0  # trailing padding, as the dataset stores it
    return {
        "video": torch.rand(batch, frames, 3, frame_size, frame_size, generator=generator),
        "audio": torch.randn(batch, 1, *spectrogram, generator=generator),
        "sensor": torch.randn(batch, 6, imu_length, generator=generator),
        "text": text,
    }


def small_config(**fusion: bool) -> ModelConfig:
    return ModelConfig(fusion=FusionConfig(dim=FUSION_DIM, **fusion))


@pytest.fixture(scope="module")
def model() -> QuadModel:
    torch.manual_seed(0)
    return build_model(small_config())


def test_output_shape_and_unit_rows(model: QuadModel) -> None:
    out = model(**make_batch())
    assert out.shape == (BATCH, FUSION_DIM)
    assert torch.allclose(out.norm(dim=1), torch.ones(BATCH), atol=1e-5)


def test_default_config_gives_512_d_embeddings() -> None:
    out = build_model(ModelConfig())(**make_batch(batch=2))
    assert out.shape == (2, 512)


def test_without_l2_normalize_rows_are_not_unit() -> None:
    torch.manual_seed(0)
    out = build_model(small_config(l2_normalize=False))(**make_batch())
    # LayerNorm alone leaves each row with mean 0 and variance 1, so norm ~ sqrt(dim)
    assert not torch.allclose(out.norm(dim=1), torch.ones(BATCH), atol=1e-2)
    assert torch.allclose(out.mean(dim=1), torch.zeros(BATCH), atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.full((BATCH,), FUSION_DIM**0.5), rtol=1e-3)


def test_layer_norm_toggle() -> None:
    with_norm = build_model(small_config(l2_normalize=False))
    without_norm = build_model(small_config(layer_norm=False, l2_normalize=False))
    assert isinstance(with_norm.fusion.norm, torch.nn.LayerNorm)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in without_norm.fusion.modules())
    out = without_norm(**make_batch())
    assert out.mean(dim=1).abs().max() > 1e-3  # nothing centres the rows any more


@pytest.mark.parametrize("modality", MODALITIES)
def test_freeze_backbone_freezes_exactly_that_backbone(modality: str) -> None:
    cfg = small_config()
    getattr(cfg, modality).freeze_backbone = True
    model = build_model(cfg)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    backbone = {
        f"encoders.{modality}.backbone.{name}"
        for name, _ in model.encoders[modality].backbone.named_parameters()
    }
    assert backbone and frozen == backbone
    assert all(p.requires_grad for p in model.encoders[modality].head.parameters())


def test_no_batch_norm_anywhere(model: QuadModel) -> None:
    # running statistics would drift in frozen backbones and differ across DDP replicas
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_all_padding_text_row_is_finite(model: QuadModel) -> None:
    batch = make_batch()
    batch["text"][0] = 0
    batch["text"][3] = 0
    model.train()
    encodings = model.encode(**batch)
    assert torch.isfinite(model.fusion(encodings)).all()
    with torch.no_grad():  # eval may take PyTorch's fused Transformer path
        model.eval()
        assert torch.isfinite(model(**batch)).all()
        model.train()
    # a row of nothing pools to a zero vector, so its encoding is the head's bias
    assert torch.allclose(encodings["text"][0], model.encoders["text"].head.bias)


def test_padding_does_not_change_the_text_encoding(model: QuadModel) -> None:
    batch = make_batch(text_length=12)
    longer = torch.cat([batch["text"], torch.zeros(BATCH, 8, dtype=torch.long)], dim=1)
    text_encoder = model.encoders["text"]
    assert torch.allclose(text_encoder(batch["text"]), text_encoder(longer), atol=1e-5)


def test_a_training_step_reaches_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    cfg = small_config()
    cfg.audio.freeze_backbone = True
    model = build_model(cfg)
    batch = make_batch()
    batch["text"][1] = 0  # an empty text row must not poison the gradients
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]

    loss = SupConLoss()(model(**batch), labels).loss
    optimizer.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert p.grad is None, name
    optimizer.step()
    for (name, p), old in zip(model.named_parameters(), before, strict=True):
        changed = not torch.equal(p, old)
        assert changed == p.requires_grad, name


@pytest.mark.parametrize(
    "shapes",
    [
        {
            "frames": 4,
            "frame_size": 16,
            "spectrogram": (20, 40),
            "imu_length": 50,
            "text_length": 5,
        },
        {
            "frames": 12,
            "frame_size": 33,
            "spectrogram": (64, 17),
            "imu_length": 256,
            "text_length": 40,
        },
        {"frames": 1, "frame_size": 8, "spectrogram": (8, 8), "imu_length": 8, "text_length": 1},
    ],
    ids=["smaller", "larger-odd", "minimal"],
)
def test_other_input_shapes(model: QuadModel, shapes: dict) -> None:
    out = model(**make_batch(**shapes))
    assert out.shape == (BATCH, FUSION_DIM)
    assert torch.isfinite(out).all()


def test_encode_returns_the_four_encodings(model: QuadModel) -> None:
    batch = make_batch()
    encodings = model.encode(**batch)
    assert list(encodings) == list(MODALITIES)
    assert all(e.shape == (BATCH, ENCODING_DIM) for e in encodings.values())
    assert torch.allclose(model.fusion(encodings), model(**batch))


def test_too_long_text_is_rejected(model: QuadModel) -> None:
    with pytest.raises(ValueError, match="at most"):
        model.encoders["text"](torch.ones(1, 10_000, dtype=torch.long))


def test_freeze_head_and_fusion_freeze_exactly_those_modules() -> None:
    cfg = small_config(freeze=True)
    cfg.sensor.freeze_head = True
    model = build_model(cfg)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    expected = {
        f"encoders.sensor.head.{name}"
        for name, _ in model.encoders["sensor"].head.named_parameters()
    }
    expected |= {f"fusion.{name}" for name, _ in model.fusion.named_parameters()}
    assert frozen == expected
