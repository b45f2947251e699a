"""core.atomic's folder swap: the new folder replaces the old, and a crash between its two
renames leaves a whole folder that the next swap settles."""

from __future__ import annotations

from core.atomic import settle_swap, swap_dir, swap_names, whole_dir


def _folder(path, text):
    path.mkdir()
    (path / "done").write_text(text)
    return path


def _done(folder):
    return (folder / "done").is_file()


def test_swap_replaces_the_folder_and_a_crash_between_the_renames_is_settled(tmp_path):
    path = tmp_path / "ckpt"
    new, old = swap_names(path)
    _folder(new, "1")
    swap_dir(path)  # no old folder yet
    assert (path / "done").read_text() == "1" and not new.exists() and not old.exists()
    _folder(new, "2")
    swap_dir(path)
    assert (path / "done").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # a crash after the first rename: no ``path``, the old one aside and the finished new one
    _folder(new, "3")
    path.rename(old)
    assert whole_dir(path, _done) == new
    settle_swap(path, _done)
    assert (path / "done").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # an unfinished new folder is never taken, and is removed
    new.mkdir()
    assert whole_dir(path, _done) == path
    settle_swap(path, _done)
    assert (path / "done").read_text() == "3" and not new.exists()
