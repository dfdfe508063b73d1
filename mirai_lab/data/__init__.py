"""Image sets, the VQ tokenizer and cached token codes."""
