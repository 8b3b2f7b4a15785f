"""guidellm (a third-party load generator) driving `nanotune serve` for a few requests.

    PYTHONPATH=. python scripts/guidellm_serve.py --guidellm /path/to/venv/bin/guidellm --out /tmp/gl
    PYTHONPATH=. python scripts/guidellm_serve.py --model /path/to/hf-checkpoint --rate 4 -n 8 --out $OUT

guidellm is not a test dependency: it pulls in a CUDA build of torch, datasets and pyarrow (gigabytes),
so it lives in its own virtual environment (`python -m venv gl && gl/bin/pip install guidellm`; tried
with guidellm 0.8.1). It makes synthetic text prompts with the model's tokenizer, so the server needs a
checkpoint folder with tokenizer files: by default a tiny random one made on the spot
(nanotune.serve.testing). Writes guidellm's own JSON and a summary (requests that succeeded, errored,
output tokens per request against the ones asked) with the environment to --out; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from nanotune.results import environment
from nanotune.results.store import write_json_atomic
from nanotune.serve.process import start_server
from nanotune.serve.run import free_port
from nanotune.serve.testing import save_tiny_chat_checkpoint

ROOT = Path(__file__).resolve().parents[1]  # the server process's PYTHONPATH: this checkout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder [env OUT]")
    ap.add_argument("--guidellm", default=shutil.which("guidellm") or "guidellm", help="the guidellm command")
    ap.add_argument("--model", help="checkpoint folder with a tokenizer [default: a tiny random one]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rate", type=float, default=4.0, help="constant request rate (req/s)")
    ap.add_argument("-n", "--num-requests", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--output-tokens", type=int, default=8)
    args = ap.parse_args()
    if not args.out:
        raise SystemExit("give --out DIR (or set $OUT)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(save_tiny_chat_checkpoint(out / "tiny-chat"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    port = free_port()
    server = start_server(model, args.device, port, env, 300, out / "serve.log")
    try:
        cmd = [args.guidellm, "run", "--backend", f"kind=openai_http,target=http://127.0.0.1:{port}",
               "--profile", f"kind=constant,rate={args.rate:g}",
               "--constraint", f"kind=max_requests,count={args.num_requests}",
               "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},"
                         f"output_tokens={args.output_tokens}",
               "--tokenizer", f"kind=hf_auto,model={model}",
               "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-progress"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (out / "guidellm.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"guidellm failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}")
    finally:
        server.terminate()
        server.wait(60)
    bench = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]
    made = bench["scheduler_metrics"]["requests_made"]
    outputs = bench["metrics"]["output_token_count"]
    summary = {"script": "scripts/guidellm_serve.py", "model": model, "rate": args.rate,
               "num_requests": args.num_requests, "requests_made": made,
               "output_tokens_asked": args.output_tokens,
               "output_tokens_per_request": {k: (outputs.get("successful") or {}).get(k)
                                             for k in ("count", "mean", "min", "max")},
               "environment": environment()}
    write_json_atomic(out / "guidellm_serve.json", summary)
    print(json.dumps({k: summary[k] for k in ("requests_made", "output_tokens_per_request")}))
    if made.get("errored") or made.get("successful") != args.num_requests:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
