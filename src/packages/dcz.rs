//! RFC 9842 "Dictionary-Compressed Zstandard" (`dcz`): the 8-byte magic
//! `5e 2a 4d 18 20 00 00 00`, the dictionary's 32-byte SHA-256, then one zstd frame
//! compressed with the dictionary as a raw-content prefix.
//!
//! Limits (RFC 9842 §6.2, following RFC 9659): the window is at most 8 MB or 1.25 times the
//! dictionary size, whichever is larger, and never over 128 MB. A dictionary of more than
//! 128 MB could not be reached by such a window, so it is refused (`too_large`): the
//! response then falls back to the usual encodings.

/// The fixed start of every `dcz` body.
pub const MAGIC: [u8; 8] = [0x5e, 0x2a, 0x4d, 0x18, 0x20, 0x00, 0x00, 0x00];

/// The largest window (and dictionary) RFC 9842 allows: 128 MB.
pub const MAX_WINDOW: usize = 128 * 1024 * 1024;

/// The zstd level: the pair is compressed once and cached, so spend some CPU, but a cold
/// request still answers in well under a second for a 6 MB package.
const LEVEL: i32 = 9;

/// The largest window RFC 9842 allows for a dictionary of `dictionary_len` bytes.
pub fn window_limit(dictionary_len: usize) -> usize {
    let by_dictionary = dictionary_len.saturating_add(dictionary_len / 4);
    by_dictionary.clamp(8 * 1024 * 1024, MAX_WINDOW)
}

/// The largest zstd `windowLog` within `window_limit` (zstd windows are powers of two).
pub fn window_log(dictionary_len: usize) -> u32 {
    let limit = window_limit(dictionary_len);
    // floor(log2(limit)); limit ≥ 8 MB so this is ≥ 23, and ≤ 27 (128 MB).
    (usize::BITS - 1 - limit.leading_zeros()).clamp(10, 27)
}

/// True when a dictionary this large may be used at all.
pub fn dictionary_allowed(dictionary_len: usize) -> bool {
    dictionary_len <= MAX_WINDOW
}

/// Encodes `content` as a `dcz` body with `dictionary` (whose SHA-256 is `sha256`).
pub fn encode(dictionary: &[u8], sha256: &[u8; 32], content: &[u8]) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    if !dictionary_allowed(dictionary.len()) {
        return Err("dictionary over 128 MB".into());
    }
    let mut cctx = CCtx::try_create().ok_or("zstd context")?;
    let err = |code: usize| zstd::zstd_safe::get_error_name(code).to_owned();
    cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(dictionary.len())))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ChecksumFlag(true))
        .map_err(err)?;
    cctx.set_pledged_src_size(Some(content.len() as u64))
        .map_err(err)?;
    cctx.ref_prefix(dictionary).map_err(err)?;
    // `compress2` writes from the start of its buffer: the header is prepended after.
    let mut frame: Vec<u8> = Vec::with_capacity(zstd::zstd_safe::compress_bound(content.len()));
    cctx.compress2(&mut frame, content).map_err(err)?;
    let mut out = Vec::with_capacity(MAGIC.len() + sha256.len() + frame.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(sha256);
    out.extend_from_slice(&frame);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn limits_follow_rfc_9842() {
        assert_eq!(window_limit(0), 8 * 1024 * 1024);
        assert_eq!(window_limit(16 * 1024 * 1024), 20 * 1024 * 1024);
        assert_eq!(window_limit(usize::MAX), MAX_WINDOW);
        assert_eq!(window_log(1000), 23);
        assert_eq!(window_log(16 * 1024 * 1024), 24); // 20 MB → 16 MB window
        assert_eq!(window_log(200 * 1024 * 1024), 27);
        assert!(dictionary_allowed(MAX_WINDOW));
        assert!(!dictionary_allowed(MAX_WINDOW + 1));
    }

    #[test]
    fn frames_decode_with_the_dictionary_as_prefix() {
        let dictionary =
            br#"{"questions":[{"stem":"Which nerve supplies the diaphragm?"}]}"#.repeat(200);
        let mut content = dictionary.clone();
        content.extend_from_slice(b"and a little more");
        let sha: [u8; 32] = Sha256::digest(&dictionary).into();
        let body = encode(&dictionary, &sha, &content).unwrap();
        assert_eq!(&body[..8], &MAGIC);
        assert_eq!(&body[8..40], &sha);
        assert!(body.len() < 200, "{} bytes", body.len());
        let mut dctx = zstd::zstd_safe::DCtx::create();
        dctx.ref_prefix(&dictionary[..]).unwrap();
        let mut out = Vec::with_capacity(content.len());
        dctx.decompress(&mut out, &body[40..]).unwrap();
        assert_eq!(out, content);
        // Deterministic: the same bytes every time (and so on every instance).
        assert_eq!(encode(&dictionary, &sha, &content).unwrap(), body);
    }
}
