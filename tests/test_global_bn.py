"""Batch norm over the global batch (models.global_bn) and which methods use it under DDP: against plain
BatchNorm in one process, and in two gloo processes against one process holding both ranks' batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TinyEncoder
from sslspeaker.methods import build_method
from sslspeaker.models.global_bn import GlobalBatchNorm, convert_to_global_bn

N_MELS, FRAMES = 6, 10
OPTIONS = {"simclr": {}, "dino": {"out_dim": 16, "hidden_dim": 12, "bottleneck_dim": 6}, "moco": {"queue_size": 16}}


def feats(batch: int, views: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, FRAMES, generator=torch.Generator().manual_seed(seed))


def test_one_process_is_plain_batch_norm():
    torch.manual_seed(0)
    plain = nn.BatchNorm1d(5, momentum=0.3)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    converted = convert_to_global_bn(nn.Sequential(nn.Identity(), plain), torch.device("cpu"))[1]
    assert isinstance(converted, GlobalBatchNorm)
    plain = nn.BatchNorm1d(5, momentum=0.3).train()
    plain.load_state_dict(converted.state_dict())
    x = torch.randn(7, 5, 4)
    torch.testing.assert_close(converted(x), plain(x))
    torch.testing.assert_close(converted.running_var, plain.running_var)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out = {}
        for name, options in OPTIONS.items():
            torch.manual_seed(0)
            m = build_method(name, TinyEncoder(), **options)
            if m.sync_batchnorm:  # as the trainer does before wrapping the method in DDP
                convert_to_global_bn(m, torch.device("cpu"))
            m(feats(4, seed=30 + rank))
            out[name] = m.encoder.bn.running_mean.clone()
        torch.manual_seed(1)
        bn = convert_to_global_bn(nn.BatchNorm1d(3), torch.device("cpu"))
        x = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(rank)).requires_grad_()
        (bn(x) * (rank + 1.0)).square().sum().backward()
        out.update(x_grad=x.grad, w_grad=bn.weight.grad, running_var=bn.running_var)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("global_bn")
    mp.start_processes(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True, start_method="fork")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def test_simclr_and_dino_normalise_with_the_global_batch_and_moco_does_not(ranks):
    """Running means after one step: equal on both ranks for SimCLR and DINO, and equal to one process
    holding both ranks' batches; MoCo keeps each rank's own (its shuffle BN groups stay apart)."""
    for name in ("simclr", "dino"):
        torch.manual_seed(0)
        whole = build_method(name, TinyEncoder(), **OPTIONS[name])
        whole.encoder(torch.cat([feats(4, seed=30 + r).transpose(0, 1).flatten(0, 1) for r in range(2)]))
        torch.testing.assert_close(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], whole.encoder.bn.running_mean, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ranks[0]["moco"], ranks[1]["moco"], atol=1e-4)


def test_gradients_flow_through_the_global_statistics(ranks):
    """Each rank's input gradient equals that of one process with both batches and the summed loss."""
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(3)
    xs = [torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(r)).requires_grad_() for r in range(2)]
    y = bn(torch.cat(xs))
    sum(((y[5 * r:5 * (r + 1)]) * (r + 1.0)).square().sum() for r in range(2)).backward()
    for r in range(2):
        torch.testing.assert_close(ranks[r]["x_grad"], xs[r].grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ranks[0]["w_grad"] + ranks[1]["w_grad"], bn.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ranks[0]["running_var"], bn.running_var)
