"""Channel augmentation: the narrow band of telephone and low-rate speech, and random equalisation.

Telephone speech (8-kHz sampling) holds nothing above ~4 kHz. A model that only ever saw
wide-band training audio maps such a recording's empty upper mel bands to a region of its own,
so two telephone voices look alike; band-limiting some training views teaches it to ignore the
missing band. Likewise every recording has its own microphone and room colouring, shared by
the two crops of one utterance that contrastive methods take as a positive pair: unless the
views' colourings differ, the cheapest way to match them is to learn the channel, not the voice.
"""

from __future__ import annotations

import torch


def low_pass(x: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Y[k] = X[k]·[f_k ≤ f_c] with f_k = k·sr/T: each row of x [N, T] keeps only its band below its cutoff [N]."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        T = x.shape[-1]
        X = torch.fft.rfft(x.to(work), dim=-1)
        f = torch.fft.rfftfreq(T, 1.0 / sample_rate, device=x.device, dtype=work)
        keep = f[None, :] <= cutoff_hz.to(x.device, work)[:, None]
        return torch.fft.irfft(X * keep, n=T, dim=-1).to(x.dtype)


EQ_COMPONENTS = 3  # cosines over log frequency: a smooth curve, a few broad bumps, no narrow notches


def equalise(x: torch.Tensor, gains_db: torch.Tensor, phases: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Y(f) = X(f)·10^(G(f)/20), G(f) = Σ_j g_j·cos(jπu(f) + φ_j), u = log2(f/50 Hz)/log2(sr/100 Hz), f ≥ 50 Hz."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        T = x.shape[-1]
        f = torch.fft.rfftfreq(T, 1.0 / sample_rate, device=x.device, dtype=work).clamp_min(50.0)
        u = torch.log2(f / 50.0) / torch.log2(torch.tensor(sample_rate / 100.0, dtype=work))
        j = torch.arange(1, gains_db.shape[-1] + 1, device=x.device, dtype=work)
        g = gains_db.to(x.device, work)[:, :, None] * torch.cos(
            torch.pi * j[None, :, None] * u[None, None, :] + phases.to(x.device, work)[:, :, None])
        X = torch.fft.rfft(x.to(work), dim=-1)
        return torch.fft.irfft(X * 10.0 ** (g.sum(1) / 20.0), n=T, dim=-1).to(x.dtype)
