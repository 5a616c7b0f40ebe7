"""Smoke tests of the figure scripts (experiments/figures): the cheapest ones write a non-empty PNG,
and missing inputs give the 'skipped' exit code instead of a failure."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

FIGURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                       "figures")  # fmt: skip
sys.path.insert(0, FIGURES)

_common = importlib.import_module("_common")

BENCH_HEADER = ("problem,family,library,method,target_nfe,nfe,sliced_w2,noise_floor,"
                "logp_gap_nats_per_dim,ms_per_batch,compile_s,note")  # fmt: skip
BENCH_ROWS = [
    "2D,VP,diffjax,euler,5,5,0.40000,0.08000,-0.1,5.0,1.0,",
    "2D,VP,diffjax,euler,10,10,0.20000,0.08000,-0.1,5.0,1.0,",
    "2D,VP,diffjax,heun,10,9,0.10000,0.08000,-0.1,5.0,1.0,",
    "2D,VP,diffjax,heun,20,19,0.08500,0.08000,-0.1,5.0,1.0,",
    "2D,VP,diffjax,adaptive tsit5,tol 0.01,30,0.09000,0.08000,-0.1,9.0,2.0,",
    "2D,VP,diffusers,DDIM,10,10,0.15000,0.08000,-0.1,20.0,nan,",
    "2D,VP,diffusers,DDIM,20,20,nan,0.08000,nan,20.0,nan,non-finite samples",
    "2D,CondOT,flow_matching,euler,10,10,0.17000,0.08000,-0.1,9.0,nan,",
]


def figure(name: str):
    return importlib.import_module(name)


def assert_png(path: str) -> None:
    assert os.path.isfile(path) and path.endswith(".png")
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


def test_fig2_writes_png(tmp_path):
    mod = figure("fig2_sde_marginals")
    assert _common.run(mod.main, ["--out", str(tmp_path)]) == 0
    assert_png(str(tmp_path / "fig2_sde_marginals.png"))


def test_fig3_writes_png_or_skips_without_mnist(tmp_path):
    mod = figure("fig3_forward_noising")
    code = _common.run(mod.main, ["--out", str(tmp_path)])
    if code == _common.SKIPPED:
        pytest.skip("MNIST IDX files not available")
    assert code == 0
    assert_png(str(tmp_path / "fig3_forward_noising.png"))


def test_fig7_reads_the_benchmark_csv(tmp_path, capsys):
    csv = tmp_path / "samplers.csv"
    csv.write_text("\n".join([BENCH_HEADER, *BENCH_ROWS]) + "\n")
    mod = figure("fig7_error_vs_nfe")
    assert _common.run(mod.main, ["--out", str(tmp_path), "--csv", str(csv)]) == 0
    assert_png(str(tmp_path / "fig7_error_vs_nfe.png"))
    out = capsys.readouterr().out
    assert "2D VP: best diffjax sampler at NFE 10: heun" not in out  # heun ran at NFE 9
    assert "2D VP: best diffjax sampler at NFE 9: heun SW 0.1000" in out


@pytest.mark.parametrize(
    "name, argv, needle",
    [
        ("fig9_guidance_scales", ["--workdir", "no/such/workdir"], "mnist_cfg.py"),
        ("fig8_mnist_samples", ["--ddpm", "no/a", "--vp", "no/b", "--fm", "no/c"], "train.py"),
        ("fig6_trained_flow", ["--workdir", "no/such/workdir"], "make demo"),
        ("fig7_error_vs_nfe", ["--csv", "no/such.csv"], "bench/bench_samplers.py"),
        ("fig3_forward_noising", ["--data-dir", "no/such/dir"], "MNIST"),
    ],
)
def test_missing_inputs_are_skipped(tmp_path, capsys, name, argv, needle):
    mod = figure(name)
    assert _common.run(mod.main, ["--out", str(tmp_path), *argv]) == _common.SKIPPED
    err = capsys.readouterr().err
    assert err.startswith("skipped: ") and needle in err
    assert not list(tmp_path.iterdir())  # nothing written
