"""The production path end to end: experiments/train.py and experiments/sample.py as users run them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")


def run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_checkerboard_train_resume_and_sample(tmp_path):
    workdir = str(tmp_path / "fm")
    common = ["--config", os.path.join(ROOT, "experiments/configs/checkerboard_fm.py"),
              "--workdir", workdir, "--config.train.warmup_steps=10",
              "--config.train.checkpoint_every=400", "--config.train.log_every=50",
              "--config.model.kwargs.width=128", "--config.sample.num_samples=500",
              "--config.sample.num_steps=8"]  # fmt: skip
    out = run("train.py", *common, "--config.train.num_steps=800")
    assert "of samples on the checkerboard's squares" in out
    frac = float(out.split("% of samples")[0].split()[-1])
    assert frac > 60.0  # N(0, I) noise gives ~40%; the data gives 100%
    # rerunning with more steps resumes from the last checkpoint (step 800), not from scratch
    out = run("train.py", *common, "--config.train.num_steps=900")
    assert "start_step=800" in out
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == sorted(steps) and steps[-1] == 900
    assert os.path.exists(os.path.join(workdir, "samples.png"))
    out = run("sample.py", "--workdir", workdir, "--sampler", "dpm_solver_pp", "--steps", "10",
              "--num", "256")
    assert "step 900" in out
    samples = np.load(os.path.join(workdir, "sample_dpm_solver_pp_10.npz"))["samples"]
    assert samples.shape == (256, 2) and np.all(np.isfinite(samples))
    # evaluation against the data's generator: distances with floors, exact NLL vs −log p_data = log 6
    results = str(tmp_path / "results_2d.json")
    run("evaluate_2d.py", "--workdirs", workdir, "--samplers", "euler:8,heun:4", "--num", "500",
        "--nll_examples", "64", "--out", results)  # fmt: skip
    rows = [json.loads(line) for line in open(results)]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("euler", 8), ("heun", 7)]
    for r in rows:
        assert r["train_steps"] == 900 and r["on_support"] > 0.6 and 0 < r["sliced_w2_floor"] < 0.2
        assert r["data_nll_nats"] == pytest.approx(np.log(6.0), rel=1e-6)
        assert r["kl_nats"] > -3 * r["kl_se"]  # Gibbs: E[log p_data − log p_model] = KL ≥ 0


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")
def test_mnist_class_conditional_tiny_run_with_guided_sampling(tmp_path):
    workdir = str(tmp_path / "mnist")
    run("train.py", "--config", os.path.join(ROOT, "experiments/configs/mnist_cfg.py"),
        "--workdir", workdir, f"--config.data.data_dir={MNIST}", "--config.data.num_examples=256",
        "--config.train.num_steps=3", "--config.train.warmup_steps=1", "--config.train.batch_size=16",
        "--config.train.checkpoint_every=3", "--config.train.sample_every=0",
        "--config.model.kwargs.channels=8", "--config.model.kwargs.num_res_blocks=1",
        "--config.sample.num_steps=2", "--config.sample.num_samples=10")  # fmt: skip
    out = run("sample.py", "--workdir", workdir, "--sampler", "euler", "--steps", "2",
              "--guidance", "3.0", "--labels", "0,1,2,3,4,5,6,7,8,9", "--num", "10")
    assert "step 3" in out
    data = np.load(os.path.join(workdir, "sample_euler_2.npz"))
    assert data["samples"].shape == (10, 28, 28, 1)
    assert list(data["labels"]) == list(range(10))
    assert os.path.getsize(os.path.join(workdir, "sample_euler_2.png")) > 0
    results = str(tmp_path / "results.json")
    out = run("evaluate.py", "--workdirs", workdir, "--samplers", "euler:2,euler:2:0", "--num", "20",
              "--bpd_examples", "2", "--bpd_solver", "heun", "--bpd_steps", "2", "--data_dir", MNIST,
              "--classifier_steps", "20",
              "--cache_dir", str(tmp_path / "cache"), "--out", results)  # fmt: skip
    rows = [json.loads(line) for line in open(results)]
    assert [(r["sampler"], r["guidance_scale"]) for r in rows] == [("euler", 2.0), ("euler", 0.0)]
    for r in rows:
        assert r["train_steps"] == 3 and np.isfinite(r["fd_mnist"]) and r["fd_mnist"] > 0
        assert 0 <= r["conditional_accuracy"] <= 1 and sum(r["class_histogram"]) == pytest.approx(1, abs=0.01)
        assert 0 < r["bits_per_dim"] < 20
    assert "| mnist | euler |" in out
    assert 0 <= rows[0]["class_tv"] <= 1
    table = run("evaluate.py", "--table", results)
    assert table.count("| mnist | euler |") == 2  # one row per guidance scale
