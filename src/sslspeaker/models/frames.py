"""Which frames count: padded batches and chunked streams through an unchanged encoder.

Encoders see ``[B, ..., T]`` maps with time last. Two inference modes need to know, per row,
which of the T frames are real:

* **padded batches** (``zero_padding=True``): utterances of different lengths padded at the end.
  Convolutions would leak the padding into the edge frames, so the input of every ``Conv1d`` /
  ``Conv2d`` is re-masked (frames at or past the row's length set to 0, which is what the conv's
  own zero padding gives an utterance alone) and the valid range is carried through each
  conv's stride and padding. Pooling, squeeze-excitation and the other utterance statistics
  average over the valid frames only (softmax attention gets -inf on the padding). So an
  utterance embeds the same in a batch as alone, to float rounding (BatchNorm in eval mode is
  per frame; in training mode batch statistics would see the padding: inference only).
* **chunked streams** (``stream=StreamStats()``): one long utterance cut into chunks that
  overlap by the encoder's receptive field; each chunk counts only its own frames. Every
  utterance-level statistic (``time_average``: a squeeze-excitation mean, a context mean or
  std, the pooling's plain or softmax-weighted mean) is a *site*; pass k over all chunks
  accumulates site k exactly (sums in float64; softmax weights by log-sum-exp: running max
  m, sum of exp(l - m), sum of exp(l - m) x) while sites < k use their frozen whole-utterance
  values, and stops each chunk's forward at site k (``StopPass``). When every site is frozen a
  forward returns the embedding of the whole utterance. Passes = sites + 1.

Without an active context (``active() is None``) every layer runs its plain code, unchanged.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn

# The context of the forward in progress: a module global (not a ContextVar), so that a compiled
# training forward reads it as a guarded constant (None) without a graph break. One masked or
# chunked forward at a time per process (``frame_ranges`` refuses to nest).
_ACTIVE: "FrameContext | None" = None


class StopPass(Exception):
    """A chunk's forward reached the site this pass accumulates: the rest is not needed yet."""


class StreamStats:
    """Frozen whole-utterance values of the sites so far, and the accumulator of the current one."""

    def __init__(self) -> None:
        self.frozen: list[Tensor] = []
        self.acc: tuple | None = None
        self.calls = 0

    def site(self, x: Tensor, logits: Tensor | None, lo: int, hi: int, dims: tuple[int, ...]) -> Tensor:
        n, self.calls = self.calls, self.calls + 1
        if n < len(self.frozen):
            return self.frozen[n].to(x.device, x.dtype)
        xs = x[..., lo:hi].double()
        if logits is None:
            part = (xs.sum(dim=dims), math.prod(xs.shape[d] for d in dims))
            self.acc = part if self.acc is None else (self.acc[0] + part[0], self.acc[1] + part[1])
        else:
            lg = logits[..., lo:hi].double()
            m = lg.amax(dim=-1, keepdim=True)
            e = torch.exp(lg - m)
            part = (m, e.sum(dim=-1), (e * xs).sum(dim=-1))
            self.acc = part if self.acc is None else _merge_softmax(self.acc, part)
        raise StopPass

    def end_pass(self) -> None:
        """Freeze the site accumulated over all chunks of this pass."""
        if self.acc is None:
            raise RuntimeError("a pass ended without reaching a site")
        value = self.acc[0] / self.acc[1] if len(self.acc) == 2 else self.acc[2] / self.acc[1]
        self.frozen.append(value.float())
        self.acc = None


def _merge_softmax(a: tuple, b: tuple) -> tuple:
    """Two (max, sum exp, weighted sum) accumulators -> one (log-sum-exp rescaling)."""
    m = torch.maximum(a[0], b[0])
    sa, sb = torch.exp(a[0] - m).squeeze(-1), torch.exp(b[0] - m).squeeze(-1)
    return m, a[1] * sa + b[1] * sb, a[2] * sa + b[2] * sb


class FrameContext:
    """Valid frame ranges [lo, hi) per row, for each time size met so far (see the module docstring)."""

    def __init__(self, lo: Tensor, hi: Tensor, size: int, zero_padding: bool, stream: StreamStats | None):
        self.ranges: dict[int, tuple[Tensor, Tensor]] = {size: (lo, hi)}
        self.zero_padding = zero_padding
        self.stream = stream
        self.averages = 0  # time_average calls: 0 after a forward = the encoder pools by its own means

    def range_for(self, size: int) -> tuple[Tensor, Tensor] | None:
        return self.ranges.get(size)

    def valid(self, size: int) -> Tensor | None:
        """Bool [B, size]: the frames that count, or None when this time size is unknown."""
        r = self.ranges.get(size)
        if r is None:
            return None
        t = torch.arange(size, device=r[0].device)
        return (t[None] >= r[0][:, None]) & (t[None] < r[1][:, None])


def active() -> FrameContext | None:
    """The frame context of the forward in progress, or None (plain full-length inputs)."""
    return _ACTIVE


def _time_geometry(conv: nn.Module) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a conv along its last (time) axis."""
    pad = conv.padding
    if isinstance(pad, str):  # "same" keeps the length, "valid" has none
        k, d = conv.kernel_size[-1], conv.dilation[-1]
        pad = (d * (k - 1) // 2,) if pad == "same" else (0,)
    return conv.kernel_size[-1], conv.stride[-1], pad[-1], conv.dilation[-1]


def _pre_hook(conv: nn.Module, args: tuple):
    ctx = _ACTIVE
    if ctx is None or not ctx.zero_padding:
        return None
    x = args[0]
    valid = ctx.valid(x.shape[-1])
    if valid is None:
        return None
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return (x * valid.reshape(shape).to(x.dtype),) + tuple(args[1:])


def _post_hook(conv: nn.Module, args: tuple, out: Tensor) -> None:
    ctx = _ACTIVE
    if ctx is None or out.shape[-1] in ctx.ranges:
        return
    r = ctx.range_for(args[0].shape[-1])
    if r is None:
        return
    k, s, p, d = _time_geometry(conv)
    offset = d * (k - 1) // 2 - p  # output frame j is centred on input frame j * s + offset
    size = out.shape[-1]
    ctx.ranges[size] = tuple(torch.div(v - offset + s - 1, s, rounding_mode="floor").clamp(0, size) for v in r)


@contextlib.contextmanager
def frame_ranges(module: nn.Module, lo: Tensor, hi: Tensor, size: int, zero_padding: bool = True,
                 stream: StreamStats | None = None) -> Iterator[FrameContext]:
    """Run ``module`` (an encoder) on [B, ..., size] inputs whose row b counts frames [lo[b], hi[b])."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("frame_ranges does not nest (one padded or chunked forward at a time)")
    ctx = FrameContext(lo.long(), hi.long(), size, zero_padding, stream)
    hooks = []
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            hooks += [m.register_forward_pre_hook(_pre_hook), m.register_forward_hook(_post_hook)]
    _ACTIVE = ctx
    try:
        if stream is not None:
            stream.calls = 0
        yield ctx
    finally:
        _ACTIVE = None
        for h in hooks:
            h.remove()


def time_average(x: Tensor, logits: Tensor | None = None, dims: tuple[int, ...] = ()) -> Tensor:
    """Mean of x [B, ..., T] over time (and ``dims``), over the counted frames; ``logits``
    (broadcastable to x) make it the softmax-weighted mean sum_t softmax_t(logits) x_t.

    Call only under an active context (``active()``); the layers keep their plain code otherwise.
    """
    ctx = _ACTIVE
    ctx.averages += 1
    size = x.shape[-1]
    r = ctx.range_for(size)
    if r is None:
        raise RuntimeError(f"no frame range known for {size} frames")
    dims = tuple(d % x.dim() for d in dims) + (x.dim() - 1,)
    if ctx.stream is not None:
        return ctx.stream.site(x, logits, int(r[0][0]), int(r[1][0]), dims)
    valid = ctx.valid(size).reshape((x.shape[0],) + (1,) * (x.dim() - 2) + (size,))
    if logits is None:
        w = valid.to(x.dtype).expand_as(x)
        return (x * w).sum(dim=dims) / w.sum(dim=dims)
    w = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    return (w * x).sum(dim=-1)


def receptive_field(encoder: nn.Module) -> int:
    """An upper bound on how many input frames on each side a frame before pooling depends on.

    Sums d(k - 1)/2 of every conv, scaled by the time stride before it (only convs wider than 1
    move the stride: a 1x1 strided shortcut runs beside the strided 3x3 it mirrors).
    """
    jump, field = 1, 0
    for m in encoder.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k, s, _, d = _time_geometry(m)
            field += jump * d * (k - 1) // 2 + (jump if k > 1 and d * (k - 1) % 2 else 0)
            if k > 1:
                jump *= s
    return field


__all__ = ["FrameContext", "StopPass", "StreamStats", "active", "frame_ranges", "receptive_field", "time_average"]
