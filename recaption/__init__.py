"""The recaption stage: a pluggable upstream step that writes recaptions into caption shards, exactly once.

``config`` (the ``recaption:`` group), ``captioner`` (the one ``Captioner`` protocol and the backend registry),
``backends/`` (precomputed Recap-DataComp parquet, transformers, vLLM, any OpenAI-compatible server, open_clip CoCa,
text-only rewriting), ``shards`` (one shard in, one shard out, atomically, failures counted and retried), ``stage``
(the splits under one process or torchrun ranks), ``ray_data`` (the same over a Ray cluster's actor pool).
"""
