"""Class names and prompt templates for zero-shot classification (strings with ``{c}`` or callables)."""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Union

from harness_infra.errors import ConfigError

Template = Union[str, Callable[[str], str]]

# OpenAI CLIP's 18 CIFAR-10/100 templates (as in CLIP_benchmark's en_zeroshot_classification_templates.json).
CIFAR_TEMPLATES = (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.", "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.", "a bad photo of a {c}.", "a good photo of a {c}.", "a photo of a small {c}.",
    "a photo of a big {c}.", "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
)


def _open_clip_sets() -> dict:
    """open_clip's ImageNet template sets (callables)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return {"openai_imagenet": tuple(OPENAI_IMAGENET_TEMPLATES), "simple_imagenet": tuple(SIMPLE_IMAGENET_TEMPLATES)}


TEMPLATE_SETS = ("openai_imagenet", "simple_imagenet", "cifar", "photo")


def imagenet_classnames() -> List[str]:
    """The 1000 ImageNet-1K class names shipped by open_clip (IMAGENET_CLASSNAMES, OpenAI's cleaned names)."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def read_lines(path: str) -> List[str]:
    """Non-empty stripped lines of a UTF-8 text file."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def load_classnames(spec: Optional[str], default: Optional[Sequence[str]] = None) -> List[str]:
    """Class names from ``imagenet``, a text file, or the data set's own (``default``) when spec is None."""
    if spec is None:
        if not default:
            raise ConfigError("the data set has no class names; set the task's classnames (imagenet or a file)")
        return list(default)
    if spec == "imagenet":
        return imagenet_classnames()
    if os.path.isfile(spec):
        return read_lines(spec)
    raise ConfigError(f"classnames={spec!r} is neither 'imagenet' nor an existing file")


def load_templates(spec: Optional[str], default: Optional[Sequence[Template]] = None) -> List[Template]:
    """Templates from a named set, a text file, or the data set's own (``default``); fallback openai_imagenet."""
    if spec is None:
        return list(default) if default else list(_open_clip_sets()["openai_imagenet"])
    if spec in ("openai_imagenet", "simple_imagenet"):
        return list(_open_clip_sets()[spec])
    if spec == "cifar":
        return list(CIFAR_TEMPLATES)
    if spec == "photo":
        return ["a photo of a {c}."]
    if os.path.isfile(spec):
        return read_lines(spec)
    raise ConfigError(f"templates={spec!r} is neither one of {', '.join(TEMPLATE_SETS)} nor an existing file")


def render(template: Template, classname: str) -> str:
    """One prompt: ``template.format(c=classname)`` for strings, ``template(classname)`` for callables."""
    return template(classname) if callable(template) else template.format(c=classname)


def template_identity(templates: Sequence[Template]) -> List[str]:
    """Templates as strings (callables rendered with the placeholder ``{c}``), for cache keys and records."""
    return [render(t, "{c}") for t in templates]
