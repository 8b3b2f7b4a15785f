"""What serves the benchmark's requests: `base.Backend` and its three kinds (in-process engine, Hugging
Face transformers peer, OpenAI-compatible HTTP endpoint). Each module is imported only when chosen."""
