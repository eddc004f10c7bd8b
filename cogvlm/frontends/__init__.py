"""What users run on top of the engine and `cogvlm.api`: the chat loop, the web demo, the OpenAI-compatible
server, the benchmarks and the grounding output. Arrows run downward only: nothing below imports this."""
