"""Log mel filterbank features (HTK mel scale), computed with torch on any device."""

from __future__ import annotations

import torch

NORMS = ("none", "mean", "instance", "global")
# A description's values where it omits them (``LogMel.from_description``): those of ``FeatureConfig``
# and of the model files, so norm is "instance" here where the constructor's default is "mean".
DESCRIPTION_DEFAULTS = {"type": "logmel", "sample_rate": 16000, "n_mels": 40, "norm": "instance", "preemphasis": 0.97,
                        "n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "f_max": 7600.0}


def hz_to_mel(f):
    """m = 2595·log10(1 + f/700) (HTK)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m):
    """f = 700·(10^(m/2595) − 1) (HTK)."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int,
    n_fft: int,
    sample_rate: int,
    f_min: float = 20.0,
    f_max: float = 7600.0,
    norm: str | None = None,
) -> torch.Tensor:
    """Triangular filters [n_fft//2 + 1, n_mels] on the HTK mel scale.

    Filter m rises linearly (in Hz) from edge m to its centre, edge m+1, and falls to edge m+2,
    where the n_mels + 2 edges are equally spaced in mel between f_min and f_max; the weights
    are evaluated at the FFT bin frequencies k·sr/n_fft. Peak height is 1; ``norm="slaney"``
    instead scales each filter by 2/(right − left) Hz so all have the same area.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm={norm!r}: expected None or 'slaney'")
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 ≤ f_min < f_max ≤ sample_rate/2, got {f_min}, {f_max}, sr={sample_rate}")
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rise = (freqs[:, None] - left) / (centre - left)
    fall = (right - freqs[:, None]) / (right - centre)
    fb = torch.clamp(torch.minimum(rise, fall), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (right - left))
    return fb.float()


def pre_emphasis(x: torch.Tensor, coef: float) -> torch.Tensor:
    """y[t] = x[t] − coef·x[t−1], with x[−1] = 0."""
    return torch.cat([x[..., :1], x[..., 1:] - coef * x[..., :-1]], dim=-1)


class LogMel(torch.nn.Module):
    """Waveform [B, T] at 16 kHz → log mel features [B, n_mels, 1 + T // hop_length].

    Pre-emphasis (``pre_emphasis=None`` or 0 turns it off), Hamming-windowed STFT (25 ms window
    in a 512-point FFT, 10 ms hop) with ``center=True``: the signal is reflect-padded by
    n_fft/2 on both sides so frame i is centred on sample i·hop, hence 1 + T // hop frames (T
    must exceed n_fft/2). Power spectrum → mel filters → log(mel + 1e-6), then ``norm``:
    "mean" subtracts each band's mean over time (cepstral mean normalisation), "instance" also
    divides by its standard deviation (InstanceNorm1d without affine), "global" uses one mean and
    standard deviation over all bands and frames (gain only), "none" leaves it.
    Computed in float32 with autocast off, so it is safe inside a bf16/fp16 autocast region.
    """

    def __init__(
        self,
        n_mels: int = 40,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float = 7600.0,
        pre_emphasis: float | None = 0.97,
        norm: str = "mean",
        log_eps: float = 1e-6,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {NORMS}")
        self.n_mels, self.n_fft, self.win_length, self.hop_length = n_mels, n_fft, win_length, hop_length
        self.sample_rate, self.f_min, self.f_max = sample_rate, f_min, f_max
        self.pre_emphasis, self.norm, self.log_eps, self.norm_eps = pre_emphasis, norm, log_eps, norm_eps
        # Not persistent: derived from the arguments, so checkpoints need not carry them.
        self.register_buffer("window", torch.hamming_window(win_length), persistent=False)
        self.register_buffer("fb", self._filterbank(), persistent=False)

    def _filterbank(self) -> torch.Tensor:
        return mel_filterbank(self.n_mels, self.n_fft, self.sample_rate, self.f_min, self.f_max)

    def describe(self) -> dict:
        """The settings these features depend on, in JSON types (the model file's ``"features"``)."""
        return {"type": "logmel", "sample_rate": int(self.sample_rate), "n_mels": int(self.n_mels),
                "norm": self.norm, "preemphasis": float(self.pre_emphasis or 0.0), "n_fft": int(self.n_fft),
                "win_length": int(self.win_length), "hop_length": int(self.hop_length),
                "f_min": float(self.f_min), "f_max": float(self.f_max)}

    @classmethod
    def from_description(cls, description: dict) -> "LogMel":
        """The ``LogMel`` that ``describe()`` returned ``description`` for.

        Missing keys take ``DESCRIPTION_DEFAULTS`` (so a ``FeatureConfig`` as a dict is a
        description too); an unknown key or another ``type`` than "logmel" is a ``ValueError``.
        """
        d = {**DESCRIPTION_DEFAULTS, **description}
        unknown = sorted(set(d) - set(DESCRIPTION_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown feature setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(DESCRIPTION_DEFAULTS)})")
        if d.pop("type") != "logmel":
            raise ValueError(f"unknown feature type {description.get('type')!r}")
        return cls(pre_emphasis=d.pop("preemphasis"), **d)

    def _apply(self, fn, *args, **kwargs):
        # Follow .to(device) but stay float32 when the model is cast to bf16/fp16: rebuild the
        # constants rather than keep rounded ones.
        super()._apply(fn, *args, **kwargs)
        if self.fb.dtype != torch.float32:
            self.window = torch.hamming_window(self.win_length, device=self.window.device)
            self.fb = self._filterbank().to(self.fb.device)
        return self

    def num_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"LogMel expects a waveform batch [B, T], got shape {tuple(x.shape)}")
        if x.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"LogMel needs more than {self.n_fft // 2} samples (reflect padding), got {x.shape[-1]}")
        with torch.autocast(x.device.type, enabled=False):
            return self.normalise(self.log_mel(x))

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] -> log mel [B, n_mels, 1 + T // hop_length] before ``norm`` (float32)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.pre_emphasis:
                x = pre_emphasis(x, self.pre_emphasis)
            spec = torch.stft(
                x, self.n_fft, self.hop_length, self.win_length, self.window,
                center=True, pad_mode="reflect", return_complex=True,
            )  # fmt: skip
            power = spec.real.square() + spec.imag.square()  # [B, F, frames]
            return torch.log(torch.einsum("bft,fm->bmt", power, self.fb) + self.log_eps)

    def chunked(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """``forward(x)`` computed ``chunk_frames`` frames at a time: the STFT of each chunk sees
        ``margin`` extra samples on each side (a whole number of hops, >= n_fft / 2), so every kept
        frame's window and pre-emphasis are those of the whole signal; ``norm`` then uses the
        statistics of all frames. Only the log mel frames are held, never the whole spectrum."""
        if x.dim() != 2 or x.shape[-1] <= self.n_fft // 2:
            return self.forward(x)
        hop, n = self.hop_length, x.shape[-1]
        margin = -(-(self.n_fft // 2) // hop) * hop
        parts = []
        for f0 in range(0, self.num_frames(n), chunk_frames):
            f1 = min(f0 + chunk_frames, self.num_frames(n))
            s0, s1 = max(f0 * hop - margin, 0), min((f1 - 1) * hop + margin + 1, n)
            mel = self.log_mel(x[:, s0:max(s1, s0 + self.n_fft // 2 + 1)])
            parts.append(mel[..., f0 - s0 // hop:f1 - s0 // hop])
        with torch.autocast(x.device.type, enabled=False):
            return self.normalise(torch.cat(parts, dim=-1))

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        """``norm`` applied to log mel frames [B, n_mels, frames] (see the class docstring)."""
        with torch.autocast(mel.device.type, enabled=False):
            if self.norm == "mean":
                mel = mel - mel.mean(-1, keepdim=True)
            elif self.norm == "global":
                # one mean and std over all bands and frames: removes gain, keeps the long-term
                # spectral envelope (speaker information that per-band normalisation erases)
                var, mean = torch.var_mean(mel, dim=(-2, -1), keepdim=True, correction=0)
                mel = (mel - mean) / torch.sqrt(var + self.norm_eps)
            elif self.norm == "instance":
                var, mean = torch.var_mean(mel, dim=-1, keepdim=True, correction=0)
                mel = (mel - mean) / torch.sqrt(var + self.norm_eps)
        return mel

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, n_fft={self.n_fft}, win={self.win_length}, hop={self.hop_length}, "
            f"pre_emphasis={self.pre_emphasis}, norm={self.norm!r}"
        )
