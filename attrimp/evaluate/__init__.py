"""Evaluation: ReID metrics, re-ranking, the result tables, ablation designs and the test-time
condition sweep."""
