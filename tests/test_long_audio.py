"""Padded batches, chunked long audio and sliding windows (issue 21, items 4 and 5).

Tolerances: the batched and chunked paths compute the same sums as the plain forward in another
order (masked sums, per-chunk float64 accumulators), so they agree to float32 rounding. The
unnormalised embeddings here are O(1); 1e-5 absolute is ~100 float32 ulps, while the naive
alternatives (padding unmasked, pooling chunk by chunk) move them by > 1e-3 (checked below).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslspeaker.features.mel import LogMel
from sslspeaker.models import build_encoder
from sslspeaker.models.batched import chunk_geometry, embed_chunked, embed_padded, length_batches, time_stride
from sslspeaker.models.frames import receptive_field

TOL = 1e-5
ENCODERS = {
    "tdnn": ("tdnn", dict(n_mels=24, channels=32, stats_channels=48, embed_dim=16)),
    "ecapa": ("ecapa_tdnn", dict(n_mels=24, channels=32, mfa_channels=48, se_dim=8, attention_dim=8, embed_dim=16)),
    "fast_resnet_sap_norm": ("fast_resnet34", dict(n_mels=24, channels=(4, 8, 8, 16), embed_dim=16, input_norm=True)),
    "fast_resnet_asp": ("fast_resnet34", dict(n_mels=24, channels=(4, 8, 8, 16), embed_dim=16, pooling="asp")),
    "resnet_tstp": ("resnet34", dict(n_mels=24, channels=(4, 8, 8, 16), embed_dim=16, layers=(1, 1, 1, 1))),
}


def encoder(key: str):
    """A small encoder in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    name, opts = ENCODERS[key]
    torch.manual_seed(0)
    enc = build_encoder(name, **opts)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return enc.eval()


def waves(*lengths: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=g) for n in lengths]


@pytest.mark.parametrize("key", list(ENCODERS))
def test_an_utterance_embeds_the_same_in_a_padded_batch_as_alone(key):
    enc, feats = encoder(key), LogMel(n_mels=24, norm="instance")
    xs = waves(16000, 9000, 12345, 3000)
    with torch.no_grad():
        alone = torch.cat([enc(feats(x[None])) for x in xs])
        batched = embed_padded(enc, feats, xs)
        # the naive batch: zero-padded features through the plain forward
        f = [feats(x[None]) for x in xs]
        naive = enc(torch.stack([torch.nn.functional.pad(v[0], (0, f[0].shape[-1] - v.shape[-1])) for v in f]))
    assert batched.shape == alone.shape == (4, 16)
    np.testing.assert_allclose(batched.numpy(), alone.numpy(), atol=TOL)
    assert float((naive[1:] - alone[1:]).abs().max()) > 1e-3  # padding leaks without the masks


@pytest.mark.parametrize("key", list(ENCODERS))
def test_chunked_long_audio_equals_the_unchunked_embedding(key):
    enc, feats = encoder(key), LogMel(n_mels=24, norm="instance")
    (noise,) = waves(16000 * 3)
    tone = 0.02 * torch.sin(2 * torch.pi * 300 * torch.arange(16000 * 3) / 16000) + 0.1 * noise.flip(0) ** 3
    x = torch.cat([noise, tone])  # not stationary: chunks differ from one another and from the whole
    chunk, margin = chunk_geometry(enc, 120)
    stride = time_stride(enc)
    assert margin >= receptive_field(enc) and chunk % stride == 0 and margin % stride == 0
    with torch.no_grad():
        full = enc(feats(x[None]))
        chunked = embed_chunked(enc, feats, x, chunk_frames=120)  # 601 frames: 6 chunks
        per_chunk = torch.stack([enc(feats(x[None, a:a + 120 * 160]))[0] for a in range(0, len(x), 120 * 160)])
    np.testing.assert_allclose(chunked.numpy(), full.numpy(), atol=TOL)
    assert float((per_chunk.mean(0) - full[0]).abs().max()) > 1e-3  # averaging chunk embeddings is not it


def test_logmel_chunked_equals_forward_for_every_norm():
    (x,) = waves(16000 * 3 + 77)
    for norm in ("none", "mean", "instance", "global"):
        feats = LogMel(n_mels=24, norm=norm)
        np.testing.assert_allclose(feats.chunked(x[None], 37).numpy(), feats(x[None]).numpy(), rtol=1e-5, atol=1e-5)


def test_length_batches_sort_longest_first_and_respect_the_frame_budget():
    assert length_batches([5, 9, 2, 9, 4], 18) == [[1, 3], [0, 4, 2]]
    assert length_batches([5, 9], 1) == [[1], [0]]  # a row longer than the budget is a batch alone


def test_speaker_encoder_batches_chunks_and_windows(tmp_path):
    from test_inference import make_run

    from sslspeaker.inference import SpeakerEncoder
    from sslspeaker.training.export import export_model

    model = SpeakerEncoder.load(export_model(make_run(tmp_path / "run"), tmp_path / "m.safetensors"), vad=False)
    xs = [x.numpy() for x in waves(16000, 24000, 7000, 24000)]
    alone = np.stack([model.embed(x) for x in xs])
    np.testing.assert_allclose(model.embed_batch(xs), alone, atol=TOL)
    np.testing.assert_allclose(model.embed_waves(xs), alone, atol=TOL)  # a list of any lengths
    model.chunk_seconds = 0.5  # the 1.5-s utterances now go chunk by chunk
    np.testing.assert_allclose(model.embed_batch(xs), alone, atol=TOL)
    model.chunk_seconds = 60.0
    starts, emb = model.embed_windows(xs[1], window=0.5, hop=0.25)
    np.testing.assert_allclose(starts, [0, 0.25, 0.5, 0.75, 1.0])  # 1.5 s: the last window ends at the end
    np.testing.assert_allclose(emb[2], model.embed(xs[1][8000:16000]), atol=TOL)
    starts, emb = model.embed_windows(xs[1][:23000], window=0.5, hop=0.25)
    assert starts[-1] == pytest.approx((23000 - 8000) / 16000) and emb.shape == (5, 256)
    starts, emb = model.embed_windows(xs[2], window=1.5, hop=0.75)  # shorter than a window: one, all of it
    np.testing.assert_allclose(starts, [0.0])
    np.testing.assert_allclose(emb[0], alone[2], atol=TOL)
    with pytest.raises(ValueError, match="hop must be a positive"):
        model.embed_windows(xs[1], window=1.0, hop=0)
