"""The generation engine: sampling, stopping, streaming, KV-cached generation, batching, decoding steps."""
