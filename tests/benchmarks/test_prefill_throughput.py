"""benchmarks/prefill_throughput.py at tiny dims on the CPU: every part runs and writes its rows (the timings
mean nothing here; the benchmark is for a GPU at Apriel-15B dims)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.prefill_throughput import main  # noqa: E402

TINY = ["--layers", "4", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "16", "--vocab", "97", "--device", "cpu", "--repeats", "1"]


def test_every_part_runs_at_tiny_dims_on_the_cpu(tmp_path):
    output = tmp_path / "rows.json"
    main([*TINY, "--part", "ttft", "serving", "prefix", "--profile-mamba-prefill", "--models", "teacher", "H1-40",
          "--prompts", "24", "40", "--chunk", "16", "--other-layout-prompts", "40",
          "--budget-gib", "0.002", "--reserve-gib", "0",
          "--serve-prompt", "20", "--serve-new", "4", "--serve-requests", "3",
          "--prefix-requests", "3", "--prefix-tokens", "19", "--suffix-tokens", "4", "--prefix-new", "3",
          "--block-size", "8", "--prefix-cache-gib", "0.0005", "--profile-lengths", "32", "--json", str(output)])
    rows = json.loads(output.read_text())["rows"]
    ttft = [row for row in rows if row["part"] == "ttft"]
    assert [(row["model"], row["prompt"], row["mode"], row["prefill_layout"]) for row in ttft] == [
        (model, prompt, mode, "token_major") for model in ("teacher", "H1-40") for prompt in (24, 40)
        for mode in ("unchunked", "chunked")
    ] + [("H1-40", 40, "chunked", "channel_major")]  # --other-layout-prompts: hybrids only
    assert all(row["seconds"] > 0 for row in ttft)
    serving = [row for row in rows if row["part"] == "serving"]
    assert len(serving) == 4 and all(row["requests"] == 3 and row["ttft_p99"] >= row["ttft_p50"] > 0
                                     for row in serving)
    prefix = {(row["model"], row["prefix_cache"]): row for row in rows if row["part"] == "prefix"}
    assert len(prefix) == 4
    for model in ("teacher", "H1-40"):
        assert prefix[model, False]["hit_tokens"] == 0
        assert prefix[model, True]["hit_tokens"] == 2 * 16  # the second and third prompt resume after 2 blocks
    profile = {row["prefill_layout"]: row for row in rows if row["part"] == "profile-mamba"}
    assert set(profile) == {"token_major", "channel_major"}
    for row in profile.values():
        assert row["tokens"] == 32 and all(row[f"{piece}_ms"] > 0 for piece in
                                           ("prefill", "prefill_chunked", "projections", "layout", "conv", "scan",
                                            "out_proj"))


def test_rows_are_appended_as_measured_with_the_run_record_and_skipped_past_the_allowance(tmp_path):
    """--jsonl keeps each row as it comes (a run cut short keeps what it measured), each with the command, the
    device, the versions and the date; a part past its --part-seconds writes its remaining rows as skipped."""
    output = tmp_path / "rows.jsonl"
    main(["--tiny", "--device", "cpu", "--repeats", "1", "--part", "ttft", "--models", "H1-40", "--prompts", "24",
          "40", "--chunk", "16", "--modes", "chunked", "--prefill-layout", "channel_major",
          "--part-seconds", "ttft=0", "--jsonl", str(output)])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(row["prompt"], row.get("skipped")) for row in rows] == [(24, "part time allowance spent"),
                                                                      (40, "part time allowance spent")]
    assert all(row["prefill_layout"] == "channel_major" for row in rows)
    run = rows[0]["run"]
    assert {"command", "device", "torch", "triton", "transformers", "date", "commit"} <= set(run)
    assert "--part-seconds" in run["command"] and run["torch"] == torch.__version__


def test_a_row_that_fails_is_recorded_and_the_next_row_runs(tmp_path, monkeypatch, capsys):
    """One failure must not cost a GPU run every later row: the row says what failed, the others are measured."""
    import benchmarks.prefill_throughput as benchmark

    measure = benchmark.ttft_row

    def fail_at_24(model, prompt, row, *rest):
        if len(prompt) == 24:
            raise RuntimeError("kernel failed")
        measure(model, prompt, row, *rest)

    monkeypatch.setattr(benchmark, "ttft_row", fail_at_24)
    output = tmp_path / "rows.jsonl"
    main(["--tiny", "--device", "cpu", "--repeats", "1", "--part", "ttft", "--models", "H1-40", "--prompts", "24",
          "40", "--chunk", "16", "--modes", "chunked", "--jsonl", str(output)])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows[0]["error"] == "RuntimeError: kernel failed" and "seconds" not in rows[0]
    assert rows[1]["prompt"] == 40 and rows[1]["seconds"] > 0
    assert "kernel failed" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels on the CPU)")
def test_the_scan_tile_rows_time_every_candidate(monkeypatch, tmp_path):
    """The profile's forward-scan tile rows (Triton only) on channel-major inputs, at tiny dims."""
    import benchmarks.prefill_throughput as benchmark
    from modeling_apriel_h1.ops import triton_backend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(benchmark, "SCAN_TILE_CANDIDATES", [(64, 1), (32, 1)])  # the interpreter is slow
    args = argparse.Namespace(**benchmark.TINY_DIMS, prefill_layout="channel_major", profile_repeats=1,
                              jsonl=None)
    model = benchmark.build("H1-40", args, device, 64, layer_types=["mamba", "attention"])
    rows = benchmark.Rows(args, device, [])
    benchmark.scan_tiles_rows(model.model.layers[0].mixer, triton_backend, 48, args, device, rows)
    assert [(row["chunk"], row["scan_ms"] > 0) for row in rows.rows] == [(64, True), (32, True)]
