"""`nanotune search --model llama-70b --tp 8 --gpu h200` on any machine, from the committed H200 profile."""

import json
from pathlib import Path

from click.testing import CliRunner

from engine.tuned import load_tuned
from nanotune.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "h200"


def test_search_llama_70b_tp8_from_committed_reference_profile(tmp_path):
    assert (REFERENCE / "profile-llama-3-70b-tp8.json").is_file()
    r = CliRunner().invoke(main, ["search", "--model", "llama-70b", "--tp", "8", "--gpu", "h200",
                                  "--trace", "sharegpt", "--n-trials", "12", "--results-dir", str(tmp_path),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "llama-70b -> llama-3-70b" in r.output
    [result] = list(tmp_path.glob("*-search-*/result.json"))
    res = json.loads(result.read_text())
    assert res["tp"] == 8 and res["best"]["total_token_throughput"] > 0
    plan = load_tuned(result.parent / "tuned.json").plan  # what bench --plan takes
    plan.validate(num_sms=132)
