"""Evaluation: perplexity, accuracy, agreement with the dense model."""
