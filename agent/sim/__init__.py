"""A vLLM-compatible inference simulator: the OpenAI API, vLLM's metrics, and a timing model
of continuous batching, for development, tests and benchmarks without a GPU."""
