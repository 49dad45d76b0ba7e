"""A local HTTP server for the download tests, and the fake download packed
as the two real archives (conftest's ``server`` and ``small`` fixtures)."""
import dataclasses
import hashlib
import http.server
import io
import os
import re
import tarfile
import threading

from deeplab_resnet.data import download

VOC_NAME, SBD_NAME = download.VOC_ARCHIVE.name, download.SBD_ARCHIVE.name


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /<name>: the bytes, honouring ``bytes=N-`` when the server allows
    ranges; the first ``cuts`` responses stop after ``cut_after`` bytes."""
    timeout = 10

    def do_GET(self):
        server = self.server
        name, wanted = self.path.lstrip("/"), self.headers.get("Range")
        data = server.files.get(name)
        if data is None:
            server.seen.append((name, wanted, 404))
            self.send_error(404)
            return
        start = 0
        if wanted and server.ranges:
            start = int(re.match(r"bytes=(\d+)-$", wanted).group(1))
            if start >= len(data):
                server.seen.append((name, wanted, 416))
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1,
                                                                  len(data)))
        else:
            self.send_response(200)
        server.seen.append((name, wanted, 206 if wanted and server.ranges else 200))
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cuts:
            server.cuts -= 1
            body = body[:server.cut_after]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve():
    """A threaded HTTP server on a free local port, until the generator ends
    (conftest's ``server`` fixture); ``.url``, ``.files``, ``.seen`` (name,
    Range header, status), ``.ranges``, ``.cuts``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.seen, httpd.ranges, httpd.cuts, httpd.cut_after = {}, [], True, 0, 0
    httpd.url = "http://127.0.0.1:%d/data" % httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def tar_bytes(mode, members):
    """An archive (``mode`` 'w' or 'w:gz') of (source path, name inside) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for source, arcname in members:
            tar.add(source, arcname=arcname)
    return buffer.getvalue()


def small_archives(fake_download, tmp_path, server):
    """(conftest's ``small`` fixture) The fake VOC and SBD packed as the two real archives, served under
    /data/ and also written to ``tmp_path/archives``.

    Returns (archives with their MD5s, archives directory).
    """
    voc_dir, sbd_dir, _, _ = fake_download
    blobs = {VOC_NAME: tar_bytes("w", [(os.path.dirname(voc_dir), "VOCdevkit")]),
             SBD_NAME: tar_bytes("w:gz", [(os.path.dirname(sbd_dir), "benchmark_RELEASE")])}
    local = tmp_path / "archives"
    local.mkdir()
    for name, data in blobs.items():
        (local / name).write_bytes(data)
        server.files["data/" + name] = data
    archives = tuple(dataclasses.replace(a, md5=hashlib.md5(blobs[a.name]).hexdigest())
                     for a in download.ARCHIVES)
    return archives, str(local)


def prepare(root, archives, **kwargs):
    kwargs.setdefault("retries", 0)
    return download.prepare_voc(str(root), archives=archives, progress_interval=0,
                                **kwargs)
