"""Smoke tests of the figure modules (experiments.figures): the cheapest ones write a non-empty PNG,
and missing inputs give the 'skipped' exit code instead of a failure. The figures of trained models
(fig6: the checkerboard demo; fig8, fig9: MNIST checkpoints) are only checked for their skip."""

from __future__ import annotations

import importlib
import os

import pytest

from experiments.figures import _common

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


CHEAP = {"fig11_guidance": ["--quick"]}  # the figure's smoke-test mode (small n, few steps, 2D only)


def figure(name: str):
    return importlib.import_module(f"experiments.figures.{name}")


def assert_png(path: str) -> None:
    assert os.path.isfile(path) and path.endswith(".png")
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


@pytest.mark.parametrize(
    "name",
    [
        "fig1_euler_ou",
        "fig2_sde_marginals",
        pytest.param("fig4_langevin", marks=pytest.mark.slow),  # 5000 Langevin steps of 4000 particles
        "fig5_flow_matching",
        "fig10_weightings",
        "fig11_guidance",
    ],
)
def test_figure_of_the_library_alone_writes_png(tmp_path, name):
    mod = figure(name)
    assert _common.run(mod.main, ["--out", str(tmp_path), *CHEAP.get(name, [])]) == 0
    assert_png(str(tmp_path / f"{name}.png"))


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
        ("fig8_mnist_samples", ["--ddpm", "no/a", "--vp", "no/b", "--fm", "no/c"], "-m experiments.train"),
        ("fig6_trained_flow", ["--workdir", "no/such/workdir"], "make demo"),
        ("fig7_error_vs_nfe", ["--csv", "no/such.csv"], "bench/bench_samplers.py"),
        ("fig3_forward_noising", ["--data-dir", "no/such/dir"], "MNIST"),
        ("fig13_fewstep_mnist", ["--panels", "no/a:euler:1:x;no/b:flow_map:2:y"], "mnist_reflow"),
        ("fig14_learned_schedule", ["--workdir", "no/such/workdir"], "mnist_vdm.py"),
    ],
)
def test_missing_inputs_are_skipped(tmp_path, capsys, name, argv, needle):
    mod = figure(name)
    assert _common.run(mod.main, ["--out", str(tmp_path), *argv]) == _common.SKIPPED
    err = capsys.readouterr().err
    assert err.startswith("skipped: ") and needle in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_has_checkpoint_needs_a_step_directory_not_a_config(tmp_path):
    assert not _common.has_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert not _common.has_checkpoint(str(tmp_path))  # a config alone is no checkpoint
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "100.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save
    assert not _common.has_checkpoint(str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "checkpoints" / "100").mkdir()
    assert _common.has_checkpoint(str(tmp_path))  # config.json is not required


TRAINED = os.path.join(_common.ROOT, "outputs")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, argv",
    [
        ("fig6_trained_flow", ["--workdir", os.path.join(TRAINED, "demo"), "--num", "500"]),
        ("fig8_mnist_samples", ["--ddpm", os.path.join(TRAINED, "mnist_ddpm"), "--vp",
                                os.path.join(TRAINED, "mnist_vp"), "--fm", os.path.join(TRAINED, "mnist_fm"),
                                "--num", "4"]),  # fmt: skip
        ("fig9_guidance_scales", ["--workdir", os.path.join(TRAINED, "mnist_cfg"), "--scales", "0", "2",
                                  "--per-digit", "1"]),  # fmt: skip
    ],
)
def test_figure_of_a_trained_model_writes_png_or_is_skipped(tmp_path, capsys, name, argv):
    """The figures of trained models run on the checkpoints of `make demo` / the MNIST configs when
    they exist; without them the figure reports itself skipped (and so does this test)."""
    mod = figure(name)
    code = _common.run(mod.main, ["--out", str(tmp_path), *argv])
    if code == _common.SKIPPED:
        pytest.skip(capsys.readouterr().err.strip())
    assert code == 0
    assert_png(str(tmp_path / f"{name}.png"))
