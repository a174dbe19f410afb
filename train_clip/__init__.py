"""The CLIP family: open_clip models trained on captiondata's mixed captions (``trainer=clip``).

Modules, in the order data flows through them:
``config`` (typed ``model:``/``train:`` groups) -> ``models`` (open_clip models, tokenizer, transforms, export and
loading for evaluation) -> ``data`` (CaptionLoader glue) -> ``frozen_features`` (LiT: cached locked-trunk features)
-> ``step`` (contrastive loss, exact gradient accumulation) -> ``optim`` (AdamW parameter groups) -> ``train`` (the
loop: DiT's ``train.py`` style, top to bottom). Generic pieces (distributed, checkpoints, LR schedule, precision,
monitor) live in ``training``; pretrained towers in ``towers``.
Entry points: ``train_clip.train.train(...)`` from Python; ``python -m evals.run +experiment=... 'run.stages=[data,train]'``
from the command line. Importing the package registers its open_clip model configs (``RecapCLIP-*``, ``RecapLiT-*``).
"""

import os
import sys

if "torch" not in sys.modules:
    # OpenMP threads that sleep rather than spin while idle. On a shared CPU, spinning threads of one process
    # stall each other whenever a core is taken by someone else (measured 5x slower steps on 2 busy cores).
    # Read once when torch loads, so only effective when train_clip is imported first; an explicit
    # OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from train_clip.models import register_model_configs  # noqa: E402
from towers import fid_inception  # noqa: E402,F401  (registers the timm model of RecapLiT-* configs)

register_model_configs()
