"""`nanotune serve`: the engine behind an OpenAI-compatible HTTP API. Thin over nanotune.serve.run."""

from __future__ import annotations

import click

from nanotune.cli.options import MAX_LEN, MAX_SEQS, MAX_TP, SEED, allreduce_option


@click.command(name="serve")
@click.option("--model", required=True, help="Model preset (random weights) or a local Hugging Face checkpoint "
                                             "folder (its tokenizer, if present, serves text prompts).")
@click.option("--tp", type=click.IntRange(1, MAX_TP), default=1, show_default=True, help="Tensor-parallel GPUs.")
@allreduce_option()
@click.option("--plan", metavar="FILE|NAME", help="Pipeline plan (as for `nanotune bench --plan`).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", default="auto", show_default=True, help="auto | bfloat16 | float16 | float32")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Weights and unseeded sampling.")
@click.option("--max-num-batched-tokens", type=click.IntRange(1, MAX_LEN), help="Dense-batch token budget.")
@click.option("--max-num-seqs", type=click.IntRange(1, MAX_SEQS), help="Most requests running at once.")
@click.option("--max-model-len", type=click.IntRange(2, MAX_LEN), help="Context length (prompt + output).")
@click.option("--max-queued", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Requests waiting beyond --max-num-seqs before new ones get 503 + Retry-After.")
@click.option("--served-model-name", help="The name in /v1/models and in requests' `model`.")
@click.option("--tokenizer", type=click.Path(file_okay=False, exists=True),
              help="Local tokenizer folder [default: the model folder, if it has one].")
@click.option("--engine-in-thread", is_flag=True,
              help="Run the engine in a thread of the server process instead of its own process (the HTTP "
                   "side's Python then competes with the engine's step loop for one GIL).")
def command(**o):
    """Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics."""
    from nanotune.console import err_console
    from nanotune.serve.engine_process import EngineProcessError
    from nanotune.serve.run import ServeOptions, build_server, serve_forever

    host, port = o.pop("host"), o.pop("port")
    try:
        server = build_server(ServeOptions(**o))
    except EngineProcessError as e:  # the engine process printed its traceback; the run failed: exit 1
        err_console.print(f"[red]error:[/] {e}", highlight=False)
        raise SystemExit(1) from None
    text = "text and token-id prompts" if server.tokenizer is not None else "token-id prompts only: no tokenizer"
    pid = getattr(server.loop_thread, "pid", None)
    where = f"engine process {pid}" if pid else "engine in a thread"
    err_console.print(f"serving {server.model_name} on http://{host}:{port}/v1 ({text}; {where}); Ctrl-C stops",
                      highlight=False)
    serve_forever(server, host, port)
