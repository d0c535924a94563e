"""Channel augmentation: the narrow band of telephone and low-rate speech.

Telephone speech (8-kHz sampling) holds nothing above ~4 kHz. A model that only ever saw
wide-band training audio maps such a recording's empty upper mel bands to a region of its own,
so two telephone voices look alike; band-limiting some training views teaches it to ignore the
missing band.
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
