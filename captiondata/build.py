"""Build the caption shards of a data set (embedded scenes or Flickr8k) into ``data.shard_dir``.

A finished build writes ``build-info.json`` last; a build with the same settings is skipped, a
folder built with other settings is refused rather than silently overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Iterator

from captiondata.config import DataConfig, default_data_root
from captiondata.records import Record
from captiondata.writer import ShardWriter
from harness_infra.atomic import atomic_write_json, clear_partial_files
from harness_infra.errors import ConfigError

log = logging.getLogger(__name__)
BUILDER_VERSION = 2  # 2: the zero-shot split in CLIP_benchmark's layout (0.tar.., nshards.txt)
BUILD_INFO = "build-info.json"


def builder_settings(cfg: DataConfig) -> Dict[str, Any]:
    """Everything that determines the bytes of the built shards."""
    settings: Dict[str, Any] = {
        "builder": cfg.builder,
        "version": BUILDER_VERSION,
        "samples_per_shard": cfg.samples_per_shard,
    }
    if cfg.builder == "scenes":
        from captiondata.builders.scenes import SCENES_VERSION

        settings.update(
            seed=cfg.build_seed,
            train_size=cfg.build_size,
            image_size=cfg.scene_image_size,
            generator_version=SCENES_VERSION,
        )
    elif cfg.builder == "flickr8k":
        settings.update(source=os.path.abspath(flickr8k_root(cfg)), limit=cfg.build_size)
    return settings


def flickr8k_root(cfg: DataConfig) -> str:
    """The Flickr8k folder: data.source, else $RECAP_DATA_ROOT/flickr8k (default ../shared/data/flickr8k)."""
    return cfg.source or os.path.join(default_data_root(), "flickr8k")


def split_records(cfg: DataConfig) -> Dict[str, Iterator[Record]]:
    """Split name -> Record iterator for the configured builder."""
    if cfg.builder == "scenes":
        from captiondata.builders import scenes

        sizes = dict(scenes.DEFAULT_SIZES)
        if cfg.build_size:
            sizes["train"] = cfg.build_size
        return {
            split: scenes.scene_records(split, sizes[split], seed=cfg.build_seed, image_size=cfg.scene_image_size)
            for split in scenes.SPLITS
        }
    if cfg.builder == "flickr8k":
        from captiondata.builders.flickr8k import SPLIT_FILES, check_root, flickr8k_records

        root = flickr8k_root(cfg)
        check_root(root)
        return {
            split: flickr8k_records(root, split, limit=cfg.build_size if split == "train" else None)
            for split in SPLIT_FILES
        }
    raise ConfigError(
        f"data.builder={cfg.builder!r} builds nothing; point data.train_shards/test_shards at existing shards"
    )


ZEROSHOT_DIR = "zeroshot"


def split_folder(cfg: DataConfig, split: str) -> str:
    """Where a split's shards go: shard_dir, except the zero-shot split, which is laid out as a
    CLIP_benchmark webdataset folder (``zeroshot/test/{0..n-1}.tar`` + ``nshards.txt`` beside ``zeroshot/classnames.txt``
    and ``zeroshot_classification_templates.txt``): ``clip_benchmark eval --dataset wds/zeroshot --dataset_root
    SHARD_DIR/zeroshot`` reads it."""
    return os.path.join(cfg.shard_dir, ZEROSHOT_DIR, "test") if split == "zeroshot" else cfg.shard_dir


def write_extras(cfg: DataConfig) -> None:
    """Zero-shot class names and templates for the scenes' zero-shot split (CLIP_benchmark file names)."""
    if cfg.builder != "scenes":
        return
    from captiondata.builders import scenes
    from harness_infra.atomic import atomic_write_bytes

    folder = os.path.join(cfg.shard_dir, ZEROSHOT_DIR)
    atomic_write_bytes(
        os.path.join(folder, "classnames.txt"), ("\n".join(scenes.zeroshot_classnames()) + "\n").encode()
    )
    atomic_write_bytes(
        os.path.join(folder, "zeroshot_classification_templates.txt"),
        ("\n".join(scenes.zeroshot_templates()) + "\n").encode(),
    )


def build_shards(cfg: DataConfig, overwrite: bool = False) -> Dict[str, Any]:
    """Write every split's shards into cfg.shard_dir (skipped when already built with the same settings).

    Returns the build info: settings, per-split manifests and build seconds. A build that runs first removes the
    temporary ``.tmp-*`` files a killed earlier build left in the folder (the caller owns the folder: the data stage
    holds its lock). Raises ConfigError when the folder holds shards of other settings and ``overwrite`` is off.
    """
    info_path = os.path.join(cfg.shard_dir, BUILD_INFO)
    settings = builder_settings(cfg)
    if os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as handle:
            info = json.load(handle)
        if info.get("settings") == settings:
            log.info("shards in %s are up to date; build skipped", cfg.shard_dir)
            return info
        if not overwrite:
            raise ConfigError(
                f"{cfg.shard_dir} holds shards built with other settings ({info.get('settings')}); choose another data.shard_dir or rebuild with overwrite"
            )
    start = time.perf_counter()
    clear_partial_files(cfg.shard_dir, recursive=True)  # a killed build's unfinished shards: this build owns the folder
    manifests = {}
    for split, records in split_records(cfg).items():
        writer = ShardWriter(
            split_folder(cfg, split),
            split,
            max_count=cfg.samples_per_shard,
            overwrite=True,
            clip_benchmark=split == "zeroshot",
        )
        try:
            writer.write_all(records)
        except BaseException:
            writer.abort()
            raise
        manifests[split] = writer.close()
        log.info(
            "built %s/%s: %d samples in %d shards",
            cfg.shard_dir,
            split,
            manifests[split]["samples"],
            len(manifests[split]["shards"]),
        )
    write_extras(cfg)
    info = {"settings": settings, "manifests": manifests, "build_seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(info_path, info)
    return info
