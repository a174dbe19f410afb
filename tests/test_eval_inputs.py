"""Evaluation inputs decoded and identified right (issue 14, items 3, 5, 8 and 9): templates and class names checked on
load, text read as the training reader reads it (skipped and counted, never replaced), identities by content, class
folders with corrupt images and out-of-range labels."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import Counter

import pytest
from eval_helpers import (
    caption_records,
    jpeg,
    random_image,
    tiny_clip,
    write_caption_folder,
    write_cb_classification,
    write_cb_retrieval,
    write_image_folder,
    write_project_shards,
)

from captiondata.decode import BadSample
from evals.tasks.config import EvalConfig, ZeroShotTaskConfig
from evals.tasks.datasets import (
    caption_folder,
    check_labels,
    clip_benchmark_wds,
    dataset_labels,
    image_folder,
    open_eval_dataset,
    project_shards,
    task_fingerprint,
)
from evals.tasks.embeddings import encode_images
from evals.tasks.prompts import (
    check_template,
    duplicate_names,
    imagenet_classnames,
    load_classnames,
    load_templates,
    read_classnames,
    render,
)
from harness_infra.errors import ConfigError
from harness_infra.identity import file_identity, file_sha256, files_fingerprint

CFG = dict(batch_size=8, bootstrap_samples=0, cache_dir=None)


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0)


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The error message, asserted to be one line."""
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- item 3: templates and class names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, problem",
    [
        ("a photo of a {}.", "{}"),
        ("a {x} of a {c}.", "{x}"),
        ("a photo of a {0}.", "{0}"),
        ("a photo of a {c.upper}.", "{c.upper}"),
        ("a photo of a {c", "unbalanced"),
        ("a photo of a c}.", "unbalanced"),
        ("a photo of an object.", "no {c} placeholder"),
    ],
)
def test_bad_templates_are_one_line_config_errors(tmp_path, template, problem):
    path = tmp_path / "templates.txt"
    path.write_text(f"a photo of a {{c}}.\n{template}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_templates(str(path))
    assert problem in one_line(exc) and str(path) in str(exc.value)
    with pytest.raises(ConfigError):  # never a raw IndexError/KeyError/ValueError from str.format
        render(template, "cat")
    assert render("{{literal}} a {c}", "cat") == "{literal} a cat"


def test_a_data_sets_own_template_file_is_named_in_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RECAP_DATA_ROOT", str(tmp_path))
    write_cb_classification(str(tmp_path / "set"), [0, 1], ["cat", "dog"], ["a photo of a {}."])
    with pytest.raises(
        ConfigError, match="zeroshot_classification_templates.txt: template 'a photo of a {}.' has the field"
    ):
        open_eval_dataset(ZeroShotTaskConfig(name="s", format="clip_benchmark_wds", path="set"))
    assert open_eval_dataset(
        ZeroShotTaskConfig(name="s", format="clip_benchmark_wds", path="set", templates="photo")
    ).templates == ["a photo of a {c}."]


def test_template_without_placeholder_no_longer_scores_perfectly(tiny, tmp_path):
    from evals.tasks.zeroshot import evaluate_zeroshot_classification

    model, tokenizer, preprocess = tiny
    data = clip_benchmark_wds(write_cb_classification(str(tmp_path), [0, 1, 2] * 3, ["cat", "dog", "eel"]), "test")
    with pytest.raises(ConfigError, match="no {c} placeholder"):  # every class got the same prompt: top-1 was 1.0
        evaluate_zeroshot_classification(
            model, tokenizer, preprocess, data, EvalConfig(**CFG), templates=["a photo of an animal."]
        )


def test_template_file_bom_blank_lines_and_duplicates(tmp_path, caplog):
    path = tmp_path / "templates.txt"
    path.write_bytes("\ufeffa photo of a {c}.\n\n   \nart of the {c}.\na photo of a {c}.\n".encode("utf-8"))
    with caplog.at_level(logging.WARNING):
        assert load_templates(str(path)) == ["a photo of a {c}.", "art of the {c}."]
    assert "1 duplicate templates dropped" in caplog.text
    callables = load_templates("openai_imagenet")  # open_clip's callables stay supported
    assert len(callables) == 80 and render(callables[0], "cat") == "a bad photo of a cat."
    with pytest.raises(ConfigError, match="does not return a string containing the class name"):
        check_template(lambda c: "a photo")


def test_classnames_bom_blank_lines_duplicates_and_encoding(tmp_path, caplog):
    path = tmp_path / "classnames.txt"
    path.write_bytes("\ufeffcat\ndog\ncrane\nCrane \n\n\n".encode("utf-8"))
    with caplog.at_level(logging.WARNING):
        assert read_classnames(str(path)) == ["cat", "dog", "crane", "Crane"]
    assert "'crane' at [2, 3]" in caplog.text
    assert duplicate_names(["cat", "dog", "crane", "Crane"]) == {"crane": [2, 3]}
    path.write_bytes(b"cat\n\ndog\n")
    with pytest.raises(ConfigError, match="line 2 is blank"):  # dropping it would shift every later class index
        read_classnames(str(path))
    path.write_bytes("cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="line 2 is not UTF-8") as exc:
        load_classnames(str(path))
    one_line(exc)
    names = imagenet_classnames()
    counts = Counter(n.casefold() for n in names)
    assert duplicate_names(names) == {
        n: [i for i, m in enumerate(names) if m.casefold() == n] for n, k in counts.items() if k > 1
    }
    assert duplicate_names(names) == {"missile": [657, 744], "sunglasses": [836, 837]}


def test_clip_benchmark_classnames_lose_their_bom(tmp_path):
    root = write_cb_classification(str(tmp_path), [0, 1], ["cat", "dog"])
    (tmp_path / "classnames.txt").write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert clip_benchmark_wds(root, "test").classes == ["cat", "dog"]


# --- item 5: text read as the training reader reads it -------------------------------------------------------------


def write_tar(path, samples):
    """A tar of {key: {suffix: bytes}} samples."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_retrieval_skips_and_counts_undecodable_and_empty_captions(tmp_path):
    os.makedirs(tmp_path / "test")
    image = jpeg(random_image(0))
    write_tar(
        tmp_path / "test" / "0.tar",
        {
            "a": {"jpg": image, "txt": "caf&eacute; &amp; bar\n\x00\n  two   spaces ".encode("utf-8")},
            "b": {"jpg": image, "txt": "caf\xe9s".encode("latin-1")},
            "c": {"jpg": image, "txt": b"&nbsp;\n\x00"},
            "d": {"jpg": image},
            "e": {"jpg": image, "txt": "\ufeffplain".encode("utf-8")},
        },
    )
    data = clip_benchmark_wds(str(tmp_path), "test", kind="retrieval")
    assert [captions for _, captions in data] == [["café & bar", "two spaces"], ["plain"]]  # never 'caf\ufffds'
    assert data.describe()["skipped"] == {"non_utf8_text": 1, "empty_caption": 1, "missing_caption": 1}


def test_webdataset_labels_and_caption_folders_count_bad_text(tmp_path):
    os.makedirs(tmp_path / "cls" / "test")
    image = jpeg(random_image(0))
    write_tar(
        tmp_path / "cls" / "test" / "0.tar",
        {
            "a": {"jpg": image, "cls": b" 1\n"},
            "b": {"jpg": image, "cls": b"\xff1"},
            "c": {"jpg": image, "cls": b"one"},
            "d": {"jpg": image},
        },
    )
    (tmp_path / "cls" / "classnames.txt").write_text("x\ny\n")
    data = clip_benchmark_wds(str(tmp_path / "cls"), "test")
    assert [label for _, label in data] == [1]
    assert data.describe()["skipped"] == {"non_utf8_text": 1, "bad_label": 2}
    root = write_caption_folder(str(tmp_path / "urban"), ["a long caption", "x", "y", "z"])
    (tmp_path / "urban" / "caption" / "0001.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "urban" / "caption" / "0002.txt").write_bytes(b"&nbsp;\x00")
    os.remove(tmp_path / "urban" / "caption" / "0003.txt")
    folder = caption_folder(root)
    assert folder.targets == [["a long caption"]]
    assert folder.describe()["skipped"] == {"non_utf8_text": 1, "empty_caption": 1, "missing_caption": 1}


def test_flickr8k_token_file_with_bom_and_entities(tmp_path):
    from evals.tasks.datasets import flickr8k

    os.makedirs(tmp_path / "images")
    for i in range(3):
        random_image(i).save(tmp_path / "images" / f"im{i}.jpg")
    (tmp_path / "Flickr8k.token.txt").write_bytes(
        "\ufeffim0.jpg#0\tA dog &amp; a cat .\nim1.jpg#0\t&nbsp;\nim2.jpg#0\tA bird .\n".encode("utf-8")
    )
    (tmp_path / "Flickr_8k.testImages.txt").write_bytes("\ufeffim0.jpg\nim1.jpg\nim2.jpg\n".encode("utf-8"))
    data = flickr8k(str(tmp_path), "test")
    assert data.targets == [["A dog & a cat ."], ["A bird ."]] and data.describe()["skipped"] == {"empty_caption": 1}


# --- item 8: identity by content -------------------------------------------------------------------------------------


def edit_member_in_place(tar_path: str, member: str, old: bytes, new: bytes) -> None:
    """Overwrite bytes of one tar member's data without changing any size (tar members are padded to 512 bytes)."""
    assert len(old) == len(new)
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(member)
    with open(tar_path, "r+b") as handle:
        handle.seek(info.offset_data)
        data = handle.read(info.size)
        assert old in data
        handle.seek(info.offset_data)
        handle.write(data.replace(old, new, 1))


def test_editing_a_label_in_place_changes_the_identity_and_the_evaluated_targets(tiny, tmp_path):
    model, _, preprocess = tiny
    root = write_cb_classification(str(tmp_path / "set"), [0, 1, 2, 1], ["cat", "dog", "eel"], per_shard=4)
    cfg = EvalConfig(**{**CFG, "cache_dir": str(tmp_path / "cache")})
    before = clip_benchmark_wds(root, "test")
    _, targets = encode_images(model, preprocess, before, cfg)
    assert targets == [0, 1, 2, 1]
    shard = os.path.join(root, "test", "0.tar")
    size = os.path.getsize(shard)
    edit_member_in_place(shard, "s000001.cls", b"1", b"2")
    assert os.path.getsize(shard) == size
    after = clip_benchmark_wds(root, "test")
    assert after.fingerprint != before.fingerprint
    _, targets = encode_images(model, preprocess, after, cfg)
    assert targets == [0, 2, 2, 1]  # not the cached [0, 1, 2, 1]


def test_editing_captions_in_place_changes_the_identity_and_the_targets(tiny, tmp_path):
    model, _, preprocess = tiny
    root = write_cb_retrieval(str(tmp_path / "ret"), [["a dog runs"], ["a cat sits", "on a mat"]], per_shard=2)
    cfg = EvalConfig(**{**CFG, "cache_dir": str(tmp_path / "cache")})
    before = clip_benchmark_wds(root, "test", kind="retrieval")
    assert encode_images(model, preprocess, before, cfg)[1] == [["a dog runs"], ["a cat sits", "on a mat"]]
    edit_member_in_place(os.path.join(root, "test", "0.tar"), "s000000.txt", b"dog", b"owl")
    after = clip_benchmark_wds(root, "test", kind="retrieval")
    assert after.fingerprint != before.fingerprint
    assert encode_images(model, preprocess, after, cfg)[1] == [["a owl runs"], ["a cat sits", "on a mat"]]


def test_every_file_set_identity_follows_content(tmp_path):
    folder = write_image_folder(str(tmp_path / "folder"), ["a", "b"], 2)
    before = image_folder(folder, "test").fingerprint
    path = os.path.join(folder, "test", "a", "0001.jpg")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, one byte of entropy-coded data flipped
    open(path, "wb").write(bytes(data))
    assert image_folder(folder, "test").fingerprint != before
    captions = write_caption_folder(str(tmp_path / "urban"), ["a red car", "a blue bus"])
    before = caption_folder(captions).fingerprint
    (tmp_path / "urban" / "caption" / "0000.txt").write_text("a tan car\n")
    assert caption_folder(captions).fingerprint != before
    spec = write_project_shards(str(tmp_path / "proj"), caption_records(3), per_shard=3)
    before = project_shards(spec).fingerprint
    edit_member_in_place(str(tmp_path / "proj" / "test-000000.tar"), "k00001.txt", b"photo 1", b"photo 9")
    assert project_shards(spec).fingerprint != before
    task = ZeroShotTaskConfig(name="t", path=folder, templates="photo")
    assert task_fingerprint(task) != task_fingerprint(ZeroShotTaskConfig(name="t", path=folder, templates="cifar"))
    assert task_fingerprint(task) != task_fingerprint(
        ZeroShotTaskConfig(name="t", path=folder, templates="photo", exif_transpose=False)
    )


def test_content_hash_memo_is_not_fooled_by_restored_mtime(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abcd")
    os.utime(path, ns=(10**18, 10**18))  # an old mtime: eligible for the memo...
    first = file_sha256(str(path))
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"abce"[:4])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and rsync -t / touch -r put the mtime back
    assert os.path.getsize(path) == 4 and file_sha256(str(path)) != first  # ctime moved: re-hashed
    assert file_identity("https://host/x/0.tar") == ["https://host/x/0.tar", -1]  # remote: the spec, never fetched
    assert files_fingerprint(["s3://bucket/0.tar", "pipe:cat 0.tar"]) == files_fingerprint(
        ["pipe:cat 0.tar", "s3://bucket/0.tar"]
    )


# --- item 9: class folders -------------------------------------------------------------------------------------------


def test_corrupt_image_in_a_class_folder_is_skipped_and_counted_like_webdataset(tiny, tmp_path):
    from evals.tasks.zeroshot import evaluate_zeroshot_classification

    model, tokenizer, preprocess = tiny
    folder = write_image_folder(str(tmp_path / "folder"), ["cat", "dog"], 3)
    with open(os.path.join(folder, "test", "dog", "0001.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 not a jpeg")
    cfg = EvalConfig(**CFG)
    data = image_folder(folder, "test")
    data.templates = ["a photo of a {c}."]
    result = evaluate_zeroshot_classification(model, tokenizer, preprocess, data, cfg)
    assert result.n["images"] == 5 and result.dataset["skipped"] == {"corrupt_image": 1}
    cached = EvalConfig(**{**CFG, "cache_dir": str(tmp_path / "cache")})
    for _ in range(2):  # computed, then a cache hit: the record counts the skipped image both times
        again = image_folder(folder, "test")
        again.templates = ["a photo of a {c}."]
        result = evaluate_zeroshot_classification(model, tokenizer, preprocess, again, cached)
        assert result.n["images"] == 5 and result.dataset["skipped"] == {"corrupt_image": 1}
    os.makedirs(tmp_path / "wds" / "test")
    write_tar(
        tmp_path / "wds" / "test" / "0.tar",
        {
            f"s{i}": {
                "jpg": jpeg(random_image(i)) if i != 4 else b"\xff\xd8\xff\xe0 not a jpeg",
                "cls": str(i // 3).encode(),
            }
            for i in range(6)
        },
    )
    (tmp_path / "wds" / "classnames.txt").write_text("cat\ndog\n")
    wds = clip_benchmark_wds(str(tmp_path / "wds"), "test")
    wds.templates = ["a photo of a {c}."]
    result = evaluate_zeroshot_classification(model, tokenizer, preprocess, wds, cfg)
    assert result.n["images"] == 5 and result.dataset["skipped"] == {"corrupt_image": 1}


def test_corrupt_images_skip_with_loader_workers_too(tiny, tmp_path):
    model, _, preprocess = tiny
    folder = write_image_folder(str(tmp_path / "folder"), ["cat", "dog"], 4)
    for name in ("cat/0000.jpg", "dog/0003.jpg"):
        with open(os.path.join(folder, "test", name), "wb") as handle:
            handle.write(b"GIF89a broken")
    data = image_folder(folder, "test")
    embeddings, targets = encode_images(
        model, preprocess, data, EvalConfig(**{**CFG, "batch_size": 2, "num_workers": 2})
    )
    assert targets == [0, 0, 0, 1, 1, 1] and embeddings.shape[0] == 6
    assert data.describe()["skipped"] == {"corrupt_image": 2}
    os.makedirs(tmp_path / "wds" / "test")
    for shard in range(2):  # one bad sample per shard: each worker counts its own
        write_tar(
            tmp_path / "wds" / "test" / f"{shard}.tar",
            {f"s{shard}{i}": {"jpg": jpeg(random_image(i)) if i else b"GIF89a broken", "cls": b"1"} for i in range(3)},
        )
    (tmp_path / "wds" / "classnames.txt").write_text("cat\ndog\n")
    wds = clip_benchmark_wds(str(tmp_path / "wds"), "test")
    embeddings, targets = encode_images(
        model, preprocess, wds, EvalConfig(**{**CFG, "batch_size": 2, "num_workers": 2})
    )
    assert targets == [1, 1, 1, 1] and wds.describe()["skipped"] == {"corrupt_image": 2}


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_out_of_range_label_fails_before_any_image_is_encoded(tiny, tmp_path, monkeypatch, bad):
    from evals.tasks import datasets
    from evals.tasks.zeroshot import evaluate_zeroshot_classification

    model, tokenizer, preprocess = tiny
    root = write_cb_classification(
        str(tmp_path / "set"), [0, 1, bad, 2, 1], ["cat", "dog", "eel"], ["a photo of a {c}."]
    )
    data = clip_benchmark_wds(root, "test")
    monkeypatch.setattr(datasets, "decode_image", lambda *a, **k: pytest.fail("an image was decoded"))
    monkeypatch.setattr(model, "encode_image", lambda *a, **k: pytest.fail("an image was encoded"))
    assert dataset_labels(data).tolist() == [0, 1, bad, 2, 1]  # labels only, no image decoded
    with pytest.raises(ConfigError) as exc:
        evaluate_zeroshot_classification(model, tokenizer, preprocess, data, EvalConfig(**CFG))
    message = one_line(exc)
    assert f"label {bad} is outside [0, 3)" in message and "set-test" in message and "3 class names" in message


def test_class_folder_labels_are_checked_against_the_class_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RECAP_DATA_ROOT", str(tmp_path))
    write_image_folder(str(tmp_path / "tiny"), ["a", "b", "c"], 1)
    (tmp_path / "names.txt").write_text("alpha\nbeta\n")
    data = open_eval_dataset(
        ZeroShotTaskConfig(name="tiny3", path="tiny", classnames=str(tmp_path / "names.txt"), templates="photo")
    )
    with pytest.raises(ConfigError, match="tiny3: label 2 is outside"):
        check_labels(data, len(data.classes))
    check_labels(data, 3)
    assert data.describe()["classes_fingerprint"] and data.describe()["templates_fingerprint"]


def test_bad_sample_reasons_are_known_counters():
    from captiondata.counters import SKIP_REASONS

    assert {"bad_label", "non_utf8_text", "empty_caption", "missing_caption", "corrupt_image"} <= set(SKIP_REASONS)
    assert BadSample("corrupt_image").reason in SKIP_REASONS
