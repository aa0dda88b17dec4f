"""Load a saved directory with trust_remote_code=True in a fresh process where the package cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch


def assert_remote_code_reproduces(model_dir: Path, ids: torch.Tensor, expected_logits: torch.Tensor, work: Path) -> None:
    """The directory loads as remote code (not our installed classes), gives ``expected_logits`` and generates."""
    torch.save({"ids": ids, "expected": expected_logits}, work / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_apriel_h1"] = None  # the package is not importable in this process
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(work / "io.pt")!r})
        with torch.no_grad():
            logits = model(io["ids"]).logits
            generated = model.generate(io["ids"], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(logits, io["expected"]), (logits - io["expected"]).abs().max()
        assert generated.shape == (io["ids"].shape[0], io["ids"].shape[1] + 4)
        print("remote-code-ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert "remote-code-ok" in result.stdout, result.stderr[-3000:]
