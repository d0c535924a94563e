"""Tar shards: writing (WebDataset layout, bad files left out), the stream's deal, buffer, resume and workers."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_audio
from sslspeaker.data.audio import read_audio
from sslspeaker.data.dataset import SegmentDataset
from sslspeaker.data.manifest import Entry, write_manifest
from sslspeaker.data.shards import (ShardDataset, batches_per_slot, deal_shards, emission_order, open_shards,
                                    write_shards)

N = 23


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shardcorpus")
    entries = []
    for i in range(N):
        path = root / f"s{i % 4}" / f"u{i:02d}.flac"
        write_audio(path, seconds=0.5 + 0.05 * i, freq=150 + 30 * i)
        entries.append(Entry(str(path), f"s{i % 4}", 0.5 + 0.05 * i))
    sf.write(str(root / "silent.wav"), np.zeros(8000, np.float32), 16000)
    (root / "broken.wav").write_bytes(b"RIFF....not audio")
    entries[5:5] = [Entry(str(root / "silent.wav"), "s9", 0.5), Entry(str(root / "broken.wav"), "s9", 0.5)]
    write_manifest(root / "train.csv", entries)
    return root, entries


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "sh"
    summary = write_shards(corpus[1], out, shard_size=3, progress=False)
    return out, summary


def test_writing_lays_out_webdataset_members_and_leaves_out_bad_files(corpus, shards):
    out, summary = shards
    assert summary["utterances"] == N and [s["count"] for s in summary["shards"]] == [3] * 7 + [2]
    assert {b["path"].rsplit("/", 1)[1] for b in summary["skipped"]} == {"silent.wav", "broken.wav"}
    assert json.loads((out / "shards.json").read_text()) == summary
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names == ["000000000.flac", "000000000.json", "000000001.flac", "000000001.json",
                         "000000002.flac", "000000002.json"]
        meta = json.loads(tar.extractfile("000000001.json").read())
        data = tar.extractfile("000000001.flac").read()
    good = [e for e in corpus[1] if "s9" != e.speaker]
    assert meta["speaker"] == good[1].speaker and meta["source"] == good[1].path
    assert data == open(good[1].path, "rb").read()  # the original bytes, not re-encoded
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(corpus[1], out, shard_size=3, progress=False)


def test_open_shards_reads_the_index_and_names_a_missing_shard(shards, tmp_path):
    out, _ = shards
    s = open_shards([out])
    assert len(s.entries) == N and s.sizes.tolist() == [3] * 7 + [2]
    assert s.entries[4].path.endswith("shard-000001.tar#000000004") and s.entries[4].speaker == "s0"
    assert np.concatenate(s.members).tolist() == list(range(N))
    with pytest.raises(ValueError, match="not a shard folder"):
        open_shards([tmp_path])


def test_emission_order_is_a_buffered_permutation():
    rng = np.random.default_rng(0)
    arrivals = np.arange(100)
    out, at = emission_order(arrivals, 10, rng)
    assert sorted(out.tolist()) == list(range(100)) and np.all(np.diff(at) >= 0)
    # an item leaves only after it arrived, and never more than the buffer's worth after it could have
    assert np.all(at >= out) and at[0] == 10
    assert out[0] <= 10  # the first emission is one of the first 11 arrivals
    same, _ = emission_order(arrivals, 0, np.random.default_rng(0))
    assert same.tolist() == list(range(100))  # no buffer: arrival order


def test_every_slot_can_emit_the_planned_batches_in_any_epoch():
    sizes = np.array([3] * 7 + [2])
    assert batches_per_slot(sizes, 2, 2) == (3 * 3 + 2) // 2  # 4 shards each, the smallest 4 hold 11
    for epoch in range(5):
        for slot in deal_shards(len(sizes), 2, 0, epoch):
            assert sizes[slot].sum() >= batches_per_slot(sizes, 2, 2) * 2


def make_dataset(shards_dir, **kw):
    return ShardDataset(open_shards([shards_dir]), crop_seconds=0.25, n_views=2, seed=3, with_labels=True, **kw)


def batches(stream, epoch, start=0, workers=0):
    stream.set_position(epoch, start)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_stream_items_equal_the_file_dataset_and_ranks_see_disjoint_utterances(corpus, shards):
    out, _ = shards
    ds = make_dataset(out)
    by_rank = [ds.stream(2, 3, rank, 2, 2, 4) for rank in (0, 1)]
    assert by_rank[0].batches_per_epoch() == batches_per_slot(ds.shards.sizes, 4, 2) * 2 == 4
    seen = []
    for s in by_rank:
        got = batches(s, epoch=1)
        assert len(got) == 4 and all(b["wave"].shape == (2, 2, 4000) for b in got)
        seen += [int(i) for b in got for i in b["index"]]
    assert len(seen) == len(set(seen)) == 16  # no utterance twice in an epoch, across ranks
    files = SegmentDataset([Entry(e.path, e.speaker, e.duration) for e in corpus[1] if e.speaker != "s9"],
                           crop_seconds=0.25, n_views=2, seed=3, with_labels=True, cache_bytes=1e9)
    b = batches(by_rank[1], epoch=1)[2]
    for j, i in enumerate(b["index"].tolist()):
        ref = files[(1, i)]  # same crops and label as the file dataset with the utterance in memory
        torch.testing.assert_close(b["wave"][j], ref["wave"], atol=1e-4, rtol=0)
        assert int(b["label"][j]) == ref["label"]
    other = [int(i) for x in batches(by_rank[0], epoch=2) for i in x["index"]]
    assert other != seen[:8]  # another deal and order the next epoch


def test_resume_position_and_workers_give_the_same_batches(shards):
    out, _ = shards
    stream = make_dataset(out).stream(2, 3, 0, 1, 2, 4)
    full = batches(stream, epoch=0)
    assert len(full) == stream.batches_per_epoch() == 2 * batches_per_slot(stream.shards.sizes, 2, 2)
    resumed = batches(stream, epoch=0, start=3)
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["wave"], b["wave"])
    two = batches(stream, epoch=0, start=3, workers=2)  # two loader workers, one stream each
    assert [x["index"].tolist() for x in two] == [x["index"].tolist() for x in resumed]


def test_trainer_on_shards_resumes_exactly(shards, tmp_path):
    from sslspeaker.config import ConfigError, load_config
    from sslspeaker.training.checkpoint import load_checkpoint
    from sslspeaker.training.trainer import CHECKPOINT, Trainer

    out, _ = shards
    args = [f"data.train=[{out}]", "data.format=shards", "data.streams=2", "data.shuffle_buffer=4",
            "data.crop_seconds=0.25", "data.workers=0", "model.encoder=tiny_test", "model.options={channels: 16, embed_dim: 8}",
            "method.options={queue_size: 8}", "train.batch_size=2", "train.epochs=2", "train.threads=1"]
    whole = Trainer(load_config(None, args), tmp_path / "a")
    whole.train()
    cut = Trainer(load_config(None, args), tmp_path / "b")
    cut.train(stop_after_steps=7)  # mid-epoch (10 batches per epoch)
    resumed = Trainer(load_config(None, args), tmp_path / "b", resume=True)
    resumed.train()
    a, b = (load_checkpoint(p / CHECKPOINT) for p in (tmp_path / "a", tmp_path / "b"))
    assert a["position"] == b["position"] == {"step": 20, "epoch": 2, "batch": 0}
    for k, v in a["method"].items():  # encoder, key encoder, queue: as if never interrupted
        torch.testing.assert_close(b["method"][k], v, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="data.workers=3: expected a divisor of data.streams=2"):
        load_config(None, args + ["data.workers=3"])
    with pytest.raises(ConfigError, match="not a shard folder"):
        Trainer(load_config(None, [*args, f"data.train=[{tmp_path}]"]), tmp_path / "c")


def test_cli_shard(corpus, tmp_path, capsys):
    from sslspeaker.cli import main

    root, _ = corpus
    assert main(["shard", str(root / "train.csv"), "--out", str(tmp_path / "sh"), "--shard-size", "10"]) == 0
    assert "23 utterances -> 3 shards" in capsys.readouterr().out
    assert main(["shard", str(root / "train.csv"), "--out", str(tmp_path / "sh")]) == 2
    assert "already holds shards" in capsys.readouterr().err
