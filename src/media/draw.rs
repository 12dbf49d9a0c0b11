//! Small media drawn in code (the demo seed and the tests): a PNG encoder over `flate2`
//! and silent MPEG audio frames. No binary file is shipped or fetched.
use std::io::Write;

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit RGB PNG of `width × height` from `rgb` (row-major, 3 bytes a pixel).
pub fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    png(width, height, 2, 3, rgb)
}

/// An 8-bit greyscale PNG of `width × height` from `gray` (row-major).
pub fn png_gray(width: u32, height: u32, gray: &[u8]) -> Vec<u8> {
    png(width, height, 0, 1, gray)
}

fn png(width: u32, height: u32, color_type: u8, channels: usize, pixels: &[u8]) -> Vec<u8> {
    let row = width as usize * channels;
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for y in 0..height as usize {
        // Filter type 0 (none) before each row.
        raw.push(0);
        let start = (y * row).min(pixels.len());
        let end = (start + row).min(pixels.len());
        raw.extend_from_slice(&pixels[start..end]);
        raw.resize(raw.len() + row - (end - start), 0);
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&raw);
    let compressed = encoder.finish().unwrap_or_default();

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    png_chunk(&mut out, b"IDAT", &compressed);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// `frames` MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, mono) whose side information
/// and main data are zero: a decoder plays them as silence.
pub fn silent_mp3(frames: usize) -> Vec<u8> {
    // 144 × bitrate / sample rate: each frame's length in bytes at these settings.
    const FRAME_LEN: usize = 417;
    let mut out = Vec::with_capacity(frames * FRAME_LEN);
    for _ in 0..frames {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0xC4]);
        out.resize(out.len() + FRAME_LEN - 4, 0);
    }
    out
}
