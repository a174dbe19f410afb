"""The text-to-image DiT family (``trainer=dit``): diffusers' PixArtTransformer2DModel trained on mixed captions.

Modules, in the order data flows through them:
``config`` (typed ``model:``/``train:`` groups, presets DiT-S/B/L and the tiny CPU configs) -> ``text`` (frozen
text encoders: Hugging Face, open_clip, or this harness's CLIP export -> token features + mask) -> ``image`` (pixel
space or a diffusers autoencoder's scaled latents) -> ``features`` (cached x0 and the text features of every
caption source per shard; the caption mixer picks which to load) -> ``model`` (the transformer) -> ``diffusion``
(DDPM epsilon / rectified flow objectives, samplers) -> ``train`` (the loop: EMA, checkpoints, export) -> ``hub``
(the export as a diffusers pipeline and its model card; ``hub_pipeline`` is the ``RecapDiTPipeline`` shipped in it as
``pipeline.py``) -> ``sample`` (guided generation from an export, per-prompt seeds, grids).
Entry points: ``train_dit.train.train(...)``; ``python -m evals.run +experiment=dit_scenes``.
"""
