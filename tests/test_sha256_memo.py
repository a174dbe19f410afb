"""The cross-process sha256 memo (harness_infra.identity.DiskMemo): a second process answers from it without reading
the file, any change of the file's stat identity misses it, and a broken memo never stops hashing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

from harness_infra import identity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process in which reading any file's bytes for hashing raises: only the memo can answer.
NO_READ = textwrap.dedent(
    """
    import hashlib, sys
    from harness_infra import identity
    identity.RACY_NS = 0
    def refuse(*args, **kwargs):
        raise AssertionError("the file was read")
    hashlib.sha256 = refuse
    hashlib.file_digest = refuse
    print(identity.file_sha256(sys.argv[1]))
    """
)


def in_fresh_process(memo: str, path: str, script: str = NO_READ) -> subprocess.CompletedProcess:
    env = {**os.environ, identity.MEMO_ENV: memo, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", script, path], env=env, capture_output=True, text=True, timeout=120)


def old_file(path, data: bytes) -> str:
    path.write_bytes(data)
    os.utime(path, ns=(10**18, 10**18))
    return str(path)


def test_a_second_process_answers_from_the_memo_without_reading_the_file(tmp_path, monkeypatch):
    memo = str(tmp_path / "memo" / "sha256.sqlite3")
    path = old_file(tmp_path / "shard.tar", b"x" * 5000)
    first = in_fresh_process(
        memo, path, NO_READ.replace("hashlib.sha256 = refuse\n", "").replace("hashlib.file_digest = refuse\n", "")
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == hashlib.sha256(b"x" * 5000).hexdigest()
    second = in_fresh_process(memo, path)
    assert second.returncode == 0, second.stderr  # no read: the memo answered
    assert second.stdout.strip() == first.stdout.strip()
    with open(path, "r+b") as handle:  # the same size, the mtime put back: ctime moved, so the memo misses
        handle.write(b"y")
    os.utime(path, ns=(10**18, 10**18))
    third = in_fresh_process(memo, path)
    assert third.returncode != 0 and "the file was read" in third.stderr


def test_memo_off_or_broken_never_stops_hashing(tmp_path, monkeypatch, caplog):
    path = old_file(tmp_path / "f.bin", b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    monkeypatch.setenv(identity.MEMO_ENV, "off")
    assert identity.memo_path() is None and identity.disk_memo() is None
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the memo's folder should be")
    monkeypatch.setenv(identity.MEMO_ENV, str(blocker / "memo.sqlite3"))
    monkeypatch.setattr(identity, "_SHA256_MEMO", {})
    assert identity.file_sha256(path) == expected
    assert identity.disk_memo().broken and "sha256 memo" in caplog.text


def test_the_default_memo_lives_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(identity.MEMO_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert identity.memo_path() == os.path.join(str(tmp_path), "recap-harness", "sha256-memo.sqlite3")
