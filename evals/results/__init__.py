"""Results of evaluation tasks: ``TaskResult`` (per-query and whole-set metrics with intervals), the bootstrap and
paired tests over queries (``bootstrap``), and the JSON records with per-query side files (``records``)."""
