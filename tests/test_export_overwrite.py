"""export.py --overwrite replaces an earlier export only: never the weights it
reads, nor anything it did not write."""
import os
import shutil

import pytest

from conftest import REPO_ROOT, run_script
from deeplab_resnet import files, serving

EXPORT = os.path.join(REPO_ROOT, "export.py")


def listing(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, dirs, names in os.walk(directory) for name in dirs + names)


@pytest.fixture
def snapshots(tiny_model, tmp_path):
    """A copy of the tiny model's snapshot directory, with a TensorBoard file."""
    directory = str(tmp_path / "snap")
    shutil.copytree(tiny_model.directory, directory)
    open(os.path.join(directory, "events.out.tfevents.1.host"), "wb").close()
    return directory


@pytest.mark.parametrize("restore, output", [
    ("{s}", "{s}"), ("{s}/model.ckpt-0", "{s}"), ("{s}/tiny.npz", "{s}"),
    ("{s}", "{s}/.."), ("{s}/model.ckpt-0", "{s}/.."), ("{s}", "{s}/./")])
def test_overwrite_never_replaces_the_directory_holding_the_weights(
        snapshots, restore, output, caplog):
    before = listing(os.path.dirname(snapshots))
    status = run_script(EXPORT, ["--restore-from", restore.format(s=snapshots),
                                 "--output-dir", output.format(s=snapshots),
                                 "--overwrite"])
    assert status == 2
    assert "holds the weights it exports" in caplog.text
    assert listing(os.path.dirname(snapshots)) == before


def test_overwrite_refuses_a_directory_with_files_it_did_not_write(tiny_model, tmp_path,
                                                                   caplog):
    out = str(tmp_path / "exported")
    serving.export(tiny_model.npz, out)
    for name in ("notes.txt", os.path.join("saved_model", "mine.txt")):
        with open(os.path.join(out, name), "w") as f:
            f.write("the user's")
    before = listing(out)
    assert run_script(EXPORT, ["--restore-from", tiny_model.npz, "--output-dir", out,
                               "--overwrite"]) == 2
    assert "not an earlier export: it holds notes.txt, saved_model/mine.txt" in caplog.text
    assert listing(out) == before
    os.remove(os.path.join(out, "notes.txt"))
    os.remove(os.path.join(out, "saved_model", "mine.txt"))
    assert run_script(EXPORT, ["--restore-from", tiny_model.npz, "--output-dir", out,
                               "--overwrite"]) == 0
    # A directory that was never an export is refused even when it holds only
    # names an export writes.
    other = tmp_path / "other"
    other.mkdir()
    (other / "frozen_graph.pb").write_bytes(b"someone else's")
    with pytest.raises(IOError, match=r"not an earlier export: it holds \(no export_info"):
        serving.export(tiny_model.npz, str(other), overwrite=True)
    assert (other / "frozen_graph.pb").read_bytes() == b"someone else's"


def test_overwrite_of_the_current_directory_is_refused_and_leaves_nothing(
        tiny_model, tmp_path, monkeypatch, caplog):
    out = tmp_path / "exported"
    serving.export(tiny_model.npz, str(out))
    before = listing(str(tmp_path))
    monkeypatch.chdir(str(out))
    assert run_script(EXPORT, ["--restore-from", tiny_model.npz, "--output-dir", ".",
                               "--overwrite"]) == 2
    assert "holds the current directory" in caplog.text
    assert listing(str(tmp_path)) == before


def test_a_symlink_to_an_export_is_followed_and_a_symlink_to_a_file_named(tiny_model,
                                                                          tmp_path):
    real = tmp_path / "real"
    serving.export(tiny_model.npz, str(real))
    link = tmp_path / "link"
    link.symlink_to(real)
    serving.export(tiny_model.npz, str(link), overwrite=True)
    assert link.is_symlink() and os.path.isfile(str(real / serving.INFO_FILE))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothing")
    with pytest.raises(IOError, match="is a symlink to .*nothing, not to a directory"):
        serving.export(tiny_model.npz, str(dangling))


def test_a_replace_that_cannot_move_the_old_directory_leaves_no_debris(tmp_path,
                                                                       monkeypatch):
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def busy(source, destination):
        if source == str(target):
            raise OSError(16, "Device or resource busy")
        real_rename(source, destination)
    monkeypatch.setattr(os, "rename", busy)
    with pytest.raises(OSError, match="busy"):
        files.replace_directory(str(staging), str(target))
    assert sorted(os.listdir(str(tmp_path))) == ["staging", "target"]
