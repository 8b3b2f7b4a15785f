"""`nanotune bench`: replay a trace through an engine and measure it.

    records.py   what a request is and what was measured about it
    requests.py  trace -> requests (prompt ids, forced lengths, arrival times)
    driver.py    one pass: arrivals, --max-concurrency, Ctrl-C, crashes
    backends/    in-process engine, Hugging Face peer, OpenAI-compatible endpoint
    metrics.py   vLLM `bench serve` metrics + nanotune's (stats.py, steady.py)
    runner.py    warm-up, rates x repeats -> one result dict
    session.py   the entry point behind the CLI: trace, peak, backend, run, write
    view.py      live view and final tables;  output.py  result.json + requests.csv

Heavy modules (torch, transformers, pandas) are imported where they are used, not here.
"""
