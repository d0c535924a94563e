"""Many nodes: two torchrun "nodes" of two CPU processes each (gloo) on this machine.

The recipe README.md documents: each node runs the same ``torchrun --nnodes 2 --nproc-per-node 2
--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID`` command; the c10d rendezvous assigns
the ranks. Checked here: the rendezvous, data sharded over the 4 ranks (steps per epoch), MoCo's
queue filled with the keys of all 4 ranks, and a run whose rank is killed resumes exactly from its
last checkpoint with ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslspeaker.training.checkpoint import load_checkpoint
from sslspeaker.training.trainer import CHECKPOINT

from test_trainer import corpus  # noqa: F401  (the 9-utterance corpus fixture)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_node(recipe: Path, corpus: Path, out: Path, port: int, *extra: str) -> subprocess.Popen:
    """One "node": torchrun with 2 local CPU ranks joining a 2-node c10d rendezvous on ``port``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multinode-test",
           "--max-restarts", "0", "-m", "sslspeaker.cli", "train", str(recipe), f"data.train={corpus / 'train.csv'}",
           "data.crop_seconds=0.5", "data.workers=0", "train.batch_size=2", "train.threads=1", "train.device=cpu",
           "train.checkpoint_every=1", "train.log_every=1", *extra, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def run_nodes(recipe, corpus, out, *extra, timeout=300) -> list[str]:
    port = free_port()
    nodes = [launch_node(recipe, corpus, out, port, *extra) for _ in range(2)]
    outputs = [n.communicate(timeout=timeout)[0] for n in nodes]
    for n, text in zip(nodes, outputs):
        assert n.returncode == 0, text[-3000:]
    return outputs


def checkpoint_step(out: Path) -> int:
    try:
        return int(load_checkpoint(out / CHECKPOINT)["position"]["step"])
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return 0


def worker_with_rank(agents: list[subprocess.Popen], rank: int) -> int | None:
    """The pid of the training process with global ``rank`` among the agents' children."""
    for agent in agents:
        for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
    return None


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {encoder: tdnn, options: {channels: 32, stats_channels: 64, embed_dim: 16}}\n"
                    "method: {name: moco, options: {queue_size: 64}}\n")
    return path


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_two_nodes_shard_gather_and_resume_after_a_rank_is_killed(recipe, corpus, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    port = free_port()
    agents = [launch_node(recipe, corpus, out, port, "train.epochs=1000") for _ in range(2)]
    try:
        deadline = time.time() + 240
        while checkpoint_step(out) < 3 and time.time() < deadline and all(a.poll() is None for a in agents):
            time.sleep(0.2)
        if checkpoint_step(out) < 3:
            ended = [a.communicate(timeout=60)[0][-2000:] for a in agents if a.poll() is not None]
            pytest.fail(f"the 2-node run wrote no checkpoint at step 3: {ended}")
        victim = worker_with_rank(agents, 3)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)  # one rank dies: the job ends on both nodes
        codes = [a.wait(timeout=120) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
    assert all(c != 0 for c in codes)
    killed_at = checkpoint_step(out)
    # 9 utterances, global batch 2 x 4 ranks: one step per epoch; end 3 epochs after the checkpoint, on a
    # step count that is not a multiple of 4 (so a queue fed by 2 of the 8 keys would not sit at 0)
    end = killed_at + 3 + ((killed_at + 3) % 4 == 0)
    run_nodes(recipe, corpus, out, f"train.epochs={end}", "--resume")
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["position"] == {"step": end, "epoch": end, "batch": 0}  # 9 // 8 = 1 step per epoch on 4 ranks
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    resumes = [r for r in logs if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["from_step"] == killed_at
    steps = [r["step"] for r in logs if "loss" in r]
    assert steps[-(end - killed_at):] == list(range(killed_at + 1, end + 1))  # each step after the resume once
    # the queue (clamped to 8 = the global batch: 9 utterances) takes 8 keys a step, all 4 ranks' 2 each
    assert ckpt["method"]["queue"].shape[0] == 8 and int(ckpt["method"]["queue_ptr"]) == 0
