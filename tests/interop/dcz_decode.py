"""Independent RFC 9842 `dcz` decoder for the API tests (Python `zstandard`, libzstd's own
Python binding, none of the server's code).

    python3 dcz_decode.py DICTIONARY BODY OUT

Checks the 8-byte magic and that bytes 8..40 are the SHA-256 of DICTIONARY, checks that the
frame's window is within RFC 9842's limit (8 MB or 1.25 x the dictionary, at most 128 MB),
decodes the zstd frame with DICTIONARY as a raw-content dictionary and writes the result to
OUT. Prints one JSON line; exit 0 on success, 1 on failure.
"""
import hashlib
import json
import sys

import zstandard

MAGIC = bytes([0x5E, 0x2A, 0x4D, 0x18, 0x20, 0x00, 0x00, 0x00])


def main() -> int:
    dictionary_path, body_path, out_path = sys.argv[1:4]
    dictionary = open(dictionary_path, "rb").read()
    body = open(body_path, "rb").read()
    summary = {"ok": False}
    if body[:8] != MAGIC:
        summary["reason"] = f"magic is {body[:8].hex()}"
    elif body[8:40] != hashlib.sha256(dictionary).digest():
        summary["reason"] = "header hash is not the dictionary's SHA-256"
    else:
        frame = body[40:]
        limit = min(max(8 * 1024 * 1024, len(dictionary) + len(dictionary) // 4), 128 * 1024 * 1024)
        params = zstandard.get_frame_parameters(frame)
        summary["window_size"] = params.window_size
        summary["window_limit"] = limit
        if params.window_size > limit:
            summary["reason"] = "window over the RFC 9842 limit"
        else:
            d = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            out = zstandard.ZstdDecompressor(dict_data=d, max_window_size=limit).decompress(frame)
            open(out_path, "wb").write(out)
            summary.update(ok=True, decoded=len(out))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
