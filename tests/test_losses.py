"""The contrastive loss: shapes, each negative source switchable, and the gradient path of the
negatives shared across workers (2 gloo processes, no Ray)."""

import os
import socket

import pytest
import torch
import torch.nn.functional as F

from hiea_ray.core.losses import contrastive_loss, gather_with_grad, world_scale


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_in_batch_equals_explicit_cross_entropy():
    s, t = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    loss = contrastive_loss(s, t, temperature=0.1, cross_device=False)
    ref = F.cross_entropy(s @ t.T / 0.1, torch.arange(8))
    assert torch.allclose(loss, ref)


def test_hard_negatives_add_columns_and_raise_the_loss():
    s, t = _unit(4, 8, seed=3), _unit(4, 8, seed=4)
    hard = _unit(4, 5, 8, seed=5)
    with_hard = contrastive_loss(s, t, hard, temperature=0.1)
    logits = torch.cat([s @ t.T, torch.einsum("bd,bnd->bn", s, hard)], 1) / 0.1
    assert torch.allclose(with_hard, F.cross_entropy(logits, torch.arange(4)))
    assert with_hard > contrastive_loss(s, t, None, temperature=0.1)


def test_without_in_batch_only_positive_and_hard():
    s, t = _unit(4, 8, seed=6), _unit(4, 8, seed=7)
    hard = _unit(4, 3, 8, seed=8)
    loss = contrastive_loss(s, t, hard, temperature=0.2, in_batch=False)
    logits = torch.cat([(s * t).sum(-1, keepdim=True), torch.einsum("bd,bnd->bn", s, hard)], 1) / 0.2
    assert torch.allclose(loss, F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))
    # no negatives at all: the positive is the only logit, the loss is exactly 0
    assert contrastive_loss(s, t, None, in_batch=False).item() == pytest.approx(0.0, abs=1e-6)


def test_symmetric_averages_both_directions():
    s, t = _unit(6, 8, seed=9), _unit(6, 8, seed=10)
    a = F.cross_entropy(s @ t.T / 0.05, torch.arange(6))
    b = F.cross_entropy(t @ s.T / 0.05, torch.arange(6))
    assert torch.allclose(contrastive_loss(s, t, symmetric=True), (a + b) / 2)


def test_gather_without_process_group_is_identity():
    x = _unit(3, 4)
    y, off = gather_with_grad(x)
    assert y is x and off == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, s_all, t_all, h_all, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = s_all.shape[0] // world
    rows = slice(rank * b, (rank + 1) * b)
    s = s_all[rows].clone().requires_grad_(True)
    t = t_all[rows].clone().requires_grad_(True)
    h = h_all[rows].clone().requires_grad_(True)
    loss = contrastive_loss(s, t, h, temperature=0.1, cross_device=True)
    assert world_scale(True) == world
    (loss * world_scale(True)).backward()
    out[rank] = (loss.detach(), s.grad.clone(), t.grad.clone(), h.grad.clone())
    dist.destroy_process_group()


def test_cross_device_negatives_match_the_single_process_global_batch():
    """Each worker's loss is the global batch's loss; the workers' gradients, which flow through
    their local rows only, add up to the single-process gradient of the global batch."""
    world, b = 2, 4
    s_all, t_all = _unit(world * b, 8, seed=11), _unit(world * b, 8, seed=12)
    h_all = _unit(world * b, 3, 8, seed=13)
    manager = torch.multiprocessing.Manager()
    out = manager.dict()
    torch.multiprocessing.spawn(_worker, args=(world, _free_port(), s_all, t_all, h_all, out), nprocs=world, join=True)
    s = s_all.clone().requires_grad_(True)
    t = t_all.clone().requires_grad_(True)
    h = h_all.clone().requires_grad_(True)
    full = contrastive_loss(s, t, h, temperature=0.1)  # no process group: one process
    full.backward()
    for rank in range(world):
        rows = slice(rank * b, (rank + 1) * b)
        loss, gs, gt, gh = out[rank]
        assert torch.allclose(loss, full.detach(), atol=1e-6)
        # Each worker back-propagates W x loss through its own rows; DDP's mean over workers of
        # these parameter gradients is then exactly the single-process gradient.
        assert torch.allclose(gs, world * s.grad[rows], atol=1e-5)
        assert torch.allclose(gt, world * t.grad[rows], atol=1e-5)
        assert torch.allclose(gh, world * h.grad[rows], atol=1e-5)
        assert gt.abs().sum() > 0
