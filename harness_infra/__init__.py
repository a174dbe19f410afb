"""Cross-cutting infrastructure every layer may use, importing nothing of the project: the one config-error type
(``errors``), the one atomic writer (``atomic``), identities and fingerprints of files, models and texts
(``identity``), content-keyed stage folders and which config fields enter their keys (``stagecache``), the tensor
cache (``cache``), rank helpers and the rank-0-builds-others-wait rule (``ranks``), run provenance (``provenance``)."""
