"""Diffusion building blocks: correlated noise (eq. 2), deterministic DDIM, state round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellsynth.diffusion.core import (
    DiffusionConfig,
    build_unet,
    correlated_noise,
    ddim_sample,
    diffusion_loss,
    load_optimizer,
    make_sampler,
    make_train_scheduler,
    save_optimizer,
    tiled_forward,
)

TINY = DiffusionConfig(
    sample_size=16, cond_channels=2, widths=(8, 16), attention=(False, False), norm_num_groups=4
)


@pytest.mark.parametrize("rho", [0.0, 1.0, 3.0])
def test_correlated_noise_has_unit_variance_and_the_paper_correlation(rho):
    g = torch.Generator().manual_seed(0)
    x = correlated_noise(2, (64, 64, 64), rho, generator=g)
    assert float(x.std()) == pytest.approx(1.0, abs=0.02)
    corr = float(np.corrcoef(x[0].ravel(), x[1].ravel())[0, 1])
    assert corr == pytest.approx(rho**2 / (1 + rho**2), abs=0.02)


def test_ddim_with_eta_zero_is_deterministic():
    unet = build_unet(TINY).eval()
    sampler = make_sampler(make_train_scheduler(TINY))
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = torch.ones(2, 2, 16, 16)
    a = ddim_sample(unet, sampler, noise, cond, steps=4)
    b = ddim_sample(unet, sampler, noise.clone(), cond, steps=4)
    assert torch.equal(a, b)
    c = ddim_sample(unet, sampler, noise + 0.5, cond, steps=4)
    assert not torch.equal(a, c)


def test_the_unipc_sampler_is_deterministic_and_closer_to_the_converged_sample_than_ddim():
    unet = build_unet(TINY).eval()
    sampler = make_sampler(make_train_scheduler(TINY), "unipc")
    assert type(sampler).__name__ == "UniPCMultistepScheduler"
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = torch.ones(2, 2, 16, 16)
    a = ddim_sample(unet, sampler, noise, cond, steps=5)
    b = ddim_sample(unet, sampler, noise.clone(), cond, steps=5)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # both solve the same ODE: 200 DDIM steps are the reference; in 5 steps UniPC gets closer
    ddim = make_sampler(make_train_scheduler(TINY))
    ref = ddim_sample(unet, ddim, noise, cond, steps=200)
    few = ddim_sample(unet, ddim, noise, cond, steps=5)
    assert (a - ref).abs().mean() < 0.5 * (few - ref).abs().mean()
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler(make_train_scheduler(TINY), "euler")


def test_tiled_forward_covers_the_canvas_and_matches_in_one_tile():
    unet = build_unet(TINY).eval()
    x = torch.randn(1, 3, 48, 40)
    t = torch.tensor([10])
    with torch.inference_mode():
        full = unet(x, t).sample
        same = tiled_forward(unet, x, t, tile=64, overlap=8)
        tiled = tiled_forward(unet, x, t, tile=16, overlap=8)
    assert torch.equal(full, same)
    assert tiled.shape == full.shape
    assert torch.isfinite(tiled).all()


def test_training_loss_decreases_on_a_constant_target():
    torch.manual_seed(0)
    unet = build_unet(TINY)
    sched = make_train_scheduler(TINY)
    opt = torch.optim.Adam(unet.parameters(), 3e-3)
    x0 = torch.ones(8, 1, 16, 16) * 0.5
    cond = torch.zeros(8, 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = diffusion_loss(unet, sched, x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    unet = build_unet(TINY)
    opt = torch.optim.AdamW(unet.parameters(), 1e-3)
    unet(torch.randn(1, 3, 16, 16), torch.tensor([1])).sample.mean().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "opt", {"step": 1})
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))
    opt2 = torch.optim.AdamW(unet.parameters(), 1e-3)
    meta = load_optimizer(opt2, tmp_path / "opt")
    assert meta["step"] == 1
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert torch.equal(s1[0]["exp_avg"], s2[0]["exp_avg"])
