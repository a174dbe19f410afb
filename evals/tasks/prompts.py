"""Class names and prompt templates for zero-shot classification (strings with ``{c}`` or callables).

Checked on load, with one-line ConfigErrors: templates in CLIP_benchmark's format (``{c}`` at least once, no other
field, balanced braces; duplicates dropped with a warning), class names non-empty (duplicates warned, see
``duplicate_names``), files UTF-8 with an optional BOM.
"""

from __future__ import annotations

import functools
import logging
import os
import string
from typing import Callable, Dict, List, Optional, Sequence, Union

from captiondata.captions import normalize_caption
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)

Template = Union[str, Callable[[str], str]]

# OpenAI CLIP's 18 CIFAR-10/100 templates (as in CLIP_benchmark's en_zeroshot_classification_templates.json).
CIFAR_TEMPLATES = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.",
    "a bad photo of a {c}.",
    "a good photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a big {c}.",
    "a photo of the {c}.",
    "a blurry photo of the {c}.",
    "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.",
    "a bad photo of the {c}.",
    "a good photo of the {c}.",
    "a photo of the small {c}.",
    "a photo of the big {c}.",
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


def read_lines(path: str, keep_blank: bool = False) -> List[str]:
    """Stripped lines of a UTF-8 text file (a leading BOM dropped), without blank lines unless ``keep_blank``.

    Raises ConfigError naming the file and line when the file is not UTF-8 (a class-name or template file is
    configuration: a line cannot be skipped without shifting every later class index).
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} line {line} is not UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    return lines if keep_blank else [line for line in lines if line]


def duplicate_names(classnames: Sequence[str]) -> Dict[str, List[int]]:
    """Class names that occur more than once -> their class indices, in first-seen order.

    Names are compared case-folded with whitespace collapsed (open_clip's tokenizer lowercases, so "Crane" and "crane"
    give the same prompts). Such classes get identical class weights and tie on every image; open_clip's ImageNet
    names have two ("missile": 657, 744; "sunglasses": 836, 837).
    """
    indices: Dict[str, List[int]] = {}
    for index, name in enumerate(classnames):
        indices.setdefault(" ".join(name.casefold().split()), []).append(index)
    return {name: where for name, where in indices.items() if len(where) > 1}


_WARNED: set = set()


def check_classnames(classnames: Sequence[str], source: str) -> List[str]:
    """Class names as given, after checks: none empty (ConfigError naming ``source`` and the index), duplicates warned.

    Names are normalised like captions (``captiondata.captions.normalize_caption``: BOM and other control or format
    characters dropped, entities unescaped, whitespace collapsed).
    """
    names = [normalize_caption(str(name)) for name in classnames]
    if not names:
        raise ConfigError(f"{source} has no class names")
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise ConfigError(
            f"{source}: class {empty[0]} has an empty name ({len(empty)} empty); every class index needs a name"
        )
    duplicates = duplicate_names(names)
    if (
        duplicates and tuple(names) not in _WARNED
    ):  # once per list per process (a file's names are checked again as the set's)
        _WARNED.add(tuple(names))
        shown = "; ".join(f"{name!r} at {where}" for name, where in list(duplicates.items())[:5])
        log.warning(
            "%s: %d class names occur more than once (%s); their classes tie on every image",
            source,
            len(duplicates),
            shown,
        )
    return names


def read_classnames(path: str) -> List[str]:
    """Class names of a file, one a line (CLIP_benchmark's classnames.txt): trailing blank lines dropped, a blank line
    before a name is a ConfigError (dropping it would shift every later class index), then ``check_classnames``."""
    lines = read_lines(path, keep_blank=True)
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ConfigError(
            f"{path} line {lines.index('') + 1} is blank; a class name is missing there (remove the line or name the class)"
        )
    return check_classnames(lines, path)


@functools.lru_cache(maxsize=4096)
def _template_problem(template: str) -> Optional[str]:
    """Why a template string is not CLIP_benchmark's format (None when it is): ``{c}`` at least once, no other field."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        return f"has unbalanced braces ({exc}); write a literal brace as {{{{ or }}}}"
    others = sorted(
        {
            "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            for name, spec, conversion in fields
            if name != "c" or spec or conversion
        }
    )
    if others:
        return f"has the field(s) {', '.join(others)}; the class name placeholder is a plain {{c}} and no other field is filled"
    if not fields:
        return "has no {c} placeholder, so every class would get the same prompt"
    return None


def check_template(template: Template, source: str = "templates") -> Template:
    """``template`` unchanged, or ConfigError in one line: a string must hold ``{c}`` (CLIP_benchmark's format) and no
    other field; a callable (open_clip's template sets) must return a string that contains the class name."""
    if callable(template):
        probe = "\x00class\x00"
        out = template(probe)
        if not isinstance(out, str) or probe not in out:
            raise ConfigError(
                f"{source}: the template callable {template!r} does not return a string containing the class name"
            )
        return template
    if not isinstance(template, str):
        raise ConfigError(f"{source}: template {template!r} is neither a string nor a callable")
    problem = _template_problem(template)
    if problem:
        raise ConfigError(f"{source}: template {template!r} {problem}")
    return template


def check_templates(templates: Sequence[Template], source: str) -> List[Template]:
    """Checked templates (``check_template``), duplicates dropped with a warning (a duplicate would weigh that prompt
    twice in the class-weight mean); ConfigError when none is left."""
    out: List[Template] = []
    seen: Dict[str, int] = {}
    dropped = []
    for template in templates:
        check_template(template, source)
        ident = render(template, "{c}")
        if ident in seen:
            dropped.append(ident)
            continue
        seen[ident] = len(out)
        out.append(template)
    if not out:
        raise ConfigError(f"{source} has no templates")
    if dropped:
        log.warning(
            "%s: %d duplicate templates dropped (%s)", source, len(dropped), ", ".join(repr(d) for d in dropped[:3])
        )
    return out


def load_classnames(spec: Optional[str], default: Optional[Sequence[str]] = None) -> List[str]:
    """Class names from ``imagenet``, a text file, or the data set's own (``default``) when spec is None; checked by
    ``check_classnames`` (a file by ``read_classnames``)."""
    if spec is None:
        if not default:
            raise ConfigError("the data set has no class names; set the task's classnames (imagenet or a file)")
        return check_classnames(default, "the data set's class names")
    if spec == "imagenet":
        return check_classnames(imagenet_classnames(), "open_clip's IMAGENET_CLASSNAMES")
    if os.path.isfile(spec):
        return read_classnames(spec)
    raise ConfigError(f"classnames={spec!r} is neither 'imagenet' nor an existing file")


def load_templates(
    spec: Optional[str], default: Optional[Sequence[Template]] = None, default_source: str = "the data set's templates"
) -> List[Template]:
    """Templates from a named set, a text file (one a line, blank lines ignored), or the data set's own (``default``,
    named ``default_source`` in errors); fallback openai_imagenet. Checked by ``check_templates``."""
    if spec is None:
        if default:
            return check_templates(default, default_source)
        return list(_open_clip_sets()["openai_imagenet"])
    if spec in ("openai_imagenet", "simple_imagenet"):
        return list(_open_clip_sets()[spec])
    if spec == "cifar":
        return list(CIFAR_TEMPLATES)
    if spec == "photo":
        return ["a photo of a {c}."]
    if os.path.isfile(spec):
        return check_templates(read_lines(spec), spec)
    raise ConfigError(f"templates={spec!r} is neither one of {', '.join(TEMPLATE_SETS)} nor an existing file")


def render(template: Template, classname: str) -> str:
    """One prompt: ``template.format(c=classname)`` for strings, ``template(classname)`` for callables; a template that
    is not CLIP_benchmark's format is a one-line ConfigError (``check_template``), never an IndexError or KeyError."""
    if callable(template):
        return template(classname)
    check_template(template)
    return template.format(c=classname)


def template_identity(templates: Sequence[Template]) -> List[str]:
    """Templates as strings (callables rendered with the placeholder ``{c}``), for cache keys and records."""
    return [render(t, "{c}") for t in templates]
