"""Named offline model assets and loaders for Hugging Face ids and local paths."""
