"""Generic training pieces shared by the trainers (train_clip, train_dit): torchrun set-up and collectives
(``distributed``), atomic resumable checkpoints (``checkpoint``), the learning-rate schedule (``schedule``), mixed
precision (``precision``) and run monitoring (``monitor``: progress bar, TensorBoard, jsonl)."""
