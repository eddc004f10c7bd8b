"""An OpenAI-compatible chat-completions server for CogVLM / CogAgent."""
