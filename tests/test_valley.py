"""The narrowing valley: landscape, toy optimizers against the real classes, the spec's spot values."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch

from hf_foco import valley
from hf_foco.cli import main as cli
from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum


def test_gradient_is_the_autograd_gradient_of_the_loss():
    p = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    a = torch.logspace(-1, 3, 5, dtype=torch.float64)[:, None]
    valley.valley_loss(p, a).sum().backward()
    torch.testing.assert_close(valley.valley_grad(p.detach(), a), p.grad)


def test_loss_on_the_valley_floor_is_minus_c_times_distance():
    x = torch.tensor([0.5, 2.0, 7.0])
    floor = torch.stack((x * math.cos(math.pi / 6), x * math.sin(math.pi / 6)))  # y = 0
    torch.testing.assert_close(valley.valley_loss(floor, 1000.0), -0.1 * x)


def test_noise_multiplies_each_p_coordinate_independently():
    sigma, n = 0.5, 20000
    p = torch.tensor([0.3, -0.7])[:, None].expand(2, n).contiguous()
    ratio = valley.noisy_grad(p, 10.0, sigma, torch.Generator().manual_seed(0)) / valley.valley_grad(p, 10.0)
    torch.testing.assert_close(ratio.mean(dim=1), torch.ones(2), atol=0.02, rtol=0)  # se 0.0035
    torch.testing.assert_close(ratio.std(dim=1), torch.full((2,), sigma), atol=0.02, rtol=0)
    assert abs(torch.corrcoef(ratio)[0, 1]) < 0.05


SPREAD_OMEGA = torch.tensor([[0.0], [0.1], [0.4]])
TOY = valley.TOY_OPTIMIZERS
# (toy optimizer, class it must equal cell by cell, class kwargs, per-cell weight decay)
CASES = {
    "adam": (TOY["adam"], torch.optim.AdamW, dict(betas=(0.9, 0.999), eps=1e-8), SPREAD_OMEGA),
    "signum": (TOY["signum"], Signum, dict(momentum=0.9), SPREAD_OMEGA),
    "lion": (TOY["lion"], Lion, dict(betas=(0.9, 0.99)), SPREAD_OMEGA),
    "focus": (TOY["focus"], FOCUS, dict(betas=(0.9, 0.9), gamma=0.2), SPREAD_OMEGA),
    "foco": (TOY["foco"], FOCUS16bit, dict(betas=(0.9, 0.9), gamma=0.2), torch.full((3, 1), 0.2)),
    # The spec's toy FOCUS: without decay it is the FOCUS class; with gamma = 0 it is Signum, decay included
    # (so its decay is omega * p of the pre-step p, "inside the same step").
    "focus-toy-no-decay": (TOY["focus-toy"], FOCUS, dict(betas=(0.9, 0.9), gamma=0.2), torch.zeros(3, 1)),
    "focus-toy-gamma0": (dataclasses.replace(TOY["focus-toy"], hyper=dict(TOY["focus-toy"].hyper, gamma=0.0)),
                         Signum, dict(momentum=0.9), SPREAD_OMEGA),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_toy_step_is_the_optimizer_class_per_cell(case):
    """One batched tensor of 3 cells with their own weight decay moves as 3 instances of the class."""
    toy, cls, kwargs, omega = CASES[case]
    lr, cells, reps = 0.05, 3, 4
    a, sigma = torch.tensor([[1.0], [10.0], [100.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    p = torch.randn(2, cells, reps, generator=torch.Generator().manual_seed(1))
    params = [p[:, c].clone() for c in range(cells)]
    opts = [cls([q], lr=lr, weight_decay=float(omega[c]), **kwargs) for c, q in enumerate(params)]
    state, generator = toy.init_state(p), torch.Generator().manual_seed(2)
    for _ in range(40):
        g = valley.noisy_grad(p, a, sigma, generator)
        for c, (q, opt) in enumerate(zip(params, opts, strict=True)):
            q.grad = g[:, c].clone()
            opt.step()
        toy.step(p, g, state, lr, float(omega[0]) if toy.decay == "rule" else omega)
        for c, q in enumerate(params):
            torch.testing.assert_close(p[:, c], q, rtol=1e-5, atol=1e-6)


def test_rule_decay_optimizer_refuses_several_omegas_in_one_call():
    p0 = torch.zeros(2, 2, 1)
    with pytest.raises(ValueError, match="one omega per block"):
        valley.simulate("foco", p0, 1.0, 0.0, torch.tensor([[0.1], [0.2]]), 0.01, 1, torch.Generator())


# The reduced grid: sigma x a at omega = 0.1, holding all six cells of the spec's table. The spec's 50
# replicates and 1000 steps; its lr grid up to 0.04 (11 of 20 values), which holds every best lr of the
# table (``hf-foco valley --spot_check`` searches all 20); the tests check that no best lr is the largest.
REDUCED = valley.Panel("a", [0.0, 1.0, 2.0, 2.5, 3.0], [0.1, 10.0, 1000.0], 0.1)
REDUCED_LRS = torch.logspace(-3, 0, 20, dtype=torch.float64)[:11].tolist()


@pytest.fixture(scope="module")
def reduced_grid():
    results = valley.sweep(REDUCED.cells(), valley.SPOT_OPTIMIZERS, REDUCED_LRS, replicates=50, steps=1000)
    return valley.best_over_lr(results, REDUCED_LRS)


def _cell_index(a: float, sigma: float) -> int:
    return REDUCED.ys.index(a) * len(REDUCED.sigmas) + REDUCED.sigmas.index(sigma)


@pytest.mark.slow
def test_spot_cells_reproduce_the_spec_table(reduced_grid):
    """The spec's values come from an independent run with as many replicates, so measured - spec has a
    standard error of about sqrt(2)*se; 4 of those is the tolerance (a false alarm about once in 10^4
    comparisons, ignoring the small bias of taking a minimum over learning rates)."""
    for (a, omega, sigma), spec in valley.SPEC_SPOT_VALUES.items():
        assert omega == REDUCED.fixed
        k = _cell_index(a, sigma)
        for name, expected in zip(valley.SPOT_OPTIMIZERS, spec, strict=True):
            got, se = reduced_grid[name]["score"][k].item(), reduced_grid[name]["stderr"][k].item()
            assert reduced_grid[name]["lr"][k] < REDUCED_LRS[-1], "truncated lr grid decided the score"
            assert abs(got - expected) <= 4 * math.sqrt(2) * se, ((a, sigma), name, got, se, expected)


@pytest.mark.slow
def test_reduced_grid_phase_diagram(reduced_grid, tmp_path):
    """Adam wins without noise; a sign method wins at sigma = 3 in the a = 10 and flat valleys; the CSV
    holds one row per cell and optimizer and its winner column is the lowest score."""
    rows = valley.summary_rows(REDUCED, reduced_grid)
    valley.write_csv(rows, tmp_path / "v.csv")
    valley.plot_winner_map(REDUCED, reduced_grid, tmp_path / "v.png", "test")
    with open(tmp_path / "v.csv") as f:
        read = list(csv.DictReader(f))
    n_cells, n_opt = len(REDUCED.sigmas) * len(REDUCED.ys), len(valley.SPOT_OPTIMIZERS)
    assert len(read) == n_cells * n_opt and (tmp_path / "v.png").stat().st_size > 1000
    winner = {}
    for k in range(n_cells):
        cell = read[n_opt * k:n_opt * (k + 1)]
        assert cell[0]["winner"] == min(cell, key=lambda r: float(r["mean_final_loss"]))["optimizer"]
        winner[(round(float(cell[0]["a"]), 3), float(cell[0]["sigma"]))] = cell[0]["winner"]
    assert winner[(10.0, 0.0)] == "adam"
    assert winner[(10.0, 3.0)] in ("signum", "focus-toy")
    assert winner[(0.1, 3.0)] in ("signum", "focus-toy")
    for a, sigma in ((10.0, 0.0), (10.0, 3.0), (0.1, 3.0)):
        assert all(reduced_grid[n]["lr"][_cell_index(a, sigma)] < REDUCED_LRS[-1] for n in reduced_grid)


def run_cli(argv: list[str]) -> int:
    return cli(["valley", *argv])


def test_cli_runs_foco_on_the_omega_panel(tmp_path):
    """foco's decay lives inside its rule, so the omega panel is simulated one omega at a time."""
    assert run_cli(["--preset", "quick", "--panels", "omega", "--n_sigma", "3", "--n_lr", "3", "--steps",
                    "100", "--optimizers", "signum", "foco", "--workers", "1",
                    "--output_dir", str(tmp_path)]) == 0
    with open(tmp_path / "valley.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 5 * 2 and {round(float(r["best_lr"]), 6) for r in rows} <= {0.001, 0.031623, 1.0}
    assert sorted({float(r["omega"]) for r in rows}) == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert all(math.isfinite(float(r["mean_final_loss"])) for r in rows)
    assert (tmp_path / "valley_sigma_omega.png").exists()


@pytest.mark.slow
def test_worker_processes_give_the_same_numbers():
    cells = valley.make_cells(torch.tensor([1.0, 10.0, 100.0]), 0.1, torch.tensor([0.0, 1.0, 3.0]))
    run = dict(replicates=4, steps=50, block_elements=16)  # 2 cells per block: 2 blocks
    one = valley.sweep(cells, ["signum", "adam"], [0.01, 0.1], workers=1, **run)
    two = valley.sweep(cells, ["signum", "adam"], [0.01, 0.1], workers=2, **run)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=0)


def test_cli_rejects_a_single_replicate():
    with pytest.raises(SystemExit, match="replicates"):
        run_cli(["--preset", "quick", "--replicates", "1"])
