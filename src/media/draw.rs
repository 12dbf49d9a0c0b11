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

/// A deterministic pseudo-random sequence (a linear congruential generator), so drawings
/// are the same bytes on every machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
}

/// The height (0 = baseline, 1 = top of the R wave) of a PQRST complex at `t` in 0..1.
fn pqrst(t: f64) -> f64 {
    let bump =
        |centre: f64, width: f64, height: f64| height * (-((t - centre) / width).powi(2)).exp();
    bump(0.18, 0.035, 0.12)
        + bump(0.36, 0.008, -0.12)
        + bump(0.39, 0.011, 1.0)
        + bump(0.42, 0.009, -0.25)
        + bump(0.66, 0.05, 0.25)
}

/// An ECG strip (lead II, sinus rhythm) on the usual pink grid.
pub fn ecg_strip(width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let colour = if x % 40 == 0 || y % 40 == 0 {
                [235, 140, 150]
            } else if x % 8 == 0 || y % 8 == 0 {
                [250, 200, 205]
            } else {
                [255, 242, 242]
            };
            rgb[(y * w + x) * 3..][..3].copy_from_slice(&colour);
        }
    }
    let baseline = h as f64 * 0.7;
    let amplitude = h as f64 * 0.55;
    let period = 150.0;
    let y_at = |x: usize| baseline - amplitude * pqrst((x as f64 % period) / period);
    let mut previous = y_at(0);
    for x in 0..w {
        let y = y_at(x);
        let (top, bottom) = (previous.min(y) - 1.0, previous.max(y) + 1.0);
        for row in (top.max(0.0) as usize)..=(bottom.min(h as f64 - 1.0) as usize) {
            rgb[(row * w + x) * 3..][..3].copy_from_slice(&[20, 20, 30]);
        }
        previous = y;
    }
    png_rgb(width, height, &rgb)
}

/// A chest radiograph, schematically: dark lung fields, ribs, the heart's shadow.
pub fn chest_radiograph(size: u32) -> Vec<u8> {
    let n = size as usize;
    let s = n as f64;
    let mut gray = vec![0u8; n * n];
    let mut noise = Lcg(7);
    for y in 0..n {
        for x in 0..n {
            let (fx, fy) = (x as f64 / s, y as f64 / s);
            let inside = |cx: f64, cy: f64, rx: f64, ry: f64| {
                ((fx - cx) / rx).powi(2) + ((fy - cy) / ry).powi(2) <= 1.0
            };
            let mut v: f64 = 25.0;
            if inside(0.5, 0.55, 0.45, 0.5) {
                v = 150.0; // soft tissue
            }
            if inside(0.32, 0.5, 0.14, 0.3) || inside(0.68, 0.5, 0.14, 0.3) {
                v = 55.0; // lung fields
                // Ribs: bright arcs across each lung field.
                let arc = (fy * 14.0 + (fx - 0.5).abs() * 4.0).fract();
                if arc < 0.14 {
                    v = 185.0;
                }
            }
            if inside(0.56, 0.62, 0.13, 0.14) {
                v = 200.0; // the heart's shadow
            }
            if (fx - 0.5).abs() < 0.025 && fy < 0.85 {
                v = 225.0; // spine
            }
            let grain = f64::from(noise.next() % 13) - 6.0;
            gray[y * n + x] = (v + grain).clamp(0.0, 255.0) as u8;
        }
    }
    png_gray(size, size, &gray)
}

/// A haematoxylin-and-eosin slide, schematically: pink stroma with purple nuclei.
pub fn histology_slide(size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut rgb = Vec::with_capacity(n * n * 3);
    let mut noise = Lcg(11);
    for _ in 0..n * n {
        let g = (noise.next() % 20) as u8;
        rgb.extend_from_slice(&[235 - g, 170 - g, 195 - g]);
    }
    let mut place = Lcg(23);
    for _ in 0..(n * n / 400).max(1) {
        let (cx, cy) = (place.next() as usize % n, place.next() as usize % n);
        let r = 3 + place.next() as usize % 5;
        for y in cy.saturating_sub(r)..(cy + r).min(n) {
            for x in cx.saturating_sub(r)..(cx + r).min(n) {
                let (dx, dy) = (x.abs_diff(cx), y.abs_diff(cy));
                if dx * dx + dy * dy <= r * r {
                    rgb[(y * n + x) * 3..][..3].copy_from_slice(&[90, 40, 130]);
                }
            }
        }
    }
    png_rgb(size, size, &rgb)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::{MediaContentType, sniff};

    #[test]
    fn drawings_are_valid_and_deterministic() {
        for (bytes, w, h) in [
            (ecg_strip(600, 200), 600, 200),
            (chest_radiograph(320), 320, 320),
            (histology_slide(256), 256, 256),
        ] {
            let sniffed = sniff(&bytes).unwrap();
            assert_eq!(sniffed.content_type, MediaContentType::Png);
            assert_eq!((sniffed.width, sniffed.height), (Some(w), Some(h)));
        }
        assert_eq!(ecg_strip(60, 20), ecg_strip(60, 20));
        assert_eq!(
            sniff(&silent_mp3(5)).unwrap().content_type,
            MediaContentType::Mpeg
        );
    }
}
