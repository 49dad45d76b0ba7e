"""One-command VOC + SBD: download with resume, MD5 check, safe unpack, train_aug.

A local HTTP server (127.0.0.1, a free port) serves small archives in the
real layouts, built from the fake download (``helpers.voc_download``); their MD5s
replace the published ones through ``prepare_voc(archives=...)``
(``helpers.download_server``; the fixtures ``server`` and ``small`` are conftest's).
"""
import dataclasses
import hashlib
import os
import re
import shlex
import subprocess
import sys

import pytest
import tensorflow.compat.v1 as tf

from conftest import REPO_ROOT, run_script
from deeplab_resnet.data import download
from helpers.download_server import SBD_NAME, VOC_NAME, prepare, tar_bytes
from helpers.voc_download import EXPECTED_TRAIN, VOC_VAL, expected_lines
from helpers.training import run_train, train_argv

SCRIPT = os.path.join(REPO_ROOT, "dataset", "download_voc.py")


def assert_train_aug_built(root):
    voc_dir = os.path.join(str(root), "VOCdevkit", "VOC2012")
    with open(os.path.join(voc_dir, "train_aug.txt")) as f:
        assert f.read().splitlines() == expected_lines(EXPECTED_TRAIN)
    with open(os.path.join(voc_dir, "val.txt")) as f:
        assert f.read().splitlines() == expected_lines(VOC_VAL)
    assert sorted(os.listdir(os.path.join(voc_dir, "SegmentationClassAug"))) == sorted(
        n + ".png" for n in EXPECTED_TRAIN + VOC_VAL)


def requested(server):
    return [(name.split("/")[-1], wanted, status) for name, wanted, status in server.seen]


def test_one_command_leaves_a_tree_train_py_trains_on(small, server, tmp_path,
                                                      monkeypatch, capsys):
    archives, _ = small
    monkeypatch.setattr(download, "ARCHIVES", archives)
    root = tmp_path / "root"
    assert run_script(SCRIPT, ["--root", str(root), "--mirror", server.url]) == 0
    assert requested(server) == [(VOC_NAME, None, 200), (SBD_NAME, None, 200)]
    assert_train_aug_built(root)
    assert sorted(os.listdir(root / "downloads")) == sorted([VOC_NAME, SBD_NAME])

    out = capsys.readouterr().out
    train_line = [line for line in out.splitlines() if "python train.py" in line]
    assert len(train_line) == 1
    argv = shlex.split(train_line[0])[2:]
    data_dir, data_list = argv[argv.index("--data-dir") + 1], argv[argv.index("--data-list") + 1]
    assert data_dir == str(root / "VOCdevkit" / "VOC2012")
    snapshots = str(tmp_path / "snapshots")
    assert run_train(train_argv(data_dir, data_list, snapshots)) == 0
    assert tf.train.latest_checkpoint(snapshots).endswith("-2")


def test_wrong_checksum_deletes_the_download_and_unpacks_nothing(small, server, tmp_path):
    archives, _ = small
    wrong = (dataclasses.replace(archives[0], md5="0" * 32), archives[1])
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="not the expected file") as err:
        prepare(root, wrong, mirror=server.url)
    assert "was deleted" in str(err.value) and "Run the command again" in str(err.value)
    assert os.listdir(root / "downloads") == []
    assert sorted(os.listdir(root)) == ["downloads"]


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "no-range-support"])
def test_cut_connection_keeps_a_part_file_and_a_rerun_completes(small, server, tmp_path,
                                                                ranges):
    archives, _ = small
    server.ranges, server.cuts, server.cut_after = ranges, 1, 5000
    size = len(server.files["data/" + VOC_NAME])
    assert size > 2 * server.cut_after
    root = tmp_path / "root"
    with pytest.raises(IOError, match="Run the same command again: it resumes"):
        prepare(root, archives, mirror=server.url)
    part = root / "downloads" / (VOC_NAME + ".part")
    assert os.path.getsize(part) == 5000
    assert os.listdir(root / "downloads") == [part.name]  # never under the final name
    assert sorted(os.listdir(root)) == ["downloads"]

    prepare(root, archives, mirror=server.url)
    assert requested(server)[:2] == [(VOC_NAME, None, 200),
                                     (VOC_NAME, "bytes=5000-", 206 if ranges else 200)]
    assert_train_aug_built(root)
    assert sorted(os.listdir(root / "downloads")) == sorted([VOC_NAME, SBD_NAME])


def test_a_whole_part_file_is_not_fetched_again(small, server, tmp_path):
    """A run stopped while pooch hashed the finished .part: the server has
    nothing after its end (416), and the .part is checked as it is."""
    archives, _ = small
    data = server.files["data/" + VOC_NAME]
    root = tmp_path / "root"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / (VOC_NAME + ".part")).write_bytes(data)
    result = prepare(root, archives, mirror=server.url)
    assert requested(server) == [(VOC_NAME, "bytes=%d-" % len(data), 416),
                                 (SBD_NAME, None, 200)]
    assert result.downloaded == [VOC_NAME, SBD_NAME]
    assert_train_aug_built(root)


def test_lost_connection_is_resumed_within_the_run(small, server, tmp_path, monkeypatch,
                                                   caplog):
    archives, _ = small
    server.cuts, server.cut_after = 2, 3000
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    caplog.set_level("INFO")
    result = prepare(tmp_path / "root", archives, mirror=server.url, retries=2)
    assert requested(server) == [(VOC_NAME, None, 200), (VOC_NAME, "bytes=3000-", 206),
                                 (VOC_NAME, "bytes=6000-", 206), (SBD_NAME, None, 200)]
    assert result.downloaded == [VOC_NAME, SBD_NAME]
    assert "connection lost after" in caplog.text
    # Progress lines in progress.ByteProgress's words: bytes with units, rate, ETA;
    # the cuts at 3000 and 6000 bytes each end with a line of their own.
    size = r"\d+(?:\.\d)? (?:B|KiB|MiB|GiB)"
    lines = re.findall(re.escape(VOC_NAME) + r": (\d+)%% (%s)/%s (?:-- B|%s)/s ETA (\S+)"
                       % (size, size, size), caplog.text)
    assert lines and lines[-1][0] == "100" and lines[-1][-1] == "0s"
    assert any(line[1] == "2.9 KiB" for line in lines)
    assert any(line[1] == "5.9 KiB" for line in lines)
    assert_train_aug_built(tmp_path / "root")


def test_rerun_of_a_complete_tree_sends_no_request(small, server, tmp_path, monkeypatch,
                                                   capsys):
    archives, _ = small
    root = tmp_path / "root"
    prepare(root, archives, mirror=server.url)
    del server.seen[:]
    monkeypatch.setattr(download, "ARCHIVES", archives)
    assert run_script(SCRIPT, ["--root", str(root), "--mirror", server.url]) == 0
    assert server.seen == []
    out = capsys.readouterr().out
    assert "skipped %s: already unpacked" % VOC_NAME in out
    assert "skipped %s: already unpacked" % SBD_NAME in out

    # Kept archives that were not unpacked yet are checked, not fetched again.
    for archive in archives:
        os.remove(root / (".%s.unpacked" % archive.name))
    result = prepare(root, archives, mirror=server.url)
    assert server.seen == []
    assert result.skipped == [(VOC_NAME, "verified copy already downloaded"),
                              (SBD_NAME, "verified copy already downloaded")]
    assert_train_aug_built(root)


def test_local_archives_are_checked_unpacked_and_kept(small, server, tmp_path):
    archives, local = small
    before = {name: open(os.path.join(local, name), "rb").read() for name in os.listdir(local)}
    root = tmp_path / "root"
    result = prepare(root, archives, archives_dir=local, delete_archives=True)
    assert server.seen == [] and result.downloaded == []
    assert_train_aug_built(root)
    assert not os.path.exists(root / "downloads")
    assert {n: open(os.path.join(local, n), "rb").read() for n in os.listdir(local)} == before


def test_bad_or_missing_local_archive_says_what_to_fetch(small, tmp_path):
    archives, local = small
    with open(os.path.join(local, SBD_NAME), "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match="incomplete or another file.*" +
                       re.escape(download.SBD_ARCHIVE.url)):
        prepare(tmp_path / "root", archives, archives_dir=local)
    assert os.path.exists(os.path.join(local, SBD_NAME))  # the user's file stays
    os.remove(os.path.join(local, VOC_NAME))
    with pytest.raises(IOError, match="has no %s. Download it from %s" % (
            re.escape(VOC_NAME), re.escape(download.VOC_ARCHIVE.url))):
        prepare(tmp_path / "root2", archives, archives_dir=local)
    assert not os.path.exists(tmp_path / "root2" / "VOCdevkit")


def test_a_member_escaping_the_root_is_refused(tmp_path):
    evil = tmp_path / "evil.txt"
    evil.write_text("outside")
    data = tar_bytes("w", [(str(evil), "../escaped.txt")])
    local = tmp_path / "archives"
    local.mkdir()
    (local / VOC_NAME).write_bytes(data)
    (local / SBD_NAME).write_bytes(b"")  # both must be there before the first is unpacked
    archive = dataclasses.replace(download.VOC_ARCHIVE, md5=hashlib.md5(data).hexdigest())
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="outside"):
        prepare(root, (archive, download.SBD_ARCHIVE), archives_dir=str(local))
    assert not os.path.exists(tmp_path / "escaped.txt")
    assert not os.path.exists(root / (".%s.unpacked" % VOC_NAME))


def test_without_the_download_packages_the_script_says_what_to_install(tmp_path):
    code = ("import runpy, sys\n"
            "sys.modules['pooch'] = None\n"
            "script = runpy.run_path(sys.argv[1])\n"
            "status = script['main'](['--root', sys.argv[2]])\n"
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'requests'}))\n")
    root = tmp_path / "root"
    result = subprocess.run([sys.executable, "-c", code, SCRIPT, str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[0] == "2 []", result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert "needs pooch and requests" in errors[0]
    assert "pip install -r requirements-download.txt" in errors[0]
    assert not os.path.exists(root)
