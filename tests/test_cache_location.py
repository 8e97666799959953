"""Decoded images are cached under the data home ($ADAPTRAIN_DATA here), keyed by the archive's
content hash, never next to the input; the hash is remembered by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from adaptrain.data import data_home, default_root, load_arrays
from adaptrain.data import imagefolder as imf


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ADAPTRAIN_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


def make_archive(path: Path, shade: int = 0) -> Path:
    tree = path.parent / f"tree-{path.stem}-{shade}"
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            (tree / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), (40 * c + shade, 10 * i, 7)).save(tree / split / name / f"{i}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    shutil.rmtree(tree)
    return path


def count_decodes(monkeypatch) -> list:
    calls: list = []
    real = imf._decode
    monkeypatch.setattr(imf, "_decode", lambda s: calls.append(1) or real(s))
    return calls


def test_the_suite_never_writes_to_the_users_cache():
    assert os.environ.get("ADAPTRAIN_DATA")  # tests/conftest.py
    assert Path.home() / ".cache" not in data_home().parents


def test_data_home_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTRAIN_DATA", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data_home() == tmp_path / "a" and default_root("cifar10") == tmp_path / "a" / "cifar10"
    monkeypatch.delenv("ADAPTRAIN_DATA")
    assert data_home() == tmp_path / "x" / "adaptrain" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_home() == Path.home() / ".cache" / "adaptrain" / "data"


def test_an_archive_is_cached_in_the_data_home_by_content_hash(home, tmp_path, capsys, monkeypatch):
    archive = make_archive(tmp_path / "in" / "set.tar.gz")
    a = load_arrays("imagefolder", archive)
    assert list(archive.parent.iterdir()) == [archive]  # nothing next to the input
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = home / "decoded" / f"set.tar.gz-{imf._archive_key(sha)}.safetensors"
    assert sorted(p.name for p in (home / "decoded").iterdir()) == sorted([cache.name, imf.INDEX])
    err = capsys.readouterr().err
    assert f"decoding the images of {archive} once; cache: {cache}" in err
    assert "decoded 4 + 4 images" in err

    # a copy elsewhere (same bytes, another path and mtime) reuses the cache; said once
    calls = count_decodes(monkeypatch)
    copy = tmp_path / "elsewhere" / "set.tar.gz"
    copy.parent.mkdir()
    shutil.copyfile(archive, copy)
    b = load_arrays("imagefolder", copy)
    assert calls == [] and torch.equal(a.x_train, b.x_train)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"data: the images of {copy} as decoded earlier: {cache}"]
    load_arrays("imagefolder", copy)  # again in this process (a benchmark's next row): silent
    assert capsys.readouterr().err == ""


def test_the_hash_is_remembered_by_path_size_and_mtime(home, tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "in" / "set.tar.gz")
    load_arrays("imagefolder", archive)
    index = imf._read_index(home / "decoded")
    entry = index[str(archive.resolve())]
    assert entry["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert entry["size"] == archive.stat().st_size and entry["cache"].startswith("set.tar.gz-")

    # same path, size and mtime: the remembered hash is used without reading the file
    monkeypatch.setattr(imf, "open", lambda *a, **k: pytest.fail("rehashed"), raising=False)
    assert imf.content_hash(archive, index) == entry["sha256"]
    monkeypatch.setattr(imf, "open", open, raising=False)
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert imf.content_hash(archive, index) == entry["sha256"]  # touched: rehashed, same bytes


def test_a_changed_archive_is_decoded_again_and_its_old_cache_removed(home, tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "in" / "set.tar.gz")
    a = load_arrays("imagefolder", archive)
    (old,) = (home / "decoded").glob("*.safetensors")
    make_archive(tmp_path / "new" / "set.tar.gz", shade=3).replace(archive)
    calls = count_decodes(monkeypatch)
    b = load_arrays("imagefolder", archive)
    assert len(calls) == 8 and not torch.equal(a.x_train, b.x_train)
    (new,) = (home / "decoded").glob("*.safetensors")
    assert new != old


def test_a_folder_is_not_written_into(home, tmp_path):
    archive = make_archive(tmp_path / "in" / "set.tar.gz")
    folder = tmp_path / "folder"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    load_arrays("imagefolder", folder)
    load_arrays("imagefolder", folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert len(list((home / "decoded").glob("imagefolder-*.safetensors"))) == 1
