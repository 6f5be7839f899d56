"""Folders with symbolic links (issue 15, item 3): each real folder is read once, each file is
listed once whatever the number of paths to it, and the listing adds up."""

from __future__ import annotations

import os

from PIL import Image

from zoolens.sources import open_source


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def test_a_link_back_up_the_tree_is_not_followed_again(tmp_path):
    """The user's case: `sub/loop -> sub` listed one image 41 times plus a bogus skip entry."""
    _png(tmp_path / "sub" / "x.png", (255, 0, 0))
    os.symlink(tmp_path / "sub", tmp_path / "sub" / "loop")
    src = open_source(tmp_path)
    assert src.ids == ["sub/x.png"]
    assert src.skipped_at_listing == []
    assert src.listing["files_seen"] == 1 and src.listing["links_not_followed"] == 1


def test_every_file_once_and_the_listing_adds_up(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _png(root / "a.png", (255, 0, 0))
    _png(root / "sub" / "b.png", (0, 255, 0))
    (root / "sub" / "notes.txt").write_text("not an image")
    _png(outside / "c.png", (0, 0, 255))
    os.symlink(root / "sub", root / "sub" / "loop")  # a loop onto itself
    os.symlink(root, root / "sub" / "back")  # a loop onto an ancestor
    os.symlink(root / "a.png", root / "alias.png")  # a second path to a.png
    os.link(root / "sub" / "b.png", root / "hard.png")  # a hard link: b.png again
    os.symlink(outside, root / "ext")  # a folder outside the tree: followed once ...
    os.symlink(outside, root / "ext2")  # ... not twice
    os.symlink(root / "missing.png", root / "dangling.png")

    src = open_source(root)
    # each file under its first path in natural order that goes through no link: a.png (not
    # alias.png), hard.png (before sub/b.png); c.png is only reachable through links: ext/
    assert src.ids == ["a.png", "ext/c.png", "hard.png"]
    assert {s["id"]: s["reason"].split(" (")[0] for s in src.skipped_at_listing} == {
        "dangling.png": "broken symbolic link", "sub/notes.txt": "not an image file"}
    assert src.listing == {
        "files_seen": 5,  # a, b, c, notes.txt, the dangling link
        "images": 3, "skipped_files": 2, "unreadable_folders": 0,
        "duplicate_paths": 2,  # alias.png, sub/b.png
        "folders": 3,  # root, sub, outside
        "links_not_followed": 3,  # sub/loop, sub/back, ext2
    }
    assert src.listing["images"] + src.listing["skipped_files"] == src.listing["files_seen"]
    assert len(src.ids) + len(src.skipped_at_listing) == src.listing["files_seen"]
    # the images decode to the right pixels through whichever path was kept
    assert [src.decode(i).image.getpixel((0, 0)) for i in range(3)] == [
        (255, 0, 0), (0, 0, 255), (0, 255, 0)]


def test_a_linked_class_folder_keeps_its_label(tmp_path):
    """Class subfolders may be links to folders elsewhere (a common way to build a split)."""
    store = tmp_path / "store"
    _png(store / "cats" / "1.png", (1, 1, 1))
    _png(store / "dogs" / "1.png", (2, 2, 2))
    split = tmp_path / "split"
    split.mkdir()
    os.symlink(store / "cats", split / "cat")
    os.symlink(store / "dogs", split / "dog")
    src = open_source(split)
    assert src.ids == ["cat/1.png", "dog/1.png"] and src.labels == ["cat", "dog"]
