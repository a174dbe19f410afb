"""The ``coca`` backend: open_clip CoCa ``generate`` (greedy: top-k with k = 1), from any open_clip CoCa.

``model``: ``NAME:PRETRAINED`` (an open_clip model name and a pretrained tag or checkpoint path, e.g.
``coca_ViT-L-14:mscoco_finetuned_laion2B-s13B-b90k``) or ``local-dir:FOLDER`` (an export with its config, as the
harness writes them). Generated ids are cut at the end-of-text token and decoded with open_clip's tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any, List, Tuple

import torch

from recaption.backends.hf import torch_setup
from recaption.backends.weights import weights_identity
from recaption.captioner import Caption, Item, finish_text, generation_identity

log = logging.getLogger(__name__)
SOT, EOT = 49406, 49407  # open_clip's SimpleTokenizer start and end of text


def split_model(spec: str) -> Tuple[str, Any]:
    """(open_clip name, pretrained) of ``NAME:PRETRAINED`` or ``local-dir:FOLDER``."""
    if spec.startswith("local-dir:"):
        return spec, None
    name, _, pretrained = spec.partition(":")
    return name, (pretrained or None)


class CoCaCaptioner:
    """Greedy CoCa captions."""

    def __init__(self, cfg: Any) -> None:
        import open_clip

        self.cfg = cfg
        self.device, self.dtype = torch_setup(cfg)
        name, pretrained = split_model(cfg.model)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=self.device)
        self.model.eval()
        if not hasattr(self.model, "generate"):
            from harness_infra.errors import ConfigError

            raise ConfigError(f"recaption.model={cfg.model!r} is a {type(self.model).__name__}, not an open_clip CoCa (no generate)")
        self.decode = open_clip.decode
        weights = weights_identity(pretrained) if isinstance(pretrained, str) else weights_identity(name.removeprefix("local-dir:"))
        self.identity = {"captioner": f"coca:{cfg.model}", **weights, **generation_identity(cfg), "prompt": None}

    @torch.inference_mode()
    def caption(self, items: List[Item]) -> List[Caption]:
        """Greedy captions of a batch (undecodable images fail alone)."""
        out: List[Caption] = [Caption.failed("undecodable_image")] * len(items)
        todo = [n for n, item in enumerate(items) if item.image is not None]
        if not todo:
            return out
        images = torch.stack([self.preprocess(items[n].image) for n in todo]).to(self.device)
        try:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                ids = self.model.generate(images, seq_len=self.cfg.max_new_tokens + 1, generation_type="top_k", top_k=1,
                                          min_seq_len=2, fixed_output_length=False)
        except Exception as exc:  # noqa: BLE001  (a failing batch is counted and retried, never a crash)
            log.warning("CoCa generation failed for a batch of %d: %s", len(todo), exc)
            return [Caption.failed("generation_error") if items[n].image is not None else out[n] for n in range(len(items))]
        for n, row in zip(todo, ids.cpu().tolist()):
            body = row[1:] if row and row[0] == SOT else row
            ended = EOT in body
            body = body[: body.index(EOT)] if ended else body
            out[n] = finish_text(self.decode(torch.tensor(body)), self.cfg, tokens=len(body), truncated=not ended)
        return out
