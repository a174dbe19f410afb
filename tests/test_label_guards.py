"""A published row is what its label says: the realised mixture, caption coverage, layout fields, dotted keys, and
samples lost in evaluation; each example of issue 23 rebuilt with its input made here."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import random
import tarfile

import pytest
from conftest import jpeg_bytes

from captiondata.config import CaptionField, CaptionLayout, recap_datacomp_layout
from captiondata.counters import SampleCounters
from captiondata.reader import dotted_key_samples, iter_samples, raw_samples
from captiondata.realised import (
    Z_SCORE,
    check_fields,
    check_mixture,
    field_presence,
    needed_sources,
    realised_mixture,
    sum_epochs,
    tolerance,
)
from harness_infra.errors import ConfigError, LabelError


def write_tar(path: str, members) -> str:
    """A tar with the given (name, bytes) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# -- the realised mixture --------------------------------------------------------------------------------------------


def test_tolerance_is_five_binomial_sd_plus_one_count():
    assert tolerance(0.5, 10_000) == pytest.approx(5 * 0.005 + 1e-4)  # sd of a proportion at p = 0.5, n = 10,000: 0.005
    assert tolerance(0.0, 400) == pytest.approx(1 / 400) and tolerance(1.0, 400) == pytest.approx(1 / 400)
    assert math.isinf(tolerance(0.3, 0)) and Z_SCORE == 5.0


def counts(**values):
    base = {
        "trained": 0,
        "trained_original": 0,
        "trained_concat": 0,
        "read": 0,
        "drawn_original": 0,
        "drawn_recap": 0,
        "fallback_to_original": 0,
        "fallback_to_recap": 0,
        "no_original": 0,
        "no_recaption": 0,
    }
    return {**base, **values}


def honest_draws(p: float, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    return sum(rng.random() < p for _ in range(n))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_an_honest_mixture_passes_at_every_p(p):
    originals = honest_draws(p, 4000, seed=int(p * 10))
    mixture = realised_mixture(
        counts(
            trained=4000, trained_original=originals, read=4000, drawn_original=originals, drawn_recap=4000 - originals
        ),
        "mix",
        p,
    )
    check_mixture(mixture)
    assert mixture["realised_original_fraction"] == originals / 4000 and mixture["coverage"] == {
        "original": 1.0,
        "recaption": 1.0,
    }


def test_all_recaptions_failed_is_a_coverage_error_naming_the_counts_and_the_failures():
    # the 401 server: every sample fell back to its alt-text, 249 samples
    mixture = realised_mixture(
        counts(
            trained=249,
            trained_original=249,
            read=249,
            drawn_original=126,
            drawn_recap=123,
            fallback_to_original=123,
            no_recaption=249,
        ),
        "mix",
        0.5,
    )
    with pytest.raises(
        LabelError,
        match=r"recaption coverage 0\.0000 < min_coverage=0\.99 \(249 of 249 samples read had no recaption; "
        r"fallbacks to original 123.*recaption failures: server_error 249",
    ):
        check_mixture(mixture, {"server_error": 249, "timeout": 0})
    assert mixture["realised_original_fraction"] == 1.0


def test_a_recaption_gap_under_the_coverage_bound_passes_and_is_recorded():
    mixture = realised_mixture(
        counts(
            trained=1000,
            trained_original=0 + 5,
            read=1000,
            drawn_original=0,
            drawn_recap=1000,
            fallback_to_original=5,
            no_recaption=5,
        ),
        "mix",
        0.0,
    )
    check_mixture(mixture)  # coverage 0.995 >= 0.99: the row is published, its realised p shown beside the label
    assert mixture["realised_original_fraction"] == 0.005 and mixture["fallbacks"]["to_original"] == 5


def test_p_one_needs_no_recaptions_and_p_zero_no_originals():
    assert needed_sources("mix", 1.0) == {"original": True, "recaption": False}
    assert needed_sources("mix", 0.0) == {"original": False, "recaption": True}
    assert needed_sources("concat", None) == {"original": True, "recaption": True}
    check_mixture(
        realised_mixture(
            counts(trained=100, trained_original=100, read=100, drawn_original=100, no_recaption=100), "mix", 1.0
        )
    )
    with pytest.raises(LabelError, match="original coverage"):
        check_mixture(
            realised_mixture(
                counts(
                    trained=100,
                    trained_original=0,
                    read=100,
                    drawn_original=50,
                    drawn_recap=50,
                    fallback_to_recap=50,
                    no_original=100,
                ),
                "mix",
                0.5,
            )
        )


def test_a_coin_that_draws_one_minus_p_is_caught():
    n = 2000
    drawn = honest_draws(0.8, n)  # a mixer that compares u < 1 - p at p = 0.2
    mixture = realised_mixture(
        counts(trained=n, trained_original=drawn, read=n, drawn_original=drawn, drawn_recap=n - drawn), "mix", 0.2
    )
    with pytest.raises(LabelError, match=r"drew the original for 0\.7\d+ of 2000 draws"):
        check_mixture(mixture)


def test_a_realised_fraction_outside_noise_and_fallbacks_is_caught():
    # the coin is right but what was trained is not (a trainer that drops the recaption batches)
    mixture = realised_mixture(
        counts(trained=1000, trained_original=700, read=2000, drawn_original=1000, drawn_recap=1000), "mix", 0.5
    )
    with pytest.raises(LabelError, match=r"realised original fraction 0\.7000 over 1000 trained samples"):
        check_mixture(mixture)


def test_epoch_reports_are_summed_over_the_run():
    epochs = [
        {
            "samples": 100,
            "original_fraction": 0.25,
            "samples_read": 110,
            "drawn_original": 27,
            "drawn_recap": 83,
            "no_recaption": 2,
        },
        {"samples": 100, "original_fraction": 0.35, "samples_read": 100, "drawn_original": 35, "drawn_recap": 65},
    ]
    total = sum_epochs(epochs)
    assert (
        total["trained"],
        total["trained_original"],
        total["read"],
        total["drawn_original"],
        total["no_recaption"],
    ) == (200, 60, 210, 62, 2)


def test_a_source_without_caption_counts_is_recorded_unchecked():
    mixture = realised_mixture(counts(trained=64, read=64), "mix", 0.5)
    check_mixture(mixture)
    assert mixture["checked"] is False and "no caption draws" in mixture["why"]


# -- the layout's fields ---------------------------------------------------------------------------------------------


def img2dataset_shard(path: str, n: int, extra=None) -> str:
    """Stock img2dataset webdataset output: KEY.jpg, KEY.txt (the caption column), KEY.json (caption, url, key, status,
    sha256 of the downloaded bytes, width, height...)."""
    members = []
    for i in range(n):
        key = f"{i:09d}"
        meta = {
            "caption": f"alt text {i}",
            "url": f"http://example.com/{i}.jpg",
            "key": key,
            "status": "success",
            "error_message": None,
            "width": 16,
            "height": 16,
            "original_width": 640,
            "original_height": 480,
            "exif": None,
            "sha256": f"{i:064x}",
            **(extra(i) if extra else {}),
        }
        members += [
            (f"{key}.jpg", jpeg_bytes(i)),
            (f"{key}.txt", f"alt text {i}".encode()),
            (f"{key}.json", json.dumps(meta).encode()),
        ]
    return write_tar(path, members)


def test_stock_img2dataset_shards_with_the_recap_datacomp_layout_stop_before_training(tmp_path):
    shard = img2dataset_shard(str(tmp_path / "00000.tar"), 64)
    layout = recap_datacomp_layout()  # original = json:org_caption, which stock shards do not have
    presence = field_presence([shard], layout)
    assert (presence["read"], presence["no_original"], presence["no_recaption"]) == (64, 64, 0)
    with pytest.raises(ConfigError) as error:
        check_fields(presence, layout, needed_sources("mix", 0.5))
    message = str(error.value)
    assert (
        "\n" not in message and "original caption (json:org_caption) is missing or empty in 64 of 64 samples" in message
    )
    assert "members jpg, json, txt" in message and "caption" in message and "data/layout=img2dataset" in message


def test_the_img2dataset_layouts_read_stock_shards(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "data", "layout")
    with initialize_config_dir(config_dir=conf, version_base=None):
        stock = CaptionLayout(**{**OmegaConf.to_object(compose("img2dataset")), "original": CaptionField(member="txt")})
        recap = OmegaConf.to_object(compose("recap_datacomp_img2dataset"))
    recap = CaptionLayout(
        original=CaptionField(**recap["original"]), recaptions=[CaptionField(**r) for r in recap["recaptions"]]
    )
    shard = img2dataset_shard(
        str(tmp_path / "00000.tar"), 20, extra=lambda i: {"re_caption": f"a detailed recaption {i}"}
    )
    records = list(iter_samples([shard], stock))
    assert [r.original for r in records] == [f"alt text {i}" for i in range(20)] and all(
        r.recaptions == [] for r in records
    )
    check_fields(field_presence([shard], stock), stock, needed_sources("mix", 1.0))
    with pytest.raises(ConfigError, match="recaption caption"):  # no recaption yet: p < 1 needs the recaption stage
        check_fields(field_presence([shard], stock), stock, needed_sources("mix", 0.5))
    records = list(iter_samples([shard], recap))
    assert [(r.original, r.recaptions) for r in records][:2] == [
        ("alt text 0", ["a detailed recaption 0"]),
        ("alt text 1", ["a detailed recaption 1"]),
    ]
    check_fields(field_presence([shard], recap), recap, needed_sources("mix", 0.5))


def test_a_small_share_of_missing_fields_passes(tmp_path):
    shard = img2dataset_shard(
        str(tmp_path / "00000.tar"), 200, extra=lambda i: {} if i == 7 else {"re_caption": f"recap {i}"}
    )
    layout = CaptionLayout(original=CaptionField("txt"), recaptions=[CaptionField("json", "re_caption")])
    presence = field_presence([shard], layout)
    assert presence["no_recaption"] == 1
    check_fields(presence, layout, needed_sources("mix", 0.0))  # 199 / 200 = 0.995 >= 0.99
    with pytest.raises(ConfigError, match="1 of 200"):
        check_fields(presence, layout, needed_sources("mix", 0.0), min_coverage=0.999)


# -- keys are webdataset's -------------------------------------------------------------------------------------------


def test_dotted_keys_are_counted_one_by_one(tmp_path):
    # webdataset#237: the key is everything before the FIRST dot of the base name
    shard = write_tar(
        str(tmp_path / "dots.tar"),
        [
            ("photo.v2.jpg", jpeg_bytes(1)),
            ("photo.v2.txt", b"a photo"),
            ("img.1.jpg", jpeg_bytes(2)),
            ("img.1.txt", b"one"),
            ("img.2.jpg", jpeg_bytes(3)),
            ("img.2.txt", b"two"),
            ("img.3.jpg", jpeg_bytes(4)),
            ("img.3.txt", b"three"),
            ("ok.jpg", jpeg_bytes(5)),
            ("ok.txt", b"fine"),
            ("ok.seg.png", jpeg_bytes(6)),  # an extra dotted member of an intact sample
        ],
    )
    counters = SampleCounters(max_workers=0)
    raws = list(raw_samples([shard], counters))
    totals = counters.totals()
    assert [r["__key__"] for r in raws] == ["ok"] and set(raws[0]) >= {"jpg", "txt", "seg.png"}
    assert totals["dotted_key"] == 4 and totals["missing_image"] == 0  # 1 read + 4 counted = the 5 samples of the tar
    layout = CaptionLayout(original=CaptionField("txt"), recaptions=[])
    counters = SampleCounters(max_workers=0)
    assert [r.key for r in iter_samples([shard], layout, counters)] == ["ok"] and counters.totals()["dotted_key"] == 4


def test_dotted_key_samples_counts_stems_with_an_image_extension():
    assert dotted_key_samples({"__key__": "a", "1.jpg": b"", "1.txt": b"", "2.png": b""}) == 2
    assert dotted_key_samples({"__key__": "a", "jpg": b"", "llava.txt": b"", "llava.json": b""}) == 0
    assert dotted_key_samples({"__key__": "a", "txt": b""}) == 0  # no image at all: decode_record counts missing_image


def clip_benchmark_classification(root: str, shards, n_per_shard: int, dotted_shard: int = -1) -> str:
    """A CLIP_benchmark webdataset classification set: test/{i}.tar with KEY.png + KEY.cls, classnames.txt."""
    os.makedirs(f"{root}/test", exist_ok=True)
    for shard in range(shards):
        members = []
        for i in range(n_per_shard):
            key = f"img.{i:06d}" if shard == dotted_shard else f"s{shard}_{i:06d}"
            label = (shard * n_per_shard + i) % 2
            members += [(f"{key}.png", jpeg_bytes(shard * 1000 + i)), (f"{key}.cls", str(label).encode())]
        write_tar(f"{root}/test/{shard}.tar", members)
    with open(f"{root}/test/nshards.txt", "w") as handle:
        handle.write(str(shards))
    with open(f"{root}/classnames.txt", "w") as handle:
        handle.write("red\nblue\n")
    with open(f"{root}/zeroshot_classification_templates.txt", "w") as handle:
        handle.write("a photo of a {c}.\n")
    return root


def tiny_clip():
    import open_clip
    import torch

    from evals.tasks.registry import ImageTextEmbedder

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**cfg).eval()
    from torchvision import transforms

    preprocess = transforms.Compose(
        [
            transforms.Resize(32),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),
        ]
    )
    return ImageTextEmbedder(model, open_clip.get_tokenizer("ViT-B-32", context_length=16), preprocess)


def test_an_evaluation_that_loses_a_third_of_its_set_fails_instead_of_publishing(tmp_path):
    from evals.tasks.config import EvalConfig, task_config
    from evals.tasks.suite import evaluate_checkpoint

    root = clip_benchmark_classification(str(tmp_path / "set"), shards=3, n_per_shard=20, dotted_shard=1)
    task = task_config(name="wds_cls", task="zeroshot_classification", format="clip_benchmark_wds", path=root)
    cfg = EvalConfig(
        tasks=[task],
        bootstrap_samples=10,
        permutation_samples=10,
        cache_dir=None,
        records_dir=str(tmp_path / "records"),
    )
    with pytest.raises(
        LabelError,
        match=r"eval task wds_cls: 20 of 60 samples lost \(33\.3% > eval\.max_lost_share=0\.01\): dotted_key 20",
    ):
        evaluate_checkpoint(tiny_clip(), cfg, checkpoint="tiny")
    assert not glob.glob(str(tmp_path / "records" / "*.json"))
    clean = clip_benchmark_classification(str(tmp_path / "clean"), shards=3, n_per_shard=20)
    cfg.tasks = [task_config(name="wds_cls", task="zeroshot_classification", format="clip_benchmark_wds", path=clean)]
    records = evaluate_checkpoint(tiny_clip(), cfg, checkpoint="tiny")
    assert records[0]["n"]["images"] == 60 and not records[0]["dataset"].get("skipped")


# -- end to end: the runner publishes nothing whose label is false ---------------------------------------------------


def test_a_parquet_missing_half_the_keys_publishes_nothing_and_a_full_one_publishes_the_checked_mixture(
    tmp_path, capsys
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.cli import main
    from recaption.shards import read_done  # noqa: F401  (the recaption stage's completion files exist either way)

    root = str(tmp_path)
    common = [
        "+experiment=clip_smoke",
        "data.build_size=120",
        "train.stages.0.samples=64",
        "train.stages.0.batch_size=32",
        "eval.tasks.0.max_samples=40",
        "eval.tasks.1.max_samples=40",
        "eval.bootstrap_samples=20",
        "eval.permutation_samples=50",
        f"run.out_root={root}/runs",
        f"run.results_dir={root}/results",
    ]
    assert main([*common, "run.stop_after=data"]) == 0
    keys = [
        r["__key__"]
        for r in raw_samples(sorted(glob.glob(f"{root}/runs/data/*/train-*.tar")), SampleCounters(max_workers=0))
    ]
    assert len(keys) >= 100
    pq.write_table(
        pa.table({"key": keys[::2], "re_caption": [f"released recaption {k}" for k in keys[::2]]}),
        f"{root}/half.parquet",
    )
    pq.write_table(
        pa.table({"key": keys, "re_caption": [f"released recaption {k}" for k in keys]}), f"{root}/full.parquet"
    )
    recap = ["+recaption=precomputed", "run.stages=[data,recaption,train,eval,tables]", "mix.p=0.5"]
    capsys.readouterr()
    assert main([*common, *recap, f"recaption.precomputed.parquet=[{root}/half.parquet]"]) == 4
    err = capsys.readouterr().err
    line = next(text for text in err.splitlines() if text.startswith("error:"))
    assert f"{len(keys[::2])} of {len(keys)} train samples have a recaption" in line and "not_in_parquet" in line
    assert not glob.glob(f"{root}/results/records/*.json")

    assert main([*common, *recap, f"recaption.precomputed.parquet=[{root}/full.parquet]"]) == 0
    record = json.load(open(sorted(glob.glob(f"{root}/results/records/*.json"))[0]))
    run = record["run"]
    epochs = [json.loads(text) for d in glob.glob(f"{root}/runs/train/*/epochs.jsonl") for text in open(d)]
    trained = sum(e["samples"] for e in epochs)
    originals = sum(round(e["original_fraction"] * e["samples"]) for e in epochs)
    assert run["p"] == 0.5 and run["realised_p"] == pytest.approx(originals / trained)
    assert run["mixture"]["coverage"] == {"original": 1.0, "recaption": 1.0} and run["mixture"]["checked"] is True
    assert run["recaption"]["train"]["coverage"] == 1.0 and run["recaption"]["train"]["failed"] == {}
    table = open(f"{root}/results/scenes.md").read()
    assert f"0.5 (realised {originals / trained:.4f})" in table or f"{originals / trained:.4f}" == "0.5000"
