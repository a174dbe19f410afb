"""The pipeline on top of every family: a registry of stages, the model families, the runner and its Hydra entry.

``python -m evals.run +experiment=NAME`` (a thin shell over ``pipeline.cli``) composes ``conf/`` onto
``pipeline.schema.HarnessConfig`` and walks ``run.stages`` (by default data -> train -> eval -> tables). Each
stage is a module of ``pipeline/stages/`` registered in ``pipeline.registry``; each model family (``trainer=clip``)
is registered in ``pipeline.families``.
"""
