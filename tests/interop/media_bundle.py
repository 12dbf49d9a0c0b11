"""Reads a media bundle with Python's own zipfile module (an independent ZIP reader) and
checks what docs/api.md section 5 promises: every entry stored, named by the SHA-256 of its
bytes, sorted by name, dated 1980-01-01 00:00, with no extra field.

    python3 tests/interop/media_bundle.py BUNDLE.zip   # prints one line per entry
"""
import hashlib
import sys
import zipfile


def main(path):
    with zipfile.ZipFile(path) as bundle:
        if bundle.testzip() is not None:
            raise SystemExit("bad CRC in " + bundle.testzip())
        names = []
        for info in bundle.infolist():
            data = bundle.read(info)
            digest = hashlib.sha256(data).hexdigest()
            if digest != info.filename:
                raise SystemExit(f"{info.filename}: bytes hash to {digest}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise SystemExit(f"{info.filename}: not stored")
            if info.date_time != (1980, 1, 1, 0, 0, 0):
                raise SystemExit(f"{info.filename}: dated {info.date_time}")
            if info.extra:
                raise SystemExit(f"{info.filename}: has an extra field")
            names.append(info.filename)
            print(info.filename, len(data))
        if names != sorted(names):
            raise SystemExit("entries are not sorted by name")


if __name__ == "__main__":
    main(sys.argv[1])
