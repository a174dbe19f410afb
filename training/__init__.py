"""Generic training pieces shared by the trainers (train_clip, train_dit): the training process scaffold
(``process``), threads, determinism and the run log (``runtime``), torchrun set-up and collectives (``distributed``),
atomic resumable checkpoints (``checkpoint``), the learning-rate schedule (``schedule``), mixed precision
(``precision``), the non-finite loss guard (``guard``), run monitoring (``monitor``: progress bar, TensorBoard, W&B,
jsonl), the data stream and its resume positions (``stream``) and image generation (``generation``: one
GenerationSpec, sampling loop and image writer)."""
