"""Benchmarks: scripts that print and save ratios measured side by side in one run (STYLE.md rule 12)."""
