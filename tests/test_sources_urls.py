"""Images behind URLs (fsspec): listed and decoded as the same files on disk are, fingerprinted
from the listing, and bad URLs named in one line."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

import zoolens
from zoolens.cli import app
from zoolens.errors import InputError
from zoolens.sources import folder_source, open_source
from zoolens.sources.base import BadImage

SPEC = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"


@pytest.fixture
def bucket():
    """A fresh in-memory "bucket" (fsspec's memory filesystem), removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex[:8]}"
    yield fs, root
    fs.rm(root, recursive=True)


def _upload(fs, folder: Path, root: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fs.pipe(f"{root}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def _outcome(source, i):
    try:
        d = source.decode(i)
    except BadImage as exc:
        return "skip", str(exc)
    return np.asarray(d.image).tobytes(), d.note


def test_a_url_prefix_lists_and_decodes_as_the_folder_does(bucket, messy_dir, photo_dir):
    fs, root = bucket
    _upload(fs, messy_dir, root)
    fs.pipe(f"{root}/.hidden/x.jpg", (messy_dir / "a_good.jpg").read_bytes())  # ignored
    on_disk, remote = folder_source(messy_dir), open_source(f"memory://{root}")
    assert remote.ids == on_disk.ids
    assert remote.skipped_at_listing == on_disk.skipped_at_listing  # the .txt, same reason
    assert [_outcome(remote, i) for i in range(len(remote))] == \
        [_outcome(on_disk, i) for i in range(len(on_disk))]  # pixels, conversions, skip reasons
    _upload(fs, photo_dir, root + "-classes")
    try:
        classes = open_source(f"memory://{root}-classes/")
        assert classes.labels == folder_source(photo_dir).labels == ["cat", "cup", "person"]
    finally:
        fs.rm(root + "-classes", recursive=True)


def test_extracting_from_a_url_equals_extracting_the_same_files(tmp_path, bucket, photo_dir):
    fs, root = bucket
    _upload(fs, photo_dir, root)
    kw = dict(layers="blocks.1", batch_size=2, num_workers=0, progress=False, pretrained=False,
              dtype="float32")
    local = zoolens.extract(SPEC, photo_dir, out=tmp_path / "local", **kw)
    remote = zoolens.extract(SPEC, f"memory://{root}", out=tmp_path / "remote", **kw)
    assert remote.ids == local.ids
    np.testing.assert_array_equal(np.array(remote.features(SPEC, "blocks.1")),
                                  np.array(local.features(SPEC, "blocks.1")))


def test_an_object_replaced_under_its_name_is_computed_again(tmp_path, bucket, photo_dir):
    fs, root = bucket
    _upload(fs, photo_dir, root)
    url = f"memory://{root}"
    kw = dict(layers="blocks.1", batch_size=1, chunk_size=1, num_workers=0, progress=False,
              dtype="float32", pretrained=False)
    first = zoolens.extract(SPEC, url, out=tmp_path / "s", **kw)
    before = np.array(first.features(SPEC, "blocks.1"))
    fs.pipe(f"{root}/cup/coffee.jpg", (photo_dir / "cat" / "chelsea.jpg").read_bytes())
    again = zoolens.extract(SPEC, url, out=tmp_path / "s", **kw)
    fresh = zoolens.extract(SPEC, url, out=tmp_path / "fresh", **kw)
    row = again.ids.index("cup/coffee.jpg")
    after = np.array(again.features(SPEC, "blocks.1"))
    assert np.abs(after[row] - before[row]).max() > 1e-3  # the new object's pixels
    np.testing.assert_array_equal(after[row], before[again.ids.index("cat/chelsea.jpg")])
    np.testing.assert_array_equal(after, np.array(fresh.features(SPEC, "blocks.1")))


def test_bad_urls_are_named(bucket):
    fs, root = bucket
    with pytest.raises(InputError, match="no such folder or prefix"):
        open_source(f"memory://{root}/nothing")
    with pytest.raises(InputError, match="Protocol not known: nosuchfs"):
        open_source("nosuchfs://bucket/photos")
    fs.pipe(f"{root}/notes.txt", b"text")
    with pytest.raises(InputError, match="holds no images.*1 other file$"):
        open_source(f"memory://{root}")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_protocol_without_its_package_says_what_to_install(tmp_path):
    res = CliRunner().invoke(app, ["extract", "-m", SPEC, "--no-pretrained", "-i",
                                   "s3://some-bucket/photos", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: images 's3://some-bucket/photos': "
                                               "Install s3fs to access S3"]
    assert not (tmp_path / "out").exists()


def test_lists_of_urls_on_disk_or_at_a_url(tmp_path, bucket, photo_dir):
    fs, root = bucket
    _upload(fs, photo_dir, root)
    folder = open_source(f"memory://{root}")
    rows = ["path,label"] + [f"memory://{root}/{i},{i.split('/')[0]}" for i in folder.ids]
    (tmp_path / "remote.csv").write_text("\n".join(rows) + "\n")
    listed = open_source(tmp_path / "remote.csv")  # a local CSV of URLs
    assert listed.ids == [f"memory://{root}/{i}" for i in folder.ids]
    assert listed.labels == ["cat", "cup", "person"]
    # fingerprints from one listing per folder equal those of the folder's own listing
    assert listed.item_fingerprints() == folder.item_fingerprints()
    assert [_outcome(listed, i) for i in range(3)] == [_outcome(folder, i) for i in range(3)]

    # a CSV at a URL, its rows relative to its folder; a .txt there too
    fs.pipe(f"{root}/index.csv", b"cat/chelsea.jpg,cat\nperson/astronaut.jpg,person\n")
    fs.pipe(f"{root}/lists/some.txt", b"../cup/coffee.jpg\n")
    at_url = open_source(f"memory://{root}/index.csv")
    assert at_url.ids == ["cat/chelsea.jpg", "person/astronaut.jpg"]
    assert at_url.labels == ["cat", "person"] and at_url.short_name() == "index"
    assert _outcome(at_url, 1) == _outcome(folder, folder.ids.index("person/astronaut.jpg"))
    fs.pipe(f"{root}/lists/some.txt", f"memory://{root}/cup/coffee.jpg\n".encode())
    assert open_source(f"memory://{root}/lists/some.txt").ids == [f"memory://{root}/cup/coffee.jpg"]

    # an object the list names but the store lacks: fingerprinted missing, skipped when read
    gone = open_source([f"memory://{root}/cat/chelsea.jpg", f"memory://{root}/cat/gone.jpg"])
    assert gone.item_fingerprints()[1] == "missing"
    assert _outcome(gone, 1) == ("skip", "file not found")

    (tmp_path / "mixed.csv").write_text(f"memory://{root}/cat/chelsea.jpg,a\nlocal.jpg,b\n")
    with pytest.raises(InputError, match="mixes URLs and local paths"):
        open_source(tmp_path / "mixed.csv")


def test_a_local_list_keeps_full_paths_as_ids(tmp_path, photo_dir):
    (tmp_path / "list.txt").write_text(f"{photo_dir / 'cat' / 'chelsea.jpg'}\nrel.jpg\n")
    assert open_source(tmp_path / "list.txt").ids == [str(photo_dir / "cat" / "chelsea.jpg"),
                                                      str(tmp_path / "rel.jpg")]


def test_a_failed_read_is_tried_again_before_the_image_is_skipped(bucket, photo_dir,
                                                                  monkeypatch):
    import zoolens.sources.urls as urls

    fs, root = bucket
    _upload(fs, photo_dir, root)
    source = open_source(f"memory://{root}")
    want = _outcome(source, 0)
    real, calls = fsspec.open, []

    def flaky(url, *a, **kw):  # fails `failures` times, then reads
        calls.append(url)
        if len(calls) <= failures:
            raise ConnectionError("connection reset by peer")
        return real(url, *a, **kw)

    monkeypatch.setattr(urls, "_RETRY_WAITS", (0.0, 0.0))
    monkeypatch.setattr(fsspec, "open", flaky)
    failures = 2
    assert _outcome(source, 0) == want and len(calls) == 3
    calls.clear()
    failures = 3
    assert _outcome(source, 0) == ("skip", "cannot read after 3 tries: ConnectionError: "
                                           "connection reset by peer")
