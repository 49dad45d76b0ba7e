"""download_voc.py checks what it is given before it starts: the mirror's URL,
both local archives, and each member's name on its own (not only tarfile's filter)."""
import dataclasses
import hashlib
import io
import os
import tarfile

import pytest

from deeplab_resnet.data import download
from helpers.download_server import SBD_NAME, VOC_NAME, prepare


@pytest.mark.parametrize("mirror", ["127.0.0.1:8000", "127.0.0.1:8000/voc",
                                    "file:///srv/voc", "ftp://host/voc", "http://"])
def test_a_mirror_that_is_not_an_http_url_is_refused_before_any_request(tmp_path, mirror):
    with pytest.raises(ValueError, match=r"--mirror '%s' is not an http:// or https:// URL"
                                         % mirror.replace(".", r"\.")):
        download.prepare_voc(str(tmp_path / "root"), mirror=mirror, retries=0)
    assert not os.path.exists(str(tmp_path / "root"))


def test_an_archives_dir_without_sbd_is_refused_before_voc_is_hashed(small, tmp_path,
                                                                    monkeypatch):
    archives, local = small
    os.remove(os.path.join(local, SBD_NAME))
    hashed = []
    monkeypatch.setattr(download.pooch, "file_hash",
                        lambda path, alg: hashed.append(path) or "x")
    with pytest.raises(IOError, match="--archives .* has no %s" % SBD_NAME):
        prepare(tmp_path / "root", archives, archives_dir=local)
    assert hashed == []
    assert not os.path.exists(str(tmp_path / "root" / "VOCdevkit"))


def tar_with(members):
    """An archive of (TarInfo fields) dicts: regular files (with 'data') and links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for fields in members:
            data = fields.pop("data", b"")
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("members, why", [
    # tarfile's data filter allows this link (its target stays inside);
    # with a symlink bypass (CVE-2025-4517) such chains lead out.
    ([{"name": "VOCdevkit/a", "type": tarfile.SYMTYPE, "linkname": "../VOCdevkit"}],
     "links to '../VOCdevkit', absolute or with '..'"),
    ([{"name": "VOCdevkit/d", "type": tarfile.SYMTYPE, "linkname": "sub"},
      {"name": "VOCdevkit/d/x.txt", "data": b"x"}], "lies under a symlink member"),
    ([{"name": "VOCdevkit/h", "type": tarfile.LNKTYPE, "linkname": "VOCdevkit/../x"}],
     "absolute or with '..'"),
])
def test_each_member_name_is_checked_without_trusting_the_data_filter(
        tmp_path, monkeypatch, members, why):
    # As if this Python's data filter had the realpath bypass: it lets all through.
    monkeypatch.setattr(tarfile, "data_filter", lambda member, path: member)
    data = tar_with(members)
    archive = dataclasses.replace(download.VOC_ARCHIVE, md5=hashlib.md5(data).hexdigest())
    path = tmp_path / VOC_NAME
    path.write_bytes(data)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValueError, match="cannot be unpacked safely .*%s" % why.replace(
            "(", r"\(").replace(")", r"\)")):
        download.unpack(archive, str(path), str(root))
    assert not os.path.exists(str(root / (".%s.unpacked" % VOC_NAME)))
