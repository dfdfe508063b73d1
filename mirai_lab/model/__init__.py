"""The LlamaGen-compatible class-conditional GPT."""
