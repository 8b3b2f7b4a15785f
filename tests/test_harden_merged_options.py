"""Issue 18's validation layer over the options the serve, TP and bound branches added (bench --request-timeout,
--tp, the endpoint-only flags; serve's numeric options), and the reference profiles bench --gpu reads from the
installed package as search does."""

import pytest
from click.testing import CliRunner

from nanotune.cli import main
from nanotune.cli.options import MAX_TP

BAD = [
    (["--request-timeout", "nan"], "--request-timeout"),
    (["--request-timeout", "inf"], "--request-timeout"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--tp", "0"], "--tp"),
    (["--tp", str(MAX_TP + 1)], "--tp"),
    (["--endpoint-type", "chat"], "--endpoint-type"),
    (["--request-timeout", "5"], "--request-timeout"),
    (["--no-ignore-eos"], "--ignore-eos"),
    (["--api-key", "sk-x"], "--api-key"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bench_bad_or_conflicting_options_are_one_line(args, needle, tmp_path):
    res = CliRunner().invoke(main, ["bench", "--no-progress", "--results-dir", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and needle in res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith("error:")], res.output
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_tokenizer_without_endpoint_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--no-progress", "--results-dir", str(tmp_path / "r"),
                                    "--tokenizer", str(tmp_path)])
    assert res.exit_code == 2 and "--tokenizer applies to --endpoint" in res.output, res.output


def test_api_key_from_the_environment_does_not_block_an_in_process_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    res = CliRunner().invoke(main, ["bench", "--trace", "constant", "--input-len", "8", "--output-len", "2",
                                    "-n", "2", "--num-warmups", "0", "--no-progress", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "sk-from-env" not in next(tmp_path.glob("*/result.json")).read_text()


SERVE_BAD = [
    (["--seed", "-1"], "--seed"),
    (["--max-num-seqs", "99999999999"], "--max-num-seqs"),
    (["--max-num-batched-tokens", "99999999999"], "--max-num-batched-tokens"),
    (["--max-model-len", "99999999999"], "--max-model-len"),
    (["--tp", str(MAX_TP + 1)], "--tp"),
]


@pytest.mark.parametrize("args,needle", SERVE_BAD, ids=[" ".join(a) for a, _ in SERVE_BAD])
def test_serve_bad_values_are_one_line(args, needle):
    res = CliRunner().invoke(main, ["serve", "--model", "tiny-llama", "--device", "cpu", *args])
    assert res.exit_code == 2 and "Traceback" not in res.output and needle in res.output, res.output


def test_bench_gpu_peak_found_in_the_package_data(tmp_path, monkeypatch):
    """An installed package has no checkout's results/: bench --gpu reads the profiles shipped with it."""
    from nanotune.bench.reference_peak import reference_peak, reference_profiles
    from nanotune.search import resolve
    from nanotune.search.reference import PACKAGE_REFERENCE

    monkeypatch.setattr(resolve, "REPO_ROOT", tmp_path / "no-checkout")
    found = reference_profiles("h200", results_dir=str(tmp_path / "empty"))
    assert found and all(p.parent == PACKAGE_REFERENCE / "h200" for p in found)
    peak = reference_peak("h200", "llama-3-8b", results_dir=str(tmp_path / "empty"))
    assert peak.source == "reference" and peak.flops > 0 and found[0].parent.name in peak.label
