"""Hostile inputs: each one is skipped and counted (or a one-line config error), the good samples all read."""

import io
import json
import subprocess
import sys
import tarfile

from captiondata.counters import SampleCounters
from captiondata.reader import raw_samples


def _member(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _tar(members, path, mode="w"):
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            tar.addfile(*_member(name, data))


def _keys(path, **kw):
    counters = SampleCounters(max_workers=0)
    keys = [raw["__key__"] for raw in raw_samples([str(path)], counters, **kw)]
    return keys, counters.totals()


def test_gzip_member_over_cap_is_skipped_and_counted(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(*_member("a.txt", b"good a"))
        info = tarfile.TarInfo("b.txt")
        info.size = 64 << 20  # 64 MiB of zeros, 64 KB compressed
        tar.addfile(info, io.BytesIO(bytes(info.size)))
        tar.addfile(*_member("c.txt", b"good c"))
    keys, totals = _keys(path, max_member_bytes=1 << 20)
    assert keys == ["a", "c"]
    assert totals["member_too_large"] == 1 and totals["truncated_tar"] == 0


def test_uncompressed_member_over_cap_is_skipped(tmp_path):
    path = tmp_path / "big.tar"
    _tar([("a.txt", b"x"), ("b.txt", bytes(3000)), ("c.txt", b"y")], path)
    keys, totals = _keys(path, max_member_bytes=1000)
    assert keys == ["a", "c"] and totals["member_too_large"] == 1


def test_base256_size_header_is_counted_not_overflow(tmp_path):
    path = tmp_path / "b256.tar"
    _tar([("a.txt", b"x"), ("b.txt", b"y")], path)
    data = bytearray(path.read_bytes())
    header = 1024  # second member's header (a: 512 header + 512 data)
    data[header + 124 : header + 136] = b"\x80" + (1 << 80).to_bytes(11, "big")
    data[header + 148 : header + 156] = b"        "
    data[header + 148 : header + 156] = b"%06o\0 " % sum(data[header : header + 512])
    path.write_bytes(bytes(data))
    keys, totals = _keys(path)
    assert keys == ["a"] and totals["truncated_tar"] == 1


def test_deep_and_huge_int_json_counted_as_bad_json(tmp_path):
    from captiondata.config import project_layout
    from captiondata.reader import iter_samples

    path = tmp_path / "json.tar"
    deep = ("[" * 100000 + "]" * 100000).encode()
    huge = b'{"caption": "x", "n": ' + b"9" * 5000 + b"}"
    layout = project_layout()
    members = []
    for key, payload in (("a", None), ("b", deep), ("c", huge), ("d", None)):
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, "PNG")
        members.append((f"{key}.png", buffer.getvalue()))
        members.append((f"{key}.txt", b"caption"))
        members.append((f"{key}.json", payload if payload is not None else json.dumps({"k": 1}).encode()))
    _tar(members, path)
    counters = SampleCounters(max_workers=0)
    _ = layout
    keys = [r.key for r in iter_samples(str(path), _layout_reading_json(), counters)]
    assert keys == ["a", "d"] and counters.totals()["bad_json"] == 2


def _layout_reading_json():
    from captiondata.config import CaptionField, CaptionLayout

    return CaptionLayout(
        image_members=["png"], original=CaptionField(member="json", field="k"), recaptions=[CaptionField(member="txt")]
    )


def test_plus_cannot_add_unknown_key_through_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "evals.run", "+experiment=clip_smoke", "run.stop_after=data", "+mix.probability=0.9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mix.probability" in lines[0] and lines[0].startswith("error:")
