"""The embedded default data set: procedurally rendered compositional scenes, made by code alone.

Every image is a light background with one to three object *groups* on a 3x3 grid of cells. A group
has a count (1-3), a size (small/large; groups of two or three are always small), one of
``COLOURS`` (6), one of ``TEXTURES`` (solid/striped/dotted), one of ``SHAPES`` (6) and a position
(the grid cell, named "top left" .. "bottom right"); colours and shapes are distinct within a scene.
The recaption is a complete dense description of every group, ordered left to right
(``describe_scene``). The original imitates web alt-text with fixed probabilities
(``ORIGINAL_STYLE_PROBS``): the most salient group's colour and shape only ("red circle icon"), a
single attribute ("circles", "shapes"), a bag of shapes or of colours without bindings ("circle and
square"), a file name ("IMG_4821.jpg") or an unrelated shop phrase. An original never binds more than
one colour to one shape and never names a position, texture, size or count, so a model trained on
originals alone cannot learn colour-shape-position bindings. Held-out compositional retrieval
(val/test): samples 2k and 2k+1 form a minimal pair, the second being the first with the colours,
shapes or positions of two groups swapped (same words, different bindings, same pixels elsewhere),
so bag-of-words matching cannot tell them apart; moreover the colour-shape combinations in
``HELDOUT_COMBOS`` (one per colour and per shape) never occur in train but do in val/test/zeroshot,
so these splits also measure compositional generalisation (``meta["heldout"]`` marks them).
Zero-shot split: one large object per image, labelled "{colour} {shape}" (36 classes, balanced:
label = index mod 36). Sample i of a split is a pure function of (seed, split, i, image_size):
numpy generators are seeded from ``SeedSequence([seed, split_id, scene_id, stream])``, never from
global state, so shards can be generated in parallel by index range.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from captiondata.records import Record

# Bump whenever the bytes or texts of any sample change (build caches can key on it).
SCENES_VERSION = 1
SPLITS = ("train", "val", "test", "zeroshot")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
DEFAULT_SIZES = {"train": 8000, "val": 500, "test": 1000, "zeroshot": 1080}
IMAGE_SIZE = 64

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (140, 55, 185),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
TEXTURES = ("solid", "striped", "dotted")
SIZES = ("small", "large")
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light grey": (212, 212, 212),
    "beige": (238, 226, 196),
    "light cyan": (204, 238, 242),
}
# Grid cells in row-major order; POSITIONS[3 * row + col].
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
# Never in train; each colour and each shape appears in exactly one held-out pair.
HELDOUT_COMBOS: Tuple[Tuple[str, str], ...] = (
    ("red", "triangle"),
    ("orange", "diamond"),
    ("yellow", "star"),
    ("green", "circle"),
    ("blue", "cross"),
    ("purple", "square"),
)
SWAP_KINDS = ("colour", "shape", "position")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
GROUPS_PER_SCENE_PROBS = {"train": (0.15, 0.45, 0.40), "val": (0.0, 0.5, 0.5), "test": (0.0, 0.5, 0.5)}
OBJECTS_PER_GROUP_PROBS = (0.6, 0.25, 0.15)
ORIGINAL_STYLE_PROBS = {"salient": 0.35, "attribute": 0.15, "bag": 0.15, "filename": 0.15, "shop": 0.20}
SHOP_PHRASES = (
    "Buy now \u2013 free shipping on all orders",
    "best deals free shipping",
    "Limited time offer: 50% off everything",
    "New arrivals for 2021",
    "Home decor wall art canvas print",
    "High quality stock image",
    "Sale! Shop the collection today",
    "Add to cart",
    "Royalty free vector illustration",
    "Download free HD wallpaper",
    "Perfect gift idea for kids",
    "Click here to see more",
)
SALIENT_FORMATS = ("{c} {s}", "{C} {S}", "{c} {s} icon", "{c} {s} clipart", "{c} {s} png", "a {c} {s}")
ATTRIBUTE_FORMATS = ("{s}", "{p}", "{c}", "{c} shapes", "shapes", "geometric shapes", "abstract pattern")
ZEROSHOT_TEMPLATES = (
    "a {c}.",
    "a photo of a {c}.",
    "a picture of a {c}.",
    "an image of a {c}.",
    "a drawing of a {c}.",
)

# Object diameters in pixels at 64 px (scaled with image_size).
_DIAMETER = {"small": 9.5, "large": 18.0}
_GROUP_OFFSETS = {
    1: (((0.0, 0.0),),),
    2: (((-0.25, 0.0), (0.25, 0.0)), ((0.0, -0.25), (0.0, 0.25))),
    3: (((-0.25, -0.25), (0.25, -0.25), (0.0, 0.25)), ((-0.25, 0.25), (0.25, 0.25), (0.0, -0.25))),
}
_HELDOUT = frozenset(HELDOUT_COMBOS)


def _check_split(split: str) -> None:
    """Raise ValueError unless split is one of SPLITS."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown scenes split {split!r}; choose one of {', '.join(SPLITS)}")


def _rng(seed: int, split: str, scene_id: int, stream: int) -> np.random.Generator:
    """An independent generator for one (seed, split, scene, purpose)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLIT_IDS[split], scene_id, stream])))


def zeroshot_classnames() -> List[str]:
    """Class names of the zero-shot split, "{colour} {shape}", label = index in this list."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def zeroshot_templates() -> List[str]:
    """Prompt templates for zero-shot classification, each with one "{c}" placeholder."""
    return list(ZEROSHOT_TEMPLATES)


def is_heldout(colour: str, shape: str) -> bool:
    """True when the colour-shape combination never occurs in the train split."""
    return (colour, shape) in _HELDOUT


def _cell(position: str) -> Tuple[int, int]:
    """(row, col) of a named grid position."""
    return divmod(POSITIONS.index(position), 3)


def plural(noun: str) -> str:
    """English plural of a shape name ('cross' -> 'crosses')."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def _group_phrase(group: Mapping[str, Any]) -> str:
    """'two small blue dotted squares' for one object group."""
    shape = plural(group["shape"]) if group["count"] > 1 else group["shape"]
    words = [COUNT_WORDS[group["count"]], group["size"], group["colour"], group["texture"], shape]
    return " ".join(words)


def _join(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _capitalise(text: str) -> str:
    """Upper-case the first character only."""
    return text[:1].upper() + text[1:]


def describe_scene(objects: Sequence[Mapping[str, Any]], background: Optional[str] = None) -> str:
    """The dense recaption: every group with count, size, colour, texture, shape and position, left to right."""
    ordered = sorted(objects, key=lambda g: _cell(g["position"])[::-1])
    text = _join([f"{_group_phrase(g)} {POSITION_PHRASES[g['position']]}" for g in ordered])
    if background:
        text += f", on a {background} background"
    return _capitalise(text) + "."


def paraphrase_scene(objects: Sequence[Mapping[str, Any]], background: str) -> str:
    """A second reference with the same vocabulary: background first, groups top to bottom."""
    ordered = sorted(objects, key=lambda g: _cell(g["position"]))
    phrases = [f"{_group_phrase(g)} {POSITION_PHRASES[g['position']]}" for g in ordered]
    return _capitalise(f"a {background} background with {_join(phrases)}.")


# The held-out query style (``person_description``): how a person might describe the picture. Only the colour and
# shape nouns are shared with the builders' captions; counts, sizes, textures, positions, backgrounds and the clause
# grammar use words and word orders neither ``describe_scene``/``paraphrase_scene`` nor ``original_caption`` write.
PERSON_VERSION = 1
PERSON_COUNTS = {1: ("one", "a single", "just one"), 2: ("a pair of", "a couple of"), 3: ("a trio of", "a bunch of")}
PERSON_SIZES = {"small": ("little", "tiny"), "large": ("big", "huge")}
PERSON_TEXTURES = {"solid": ("", "plain"), "striped": ("stripy", "with stripes"), "dotted": ("spotty", "with spots")}
PERSON_POSITIONS = {
    "top left": "in the upper left corner",
    "top": "up near the upper edge",
    "top right": "in the upper right corner",
    "left": "over by the left edge",
    "center": "right in the middle",
    "right": "over by the right edge",
    "bottom left": "in the lower left corner",
    "bottom": "down near the lower edge",
    "bottom right": "in the lower right corner",
}
PERSON_BACKGROUNDS = {"white": "white", "light grey": "pale gray", "beige": "cream", "light cyan": "pale turquoise"}
PERSON_OPENINGS = ("I can see", "This picture has", "Looks like", "There's")


def _person_group(group: Mapping[str, Any], rng: np.random.Generator) -> str:
    """One group in one of three clause forms; the colour is bound to its shape by adjacency, by 'in {colour}' or by
    a 'that is/are {colour}' relative clause, and the position comes first or last."""
    count = int(group["count"])
    shape = plural(group["shape"]) if count > 1 else group["shape"]
    quantity = PERSON_COUNTS[count][int(rng.integers(len(PERSON_COUNTS[count])))]
    size = PERSON_SIZES[group["size"]][int(rng.integers(2))] if rng.random() < 0.7 else ""
    texture = PERSON_TEXTURES[group["texture"]][int(rng.integers(2))]
    before, after = (texture, "") if texture and not texture.startswith("with") else ("", texture)
    where = PERSON_POSITIONS[group["position"]]
    form = int(rng.integers(3))
    if form == 0:
        words = [quantity, size, before, group["colour"], shape, after, where]
    elif form == 1:
        words = [quantity, size, before, shape, "in", group["colour"], after, where]
    else:
        verb = "are" if count > 1 else "is"
        words = [where, quantity, size, before, shape, "that", verb, group["colour"], after]
    return " ".join(w for w in words if w)


def person_description(objects: Sequence[Mapping[str, Any]], background: str, seed: int, split: str, index: int) -> str:
    """The held-out query style: a description of the scene as a person might write it, in a third style that
    neither caption builder writes (``PERSON_*`` vocabularies, clause forms in ``_person_group``), groups in a random
    order, background named or not. Every group's colour, shape and position is stated (the content of the
    recaption the minimal pairs differ in); a pure function of (seed, split, index) through its own generator
    stream (4), so it can be written for shards already built without changing their bytes."""
    rng = _rng(seed, split, index, 4)
    order = rng.permutation(len(objects))
    parts = [_person_group(objects[int(i)], rng) for i in order]
    opening = PERSON_OPENINGS[int(rng.integers(len(PERSON_OPENINGS)))]
    text = f"{opening} {_join(parts)}"
    if rng.random() < 0.5:
        text += f", all against a {PERSON_BACKGROUNDS[background]} backdrop"
    return text + "."


def person_queries(meta: Mapping[str, Any]) -> List[str]:
    """The held-out query of one scenes sample from its stored meta (objects, background, seed, split, index);
    ValueError when the meta is not a scenes sample's."""
    try:
        return [person_description(meta["objects"], meta["background"], meta["seed"], meta["split"], meta["index"])]
    except (KeyError, TypeError) as error:
        raise ValueError(f"scenes person queries need a scenes sample's meta (objects, background, ...): {error}")


def _sample_groups(split: str, rng: np.random.Generator) -> List[Dict[str, Any]]:
    """Draw the object groups of one train/val/test scene (distinct colours, shapes and cells)."""
    n_groups = 1 + int(rng.choice(3, p=GROUPS_PER_SCENE_PROBS[split]))
    cells = rng.choice(len(POSITIONS), size=n_groups, replace=False)
    colours = list(COLOURS)
    for _ in range(1000):
        colour_ids = rng.choice(len(colours), size=n_groups, replace=False)
        shape_ids = rng.choice(len(SHAPES), size=n_groups, replace=False)
        pairs = [(colours[c], SHAPES[s]) for c, s in zip(colour_ids, shape_ids)]
        if split != "train" or not any(is_heldout(c, s) for c, s in pairs):
            break
    else:
        raise RuntimeError("scenes: could not draw a train scene without held-out combinations")
    groups = []
    for (colour, shape), cell in zip(pairs, cells):
        count = 1 + int(rng.choice(3, p=OBJECTS_PER_GROUP_PROBS))
        size = SIZES[int(rng.integers(2))] if count == 1 else "small"
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        groups.append(
            {
                "count": count,
                "size": size,
                "colour": colour,
                "texture": texture,
                "shape": shape,
                "position": POSITIONS[int(cell)],
            }
        )
    return groups


def swap_groups(groups: Sequence[Mapping[str, Any]], kind: str, a: int, b: int) -> List[Dict[str, Any]]:
    """A copy of groups with attribute ``kind`` (colour, shape or position) exchanged between groups a and b."""
    swapped = [dict(g) for g in groups]
    swapped[a][kind], swapped[b][kind] = groups[b][kind], groups[a][kind]
    return swapped


def _place(groups: Sequence[Dict[str, Any]], rng: np.random.Generator, image_size: int) -> None:
    """Add "instances" [[cx, cy, diameter], ...] in pixels to every group, inside its grid cell."""
    cell_size = image_size / 3.0
    scale = image_size / 64.0
    for group in groups:
        row, col = _cell(group["position"])
        diameter = _DIAMETER[group["size"]] * scale * (1.0 + rng.uniform(-0.05, 0.05))
        layouts = _GROUP_OFFSETS[group["count"]]
        layout = layouts[int(rng.integers(len(layouts)))]
        slack = max(0.0, (cell_size - diameter) / 2.0 - 0.5 * scale) if group["count"] == 1 else 0.5 * scale
        jitter = rng.uniform(-slack, slack, size=2)
        cx, cy = (col + 0.5) * cell_size + jitter[0], (row + 0.5) * cell_size + jitter[1]
        group["instances"] = [
            [round(float(cx + dx * cell_size), 2), round(float(cy + dy * cell_size), 2), round(float(diameter), 2)]
            for dx, dy in layout
        ]


def _polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    """Vertices of a polygonal shape of radius r centred on (cx, cy)."""
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.85 * r), (cx - r, cy + 0.85 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "cross":
        w = 0.36 * r
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.05 * r, 0.45 * r)
        return [(float(cx + q * np.cos(t)), float(cy + q * np.sin(t) + 0.1 * r)) for q, t in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, cx: float, cy: float, diameter: float, image_size: int) -> Tuple[slice, slice, np.ndarray]:
    """Boolean mask of one shape, cropped to its bounding box (returned as row and column slices)."""
    r = diameter / 2.0
    x0, y0 = max(0, int(np.floor(cx - r)) - 1), max(0, int(np.floor(cy - r)) - 1)
    x1, y1 = min(image_size, int(np.ceil(cx + r)) + 2), min(image_size, int(np.ceil(cy + r)) + 2)
    crop = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    draw = ImageDraw.Draw(crop)
    lx, ly = cx - x0 - 0.5, cy - y0 - 0.5
    if shape == "circle":
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    else:
        draw.polygon(_polygon(shape, lx, ly, r), fill=255)
    return slice(y0, y1), slice(x0, x1), np.asarray(crop) > 0


@functools.lru_cache(maxsize=8)
def _texture_on(texture: str, image_size: int) -> np.ndarray:
    """Where a texture shows the object colour (False = light tint): diagonal stripes or a grid of holes."""
    period = max(4, 2 * round(2 * image_size / 64))
    half = period // 2
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    if texture == "striped":
        on = ((xx + yy) // half) % 2 == 0
    elif texture == "dotted":
        on = ~(((xx + 1) % period < half) & ((yy + 1) % period < half))
    else:
        on = np.ones((image_size, image_size), dtype=bool)
    on.setflags(write=False)
    return on


def render_scene(
    groups: Sequence[Mapping[str, Any]], background: str, rng: np.random.Generator, image_size: int
) -> Image.Image:
    """Draw the placed groups (with "instances") on a lightly noisy background; returns an RGB image."""
    noise_amp = int(rng.integers(0, 7))
    canvas = np.empty((image_size, image_size, 3), dtype=np.int16)
    canvas[:] = BACKGROUNDS[background]
    if noise_amp:
        canvas += rng.integers(-noise_amp, noise_amp + 1, size=(image_size, image_size, 1), dtype=np.int16)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    for group in groups:
        colour = np.clip(np.array(COLOURS[group["colour"]]) + rng.integers(-10, 11, size=3), 0, 255)
        tint = (0.35 * colour + 0.65 * 255).astype(np.uint8)
        colour = colour.astype(np.uint8)
        on_full = _texture_on(group["texture"], image_size)
        for cx, cy, diameter in group["instances"]:
            rows, cols, mask = _shape_mask(group["shape"], cx, cy, diameter, image_size)
            on = on_full[rows, cols]
            region = canvas[rows, cols]
            region[mask & on] = colour
            region[mask & ~on] = tint
    return Image.fromarray(canvas, "RGB")


def _salient(groups: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The group covering the most area (first in description order on ties)."""
    ordered = sorted(groups, key=lambda g: _cell(g["position"])[::-1])
    return max(ordered, key=lambda g: g["count"] * (4 if g["size"] == "large" else 1))


def _filename(rng: np.random.Generator) -> str:
    """A camera or download file name such as 'IMG_4821.jpg'."""
    kind = int(rng.integers(6))
    number = int(rng.integers(0, 100000))
    if kind == 0:
        return f"IMG_{number % 10000:04d}.jpg"
    if kind == 1:
        return f"DSC{number:05d}.JPG"
    if kind == 2:
        return f"image_{number % 1000}.png"
    if kind == 3:
        return f"photo-{number}.jpeg"
    if kind == 4:
        return "".join("0123456789abcdef"[int(d)] for d in rng.integers(0, 16, size=12)) + ".jpg"
    return f"Screenshot_20{10 + number % 14}-{1 + number % 12:02d}-{1 + number % 28:02d}.png"


def original_caption(groups: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> Tuple[str, str]:
    """An alt-text-like original and its style name; never binds more than one colour to one shape."""
    styles = list(ORIGINAL_STYLE_PROBS)
    style = styles[int(rng.choice(len(styles), p=list(ORIGINAL_STYLE_PROBS.values())))]
    if style == "salient":
        group = _salient(groups)
        fmt = SALIENT_FORMATS[int(rng.integers(len(SALIENT_FORMATS)))]
        shape = plural(group["shape"]) if group["count"] > 1 and not fmt.startswith("a ") else group["shape"]
        text = fmt.format(c=group["colour"], s=shape, C=group["colour"].title(), S=shape.title())
    elif style == "attribute":
        group = groups[int(rng.integers(len(groups)))]
        fmt = ATTRIBUTE_FORMATS[int(rng.integers(len(ATTRIBUTE_FORMATS)))]
        text = fmt.format(c=group["colour"], s=group["shape"], p=plural(group["shape"]))
    elif style == "bag":
        order = rng.permutation(len(groups))
        if rng.random() < 0.5:
            text = _join([groups[i]["shape"] for i in order])
        else:
            text = _join([groups[i]["colour"] for i in order]) + (" shapes" if rng.random() < 0.5 else "")
    elif style == "filename":
        text = _filename(rng)
    else:
        text = SHOP_PHRASES[int(rng.integers(len(SHOP_PHRASES)))]
    return text, style


def _scene(split: str, index: int, seed: int) -> Tuple[List[Dict[str, Any]], str, int, Dict[str, Any]]:
    """Groups, background, render-stream scene id and extra meta of sample ``index`` of a split.

    val/test: samples 2k and 2k+1 share scene id k (same layout and pixels up to the swap); the last
    sample of an odd-sized split has its partner outside the split.
    """
    if split == "zeroshot":
        rng = _rng(seed, split, index, 0)
        label = index % len(zeroshot_classnames())
        colour, shape = list(COLOURS)[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
        position = POSITIONS[int(rng.integers(len(POSITIONS)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        groups = [
            {"count": 1, "size": "large", "colour": colour, "texture": texture, "shape": shape, "position": position}
        ]
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        return groups, background, index, {"label": label, "classname": zeroshot_classnames()[label]}
    if split == "train":
        rng = _rng(seed, split, index, 0)
        groups = _sample_groups(split, rng)
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        return groups, background, index, {}
    pair, member = divmod(index, 2)
    rng = _rng(seed, split, pair, 0)
    groups = _sample_groups(split, rng)
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    kind = SWAP_KINDS[int(rng.integers(len(SWAP_KINDS)))]
    a, b = (int(i) for i in rng.choice(len(groups), size=2, replace=False))
    if member == 1:
        groups = swap_groups(groups, kind, a, b)
    extra = {
        "pair": pair,
        "pair_member": member,
        "partner_index": index + 1 - 2 * member,
        "swap": kind,
        "swapped_groups": sorted([a, b]),
    }
    return groups, background, pair, extra


def scene_record(split: str, index: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> Record:
    """Sample ``index`` of a split, a pure function of (split, index, seed, image_size)."""
    _check_split(split)
    if index < 0 or seed < 0:
        raise ValueError(f"scenes: index ({index}) and seed ({seed}) must be non-negative")
    if image_size < 16:
        raise ValueError(f"scenes: image_size={image_size} is too small; use at least 16")
    groups, background, scene_id, extra = _scene(split, index, seed)
    _place(groups, _rng(seed, split, scene_id, 1), image_size)
    image = render_scene(groups, background, _rng(seed, split, scene_id, 2), image_size)
    original, style = original_caption(groups, _rng(seed, split, index, 3))
    recaption = describe_scene(groups, background)
    references = [recaption, paraphrase_scene(groups, background)] if split in ("val", "test") else []
    meta: Dict[str, Any] = {
        "source": "scenes",
        "split": split,
        "index": index,
        "seed": seed,
        "background": background,
        "objects": groups,
        "original_style": style,
        "heldout": any(is_heldout(g["colour"], g["shape"]) for g in groups),
        "recap_is_proxy": False,
        **extra,
    }
    return Record(
        key=f"scenes-{split}-{index:06d}",
        image=image,
        original=original,
        recaptions=[recaption],
        references=references,
        meta=meta,
        image_ext="png",
    )


def scene_records(split: str, n: Optional[int] = None, seed: int = 0, image_size: int = IMAGE_SIZE) -> Iterator[Record]:
    """The first n samples of a split (DEFAULT_SIZES[split] when n is None), in index order."""
    _check_split(split)
    count = DEFAULT_SIZES[split] if n is None else n
    if count < 0:
        raise ValueError(f"scenes: n={count} must be non-negative")
    for index in range(count):
        yield scene_record(split, index, seed=seed, image_size=image_size)


_SHAPE_WORDS = {**{shape: shape for shape in SHAPES}, **{plural(shape): shape for shape in SHAPES}}
_COUNT_VALUES = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_POSITION_BY_PHRASE = sorted(
    ((phrase.split(), position) for position, phrase in POSITION_PHRASES.items()), key=lambda p: -len(p[0])
)


def parse_scene_description(text: str) -> List[Dict[str, Any]]:
    """The object groups a description claims, the inverse of ``describe_scene`` for any text in its vocabulary.

    Each mention of a shape word (singular or plural) is a group; the count word, size, colour and texture found
    since the previous shape mention are its attributes, and a position phrase right after it is its position.
    Attributes a text does not state are absent from the group's dict (never guessed): {"shape", and any of
    "count", "size", "colour", "texture", "position"}. Words outside the vocabulary are ignored.
    """
    words = [w.strip(".,;:!?\"'()").lower() for w in text.replace("-", " ").split()]
    groups: List[Dict[str, Any]] = []
    pending: Dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in _SHAPE_WORDS:
            group = {"shape": _SHAPE_WORDS[word], **pending}
            pending = {}
            for phrase, position in _POSITION_BY_PHRASE:
                if words[i + 1 : i + 1 + len(phrase)] == phrase:
                    group["position"] = position
                    i += len(phrase)
                    break
            groups.append(group)
        elif word in _COUNT_VALUES:
            pending["count"] = _COUNT_VALUES[word]
        elif word in SIZES:
            pending["size"] = word
        elif word in COLOURS:
            pending["colour"] = word
        elif word in TEXTURES:
            pending["texture"] = word
        i += 1
    return groups
