"""The CLIP family: open_clip models trained on captiondata's mixed captions (``trainer=clip``).

Modules, in the order data flows through them:
``config`` (typed ``model:``/``train:`` groups) -> ``models`` (open_clip models, tokenizer, transforms, export and
loading for evaluation) -> ``data`` (CaptionLoader glue) -> ``frozen_features`` (LiT: cached locked-trunk features)
-> ``step`` (contrastive loss, exact gradient accumulation) -> ``optim`` (AdamW parameter groups) -> ``train`` (the
loop: DiT's ``train.py`` style, top to bottom). Generic pieces (distributed, checkpoints, LR schedule, precision,
monitor) live in ``training``; pretrained towers in ``towers``.
Entry points: ``train_clip.train.train(...)`` from Python; ``python -m evals.run +experiment=... 'run.stages=[data,train]'``
from the command line. ``import train_clip.models`` registers this package's open_clip model configs (``RecapCLIP-*``,
``RecapLiT-*``) and the timm FID Inception; the package file itself loads no model library, so ``train_clip.config``
composes into a Hydra config (and ``python -m evals.run --help`` answers) without torch or open_clip.
"""
