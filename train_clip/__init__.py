"""CLIP trainer: open_clip models and losses, captiondata batches, a small DiT-style training loop.

Modules, in the order data flows through them:
``config`` (typed ``model:``/``train:`` groups) -> ``models`` (open_clip models, tokenizer, transforms, export)
-> ``data`` (CaptionLoader glue) -> ``step`` (loss, accumulation, AdamW step) -> ``optim`` (param groups,
schedule) -> ``checkpoint`` (atomic, resumable) -> ``monitor`` (bar, TensorBoard, jsonl) -> ``train`` (the loop).
Entry points: ``train_clip.train.train(...)`` and ``python -m train_clip`` (Hydra).
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
