"""The evaluation tasks and what they share: the task registry (``registry``), task configs (``config``), data sets
(``datasets``), embeddings with their cache (``embeddings``), zero-shot classification (``zeroshot``), retrieval
(``retrieval``), caption diagnostics (``diagnostics``), the text-to-image tasks (``t2i``: FID/KID in ``fid``, CLIP score
in ``clipscore``, prompt following in ``prompt_following``, the VLM judge in ``judge``) and the suite that runs a
model's tasks (``suite``)."""
