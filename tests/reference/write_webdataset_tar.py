"""Write tests/fixtures/webdataset/python.tar as Python writes WebDataset shards: tarfile in its
default (PAX) format, as webdataset.TarWriter does, with times, owner names and a member path
long enough to need a PAX header. Sample k is a 4x3 RGB PNG whose pixel (x, y) is
(10k + x, 20y, 7), labelled k % 3 in k.cls; sample 2 lives under a 120-character folder.

    python3 tests/reference/write_webdataset_tar.py
"""
import io
import struct
import tarfile
import zlib
from pathlib import Path


def png(width, height, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def sample(k):
    rows = [[v for x in range(4) for v in (10 * k + x, 20 * y, 7)] for y in range(3)]
    return png(4, 3, rows)


out = Path(__file__).resolve().parents[1] / "fixtures" / "webdataset" / "python.tar"
out.parent.mkdir(parents=True, exist_ok=True)
long_dir = "d" * 120
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
    for k in range(3):
        key = f"{long_dir}/sample{k:04d}" if k == 2 else f"sample{k:04d}"
        for ext, data in (("png", sample(k)), ("cls", str(k % 3).encode()), ("json", b'{"k": %d}' % k)):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 1700000000 + k
            info.mode = 0o444
            info.uname = info.gname = "bigdata"
            tar.addfile(info, io.BytesIO(data))
print(out, out.stat().st_size)
