"""The benchmark's pieces work and measure what they claim (no speed is asserted: that is bench's job)."""

from __future__ import annotations

import torch

from ganaug.bench import TARGETS, format_table
from ganaug.bench.train_speed import ReferenceLoop, compare, reference_networks
from ganaug.models.article import ArticleDiscriminator, ArticleGenerator


def test_reference_loop_trains_the_seed_networks():
    images = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    loop = ReferenceLoop(images, batch_size=128)
    before_g = [p.detach().clone() for p in loop.G.parameters()]
    before_d = [p.detach().clone() for p in loop.D.parameters()]
    loop.step()
    assert all(not torch.equal(a, b) for a, b in zip(before_d, loop.D.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, loop.G.parameters()))


def test_the_reference_networks_are_the_seed_networks():
    def shapes(module):
        return sorted(tuple(p.shape) for p in module.parameters())

    G, D = reference_networks(z_dim=100, channels=1)
    assert shapes(G) == shapes(ArticleGenerator(100, 0, 1, 0))
    assert shapes(D) == shapes(ArticleDiscriminator(0, 1))
    assert G(torch.randn(2, 100)).shape == (2, 1, 28, 28) and D(torch.randn(2, 1, 28, 28)).shape == (2, 1)


def test_compare_alternates_contenders_and_reports_medians():
    calls = []
    speeds = compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, batch_size=4, steps=2, rounds=3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # one warm-up each, then alternating rounds
    assert set(speeds) == {"a", "b"} and all(v > 0 for v in speeds.values())


def test_table_marks_targets_met_and_missed():
    table = format_table({"train_speedup_vs_reference": 2.5, "sampler_cold_start_s": 1.7,
                          "sampler_ort_vs_torch_by_variant": {"int8": 7.0}})
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert lines["train_speedup_vs_reference"].endswith(">= 2.0  met")
    assert lines["sampler_cold_start_s"].endswith("<= 1.0  MISSED")
    assert "ort int8 vs torch eager fp32" in table
    assert set(TARGETS) <= {"train_speedup_vs_reference", "ddp_scaling_efficiency", "sampler_ort_vs_torch",
                            "sampler_ort_vs_torch_best", "sampler_end_to_end_fraction", "sampler_cold_start_s",
                            "sampler_rss_growth"}


def test_sampler_memory_and_cold_start_probes(tmp_path):
    from onnx_models import make_model

    from ganaug.bench.sample_speed import peak_rss_mb, time_to_first_image

    model = make_model(tmp_path / "m.onnx")
    assert 10 < peak_rss_mb(model, tmp_path / "a", 64) < 2000  # the sampler process alone, in MB
    assert 0 < time_to_first_image(model, tmp_path / "b") < 60
    assert len(list((tmp_path / "b").glob("*/*.png"))) == 1


def test_end_to_end_fractions_write_both_formats_and_compare_with_generation(tmp_path):
    from onnx_models import make_model

    from ganaug.bench.sample_speed import BATCH, end_to_end_fractions
    from ganaug.sampler import Sampler

    sampler = Sampler.load(make_model(tmp_path / "m.onnx", class_names=["a", "b"]), provider="cpu")
    fractions = end_to_end_fractions(sampler, tmp_path, BATCH, num_classes=2, rounds=2)
    assert set(fractions) == {"png", "npz"} and all(0 < value < 100 for value in fractions.values())
    for round_ in range(2):  # every round writes a complete set of its own
        assert len(list((tmp_path / f"e2e_png_{round_}").glob("*/*.png"))) == BATCH
        assert len(list((tmp_path / f"e2e_npz_{round_}").glob("shard_*.npz"))) == 1


def test_an_unwritable_out_is_refused_before_any_measurement(tmp_path, capsys, monkeypatch):
    import ganaug.bench.peak as peak
    from ganaug.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark started although --out cannot be written")

    monkeypatch.setattr(peak, "bench_peaks", must_not_run)
    (tmp_path / "notes.txt").write_text("precious")
    assert main(["bench", "--out", str(tmp_path / "notes.txt" / "bench.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path)]) == 2  # a directory, not a file
    assert "is a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_training_is_measured_at_the_precision_auto_picks(tmp_path):
    """Where auto picks fp32 (a CPU without bf16 units), bf16 is neither timed nor reported: emulated,
    it ran for over 20 minutes on an AVX2-only machine and measured nothing a user would run."""
    from ganaug.bench.train_speed import bench_training

    results = bench_training(tmp_path, steps=1, rounds=1, precision="fp32")
    assert results["train_precision"] == "fp32" and set(results["train_images_per_sec"]) == {"reference", "ganaug"}
    assert "bf16_speedup_vs_fp32" not in results and results["train_speedup_vs_reference"] > 0
    assert format_table(results).splitlines()[1].split() == ["training", "precision", "(auto)", "fp32"]
