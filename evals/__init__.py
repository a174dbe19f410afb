"""CLIP evaluation suite: zero-shot classification, multi-caption and long-caption retrieval, bootstrap statistics, caption diagnostics and result records."""
