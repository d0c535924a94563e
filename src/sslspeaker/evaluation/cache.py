"""The embedding cache and the embedding of many utterances through a scoring protocol.

Embeddings are computed once per utterance (all of an utterance's segments in one batch,
audio read ahead by a small thread pool) and cached on disk: one ``.npz`` per (model,
protocol) in the cache folder (default ``$XDG_CACHE_HOME/sslspeaker`` or
``~/.cache/sslspeaker``), named by the model's fingerprint (a hash of its weights and
feature/encoder metadata) and the protocol's name+parameters hash; inside, each utterance is
keyed by a hash of its absolute path, mtime and size (and, for randomly placed segments, the
seed key, and whether speech activity trimmed it: ``vad``). A changed model or protocol uses
another file; a changed audio file another key.

``embed_utterances`` sorts the utterances by file size (a proxy for length) and embeds them in
groups through ``model.embed_waves`` with a list of segments: padded batches sorted by length,
each segment embedded as alone (``models.batched``). With the model's ``vad`` on, the ``full``
protocol embeds each utterance's speech regions (``data.activity``; an utterance without speech
is an error naming it); the segment protocols' crops are positions in the file, embedded as cut.

What a cache file returns is checked: a file whose embeddings are not float32 arrays
[n, segments, D] with the model's D, all finite, or whose key count disagrees, is ignored
(with a warning) and its utterances are embedded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ..data.activity import trim_silence
from ..fileio import atomic_path
from .embeddings import file_size
from .protocols import Protocol
from .scoring import check_vectors

log = logging.getLogger(__name__)


# ---- cache -----------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslspeaker"


class EmbeddingCache:
    """Per-utterance embeddings [n, D] of one (model, protocol) pair in one ``.npz`` file."""

    def __init__(self, folder: str | os.PathLike, model_fingerprint: str, protocol: Protocol,
                 embed_dim: int | None = None, vad: bool = True):
        self.folder = Path(folder)
        self.protocol = protocol
        self.vad = bool(vad) and protocol.n == 1  # entries of speech-trimmed utterances (keys differ)
        self.embed_dim = embed_dim  # the model's embedding size: entries of another size are refused
        self.path = self.folder / f"{model_fingerprint[:20]}-{protocol.tag}.npz"
        self.info = {"model_fingerprint": model_fingerprint, "protocol": protocol.to_dict()}
        self.dirty = 0
        self.entries: dict[str, np.ndarray] = self._read()

    def _read(self) -> dict[str, np.ndarray]:
        """The cache file's entries, or none (with a warning) when it is unreadable or fails ``cache_problem``."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys, emb = z["keys"], z["embeddings"]
            problem = cache_problem(keys, emb, self.embed_dim)
        except Exception as exc:  # a damaged cache is only a cache: start again
            problem = f"unreadable: {exc}"
        if problem:
            log.warning("ignoring embedding cache %s (%s); embedding again", self.path, problem)
            return {}
        return {str(k): emb[i] for i, k in enumerate(keys)}

    def key(self, path: str, seed_key: str | None) -> str:
        st = os.stat(path)
        blob = f"{os.path.abspath(path)}\0{st.st_mtime_ns}\0{st.st_size}"
        if self.protocol.seeded:
            blob += f"\0{seed_key if seed_key is not None else path}"
        if self.vad:
            blob += "\0vad"
        return hashlib.sha1(blob.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key)

    def put(self, key: str, emb: np.ndarray) -> None:
        self.entries[key] = np.asarray(emb, dtype=np.float32)
        self.dirty += 1

    def save(self) -> None:
        if not self.dirty:
            return
        if self.path.is_file():  # keep what another process added meanwhile
            self.entries = {**self._read(), **self.entries}
        keys = np.array(sorted(self.entries), dtype="U40")
        emb = np.stack([self.entries[k] for k in keys]) if len(keys) else np.zeros((0, 0, 0), np.float32)
        with atomic_path(self.path, suffix=".npz") as tmp:  # the suffix: np.savez would append one
            np.savez(tmp, keys=keys, embeddings=emb, info=np.array(json.dumps(self.info)))
        self.dirty = 0


def cache_problem(keys: np.ndarray, emb: np.ndarray, embed_dim: int | None) -> str | None:
    """Why a cache file's (keys, embeddings) cannot be used, or None."""
    if keys.ndim != 1 or len(keys) != len(emb):
        return f"{keys.size} keys for {len(emb)} embeddings"
    if not len(keys):
        return None
    if emb.dtype != np.float32 or emb.ndim != 3:
        return f"embeddings of dtype {emb.dtype} and shape {emb.shape}, expected float32 [n, segments, dim]"
    if embed_dim is not None and emb.shape[2] != embed_dim:
        return f"{emb.shape[2]}-dimensional entries, the model gives {embed_dim}"
    if not np.isfinite(emb).all():
        return "entries hold NaN or inf"
    return None


# ---- embedding many utterances ------------------------------------------------------------
def _read_ahead(fn, items: Iterable, workers: int = 2, depth: int = 8) -> Iterator[tuple[Any, Any]]:
    """(item, future of fn(item)) in order, with at most ``depth`` reads in flight."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        pending = deque((item, ex.submit(fn, item)) for item in islice(it, depth))
        while pending:
            item, fut = pending.popleft()
            for nxt in islice(it, 1):
                pending.append((nxt, ex.submit(fn, nxt)))
            yield item, fut


def _loader(model, protocol: Protocol):
    """path, seed key -> the segments [n, T] to embed: the speech of a full utterance when ``model.vad``."""
    vad = bool(getattr(model, "vad", False)) and protocol.n == 1

    def load(item: tuple) -> Any:
        segs = protocol.load(item[0], item[1])
        return [trim_silence(segs[0], item[0])] if vad else segs

    return load


def _embed_group(model, group: list, out: dict, cache: EmbeddingCache | None) -> None:
    """Embed the loaded segments of ``group`` = [((path, seed key, cache key), segments)] in one call."""
    waves = [w for _, segs in group for w in segs]
    emb = model.embed_waves(waves)  # a list: padded batches by length, as ``embed_batch`` of the same files
    at = 0
    for (path, _, key), segs in group:
        e, at = np.asarray(emb[at:at + len(segs)], dtype=np.float32), at + len(segs)
        check_vectors({path: e})
        out[path] = e
        if cache is not None:
            cache.put(key, e)
            if cache.dirty >= 2000:
                cache.save()


def embed_utterances(model, protocol: Protocol, items: list[tuple[str, str]], cache: EmbeddingCache | None = None,
                     progress: bool = True, desc: str = "embedding", group_size: int = 32
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """``{path: [n, D] embeddings}`` for ``items`` = [(path, seed_key)], using and filling ``cache``;
    ``group_size`` utterances (sorted by file size) per ``model.embed_waves`` call."""
    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, str, str | None]] = []
    for path, seed_key in items:
        key = cache.key(path, seed_key) if cache is not None else None
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            out[path] = hit
        else:
            todo.append((path, seed_key, key))
    todo.sort(key=lambda it: file_size(it[0]))
    t0 = time.perf_counter()
    if todo:
        bar = tqdm(total=len(todo), desc=desc, unit="utt", disable=not progress, mininterval=1.0, dynamic_ncols=True)
        group: list = []
        try:
            for item, fut in _read_ahead(_loader(model, protocol), todo):
                group.append((item, fut.result()))
                if len(group) >= group_size or item is todo[-1]:
                    _embed_group(model, group, out, cache)
                    bar.update(len(group))
                    group = []
        finally:
            bar.close()
            if cache is not None:
                cache.save()
    stats = {"utterances": len(items), "computed": len(todo), "from_cache": len(items) - len(todo),
             "seconds": round(time.perf_counter() - t0, 2),
             "vad": bool(getattr(model, "vad", False)) and protocol.n == 1}
    return out, stats


__all__ = ["default_cache_dir", "EmbeddingCache", "cache_problem", "embed_utterances"]
