"""Fetch PASCAL VOC 2012 and SBD, check their MD5, unpack them and build train_aug.

One call leaves ``<root>/VOCdevkit/VOC2012`` ready for ``train.py``: the two
archives DeepLab trains from are downloaded (or taken from a mirror or a
local directory), checked against their published MD5 before anything is
unpacked, unpacked without letting a member escape ``root`` (tarfile's
``data`` filter), and handed to ``voc_aug.build_voc_aug``.

Downloads and checksums go through ``pooch`` (``pooch.retrieve`` keeps a file
under its final name only once its hash matched, and deletes it otherwise).
Its own HTTP downloader starts over after a cut; ours keeps the bytes in
``<name>.part`` and asks for the rest with an HTTP Range header, so a 2 GB
download interrupted at 1.9 GB resumes, and a half file never carries the
archive's name. Progress lines (bytes, rate, ETA) come from
``progress.ByteProgress``, every ``progress_interval`` seconds. ``pooch``
and ``requests`` are optional (requirements-download.txt): this module
imports without them, and ``require_dependencies`` says what to install.
"""
import collections
import dataclasses
import logging
import os
import re
import tarfile
import time
import urllib.parse

from deeplab_resnet.data import voc_aug
from deeplab_resnet.data.safe_tar import members_within
from deeplab_resnet.files import write_text
from deeplab_resnet.progress import ByteProgress, Every, format_bytes

try:
    import pooch
    import requests
    import urllib3
except ImportError as _error:  # optional: see require_dependencies
    pooch = requests = urllib3 = None
    _IMPORT_ERROR = _error
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Archive:
    """One published archive: file name, canonical URL, MD5, and the
    directory (relative to the root it is unpacked in) that voc_aug reads."""
    name: str
    url: str
    md5: str
    data_dir: str


VOC_ARCHIVE = Archive(
    "VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "6cd6e144f989b92b3379bac3b3de84fd", os.path.join("VOCdevkit", "VOC2012"))
SBD_ARCHIVE = Archive(
    "benchmark.tgz",
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
    "semantic_contours/benchmark.tgz",
    "82b4d87ceb2ed10f6038a1cba92111cb", os.path.join("benchmark_RELEASE", "dataset"))
ARCHIVES = (VOC_ARCHIVE, SBD_ARCHIVE)

DOWNLOAD_DIR = "downloads"  # under root: the archives and their .part files
PART_SUFFIX = ".part"
INSTALL_HINT = ("pip install -r requirements-download.txt (or pip install -e "
                "'.[download]')")

Prepared = collections.namedtuple(
    "Prepared", ["voc_dir", "train_list", "val_list", "downloaded", "skipped", "counts"])


def require_dependencies():
    """Raise ImportError naming what to install when pooch or requests is missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError("downloading VOC and SBD needs pooch and requests "
                          "(%s): %s" % (_IMPORT_ERROR, INSTALL_HINT))


def _content_range(content_range):
    """``bytes 100-199/200`` -> (100, 200), ``bytes */200`` -> (None, 200);
    (None, None) when absent or malformed."""
    match = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)$", content_range or "")
    if not match:
        return None, None
    return tuple(None if v in (None, "*") else int(v) for v in match.groups())


class ResumingDownloader(object):
    """A pooch downloader that resumes from ``<name>.part`` with HTTP Range.

    pooch calls it with a temporary file name; the bytes collect in the
    ``.part`` file beside the archive (kept across runs) and move to pooch's
    temporary only when the server sent them all, so pooch hashes whole
    files only. A server that ignores Range (200 instead of 206) is read
    from the start. Each lost connection is retried ``retries`` times,
    resuming where it stopped.
    """

    def __init__(self, part_path, retries=3, timeout=60.0, progress_interval=10.0,
                 chunk_size=1 << 20):
        self.part_path = part_path
        self.retries = retries
        self.timeout = timeout
        self.progress_interval = progress_interval
        self.chunk_size = chunk_size
        self.used = False  # whether pooch asked for a download

    def __call__(self, url, output_file, pooch_instance, check_only=False):
        self.used = True
        if check_only:
            response = requests.head(url, timeout=self.timeout, allow_redirects=True)
            return response.status_code == 200
        for attempt in range(self.retries + 1):
            try:
                self._fetch(url)
                break
            except requests.HTTPError as err:
                raise IOError("%s: the server answered %s. Check the URL (or --mirror), "
                              "or download the file yourself and pass --archives DIR."
                              % (url, err))
            except (requests.RequestException, urllib3.exceptions.HTTPError, IOError) as err:
                have = _size(self.part_path)
                if attempt == self.retries:
                    raise IOError(
                        "Downloading %s stopped after %s (%s). Run the same command "
                        "again: it resumes from %s." % (url, format_bytes(have), err, self.part_path))
                wait = min(2 ** attempt, 30)
                log.warning("%s: connection lost after %s (%s); resuming in %d s",
                            os.path.basename(self.part_path), format_bytes(have), err, wait)
                time.sleep(wait)
        os.replace(self.part_path, output_file)

    def _fetch(self, url):
        """Append the rest of ``url`` to the .part file; IOError if it ends short."""
        have = _size(self.part_path)
        headers = {"Range": "bytes=%d-" % have} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            start, total = _content_range(response.headers.get("Content-Range"))
            if response.status_code == 416:  # nothing after ``have``
                if total == have:  # whole already (stopped while pooch hashed it)
                    return
                os.remove(self.part_path)
                raise IOError("the server refused to resume at byte %d" % have)
            response.raise_for_status()
            resumed = response.status_code == 206 and start == have
            if have and not resumed:
                log.info("%s: the server does not resume downloads; starting again",
                         os.path.basename(self.part_path))
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            self._receive(response, have, total)
        if total is not None and _size(self.part_path) != total:
            raise IOError("the server sent %d of %d bytes" % (_size(self.part_path), total))


    def _receive(self, response, have, total):
        """Append the response's bytes to the .part file, with a progress line
        every ``progress_interval`` seconds and one at the end (or the cut)."""
        name = os.path.basename(self.part_path)[:-len(PART_SUFFIX)]
        progress, every, done = ByteProgress(total), Every(self.progress_interval), have
        progress.update(have)
        try:
            with open(self.part_path, "ab" if have else "wb") as f:
                # read1 hands over what has arrived, so a cut keeps it all
                # (iter_content drops a half-read chunk); raw bytes: the file
                # as stored even if a server marks it gzip-encoded.
                chunk = response.raw.read1(self.chunk_size, decode_content=False)
                while chunk:
                    f.write(chunk)
                    done += len(chunk)
                    if every.due():
                        log.info("%s: %s", name, progress.line(done))
                    chunk = response.raw.read1(self.chunk_size, decode_content=False)
        finally:
            log.info("%s: %s", name, progress.line(done))


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def _marker_path(root, archive):
    """The file that says ``archive`` was unpacked completely into ``root``."""
    return os.path.join(root, ".%s.unpacked" % archive.name)


def is_unpacked(root, archive):
    """Whether ``archive`` (this very one: its MD5 is in the marker) is unpacked in ``root``."""
    marker = _marker_path(root, archive)
    if not os.path.isfile(marker):
        return False
    with open(marker) as f:
        return f.read().strip() == archive.md5


def fetch_archive(archive, download_dir, mirror=None, **downloader_kwargs):
    """Download ``archive`` into ``download_dir`` unless a verified copy is
    there; pooch checks the MD5 before the file takes its name.

    Args:
      mirror: base URL that holds the archive under its own name, instead of
        the canonical host.
      downloader_kwargs: ``ResumingDownloader``'s retries, timeout,
        progress_interval.
    Returns:
      (path, downloaded): whether anything was fetched from the server.
    Raises:
      ValueError: the MD5 does not match (the file has been deleted).
      IOError: the download failed (the .part file is kept for a resume).
    """
    url = mirror.rstrip("/") + "/" + archive.name if mirror else archive.url
    part = os.path.join(download_dir, archive.name + PART_SUFFIX)
    os.makedirs(download_dir, exist_ok=True)
    downloader = ResumingDownloader(part, **downloader_kwargs)
    try:
        path = pooch.retrieve(url, known_hash="md5:" + archive.md5, fname=archive.name,
                              path=download_dir, downloader=downloader)
        return path, downloader.used
    except ValueError as err:
        raise ValueError(
            "%s from %s is not the expected file (%s). The bad download was deleted "
            "and nothing was unpacked. Run the command again to download it afresh; if "
            "the same happens, the server holds another file: use --mirror with a "
            "good copy, or put one in a directory and pass --archives DIR."
            % (archive.name, url, err))


def check_mirror(mirror):
    """Refuse a --mirror that is not an http(s) URL with a host.

    Without a scheme ('127.0.0.1:8000') or with another one ('file://'), every
    attempt failed as if the connection were lost, and the message promised a
    resume from a .part file that was never written.
    """
    parsed = urllib.parse.urlsplit(mirror)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("--mirror %r is not an http:// or https:// URL with a host (e.g. "
                         "http://10.0.0.5:8000/voc). For files on this machine use "
                         "--archives DIR." % mirror)


def _local_path(archive, archives_dir):
    path = os.path.join(archives_dir, archive.name)
    if not os.path.isfile(path):
        raise IOError("--archives %r has no %s. Download it from %s (MD5 %s) into that "
                      "directory." % (archives_dir, archive.name, archive.url, archive.md5))
    return path


def check_local_archive(archive, archives_dir):
    """The path of ``archive`` in ``archives_dir`` once its MD5 matched.

    A user's own file is never deleted: a mismatch only says what to fetch.
    """
    path = _local_path(archive, archives_dir)
    log.info("checking the MD5 of %s", path)
    actual = pooch.file_hash(path, alg="md5")
    if actual != archive.md5:
        raise ValueError("%s has MD5 %s, not %s: it is incomplete or another file. "
                         "Nothing was unpacked. Replace it with a fresh copy of %s."
                         % (path, actual, archive.md5, archive.url))
    return path


def _logged_members(tar, name, interval):
    """Yield the members of ``tar`` as it is read, logging files and bytes so far."""
    count, size, every = 0, 0, Every(interval)
    for member in tar:
        yield member
        count, size = count + 1, size + member.size
        if every.due():
            log.info("unpacking %s: %d files, %s", name, count, format_bytes(size))
    log.info("unpacked %s: %d files, %s", name, count, format_bytes(size))


def unpack(archive, path, root, progress_interval=10.0):
    """Unpack ``path`` into ``root``, then mark ``archive`` as unpacked.

    tarfile's ``data`` filter refuses members that would land outside
    ``root`` (absolute paths, ``..``, links out) and drops special files and
    set-uid bits; ``safe_tar.members_within`` checks each name again without
    resolving paths, as a filter with CVE-2025-4517 could be bypassed. The
    marker is written last, so an interrupted unpack is redone on the next
    run rather than taken for complete.
    """
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("This Python's tarfile has no extraction filters (added in "
                           "3.11.4, 3.10.12, 3.9.17): upgrade Python to unpack safely.")
    log.info("unpacking %s into %s", path, root)
    try:
        with tarfile.open(path) as tar:
            tar.extractall(root, members=_logged_members(tar, archive.name,
                                                         progress_interval),
                           filter=members_within())
    except tarfile.TarError as err:
        raise ValueError("%s cannot be unpacked safely (%s). Nothing outside %s was "
                         "written; fetch the archive again from %s."
                         % (path, err, root, archive.url))
    write_text(_marker_path(root, archive), archive.md5 + "\n", force=True)


def _check_sources(root, archives, mirror, archives_dir):
    """Refuse, before any download or hash, a source that cannot give both archives."""
    if mirror and archives_dir:
        raise ValueError("Pass --mirror or --archives, not both.")
    if mirror:
        check_mirror(mirror)
    if archives_dir:
        # Both are there before the first is hashed and unpacked (minutes).
        for archive in archives:
            if not is_unpacked(root, archive):
                _local_path(archive, archives_dir)


def prepare_voc(root, mirror=None, archives_dir=None, delete_archives=False,
                archives=None, retries=3, timeout=60.0, progress_interval=10.0):
    """Download, check and unpack VOC 2012 and SBD into ``root``; build train_aug.

    A rerun skips each archive already unpacked (its marker holds its MD5)
    and any verified archive already downloaded, and ``build_voc_aug``
    keeps the labels it wrote before, so an interrupted run is resumed by
    running it again.

    Args:
      root: where VOCdevkit/, benchmark_RELEASE/ and downloads/ go.
      mirror: base URL holding both archives under their own names.
      archives_dir: a local directory holding both archives (nothing is
        downloaded); exclusive with ``mirror``.
      delete_archives: delete each downloaded archive once it is unpacked
        (never those in ``archives_dir``).
      archives: the ``Archive`` pair, VOC then SBD (default ``ARCHIVES``,
        the published ones; tests pass small ones).
      retries, timeout, progress_interval: see ``ResumingDownloader``.
    Returns:
      ``Prepared(voc_dir, train_list, val_list, downloaded, skipped, counts)``:
      the --data-dir, the two list files, the archive names downloaded and
      (name, reason) for each skipped, and ``build_voc_aug``'s counts.
    """
    require_dependencies()
    if retries < 0:
        raise ValueError("--retries must be 0 or more, got %d." % retries)
    voc, sbd = ARCHIVES if archives is None else archives
    _check_sources(root, (voc, sbd), mirror, archives_dir)
    download_dir = os.path.join(root, DOWNLOAD_DIR)
    downloaded, skipped = [], []
    for archive in (voc, sbd):
        if is_unpacked(root, archive):
            skipped.append((archive.name, "already unpacked"))
            log.info("skipped %s: already unpacked in %s", archive.name, root)
            continue
        if archives_dir:
            path = check_local_archive(archive, archives_dir)
        else:
            path, fetched = fetch_archive(archive, download_dir, mirror, retries=retries,
                                          timeout=timeout,
                                          progress_interval=progress_interval)
            if fetched:
                downloaded.append(archive.name)
            else:
                skipped.append((archive.name, "verified copy already downloaded"))
                log.info("skipped downloading %s: a verified copy is in %s",
                         archive.name, download_dir)
        unpack(archive, path, root, progress_interval)
        if delete_archives and not archives_dir:
            os.remove(path)
    voc_dir = os.path.join(root, voc.data_dir)
    counts = voc_aug.build_voc_aug(voc_dir, os.path.join(root, sbd.data_dir),
                                   progress_interval=progress_interval)
    return Prepared(voc_dir, os.path.join(voc_dir, voc_aug.TRAIN_LIST),
                    os.path.join(voc_dir, voc_aug.VAL_LIST), downloaded, skipped, counts)
