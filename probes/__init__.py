"""Capture: TransformerLens-named hooks on a bridge (exact) and a streaming attention function."""
