"""The evaluation tasks and what they share: the task registry (``registry``), task configs (``config``), data sets
(``datasets``), embeddings with their cache (``embeddings``), zero-shot classification (``zeroshot``), retrieval
(``retrieval``), caption diagnostics (``diagnostics``) and the suite that runs a model's tasks (``suite``)."""
