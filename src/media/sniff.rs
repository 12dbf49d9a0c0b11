//! What uploaded bytes are: the type from their magic bytes (`infer`), an image's
//! dimensions from its header (`imagesize`). The declared `Content-Type` is never asked.
//! This is the parser of untrusted uploads, fuzzed by `fuzz/fuzz_targets/media_sniff.rs`.
use super::MediaContentType;

/// The type and (images only) dimensions of allowed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sniffed {
    pub content_type: MediaContentType,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error(
        "the bytes are {0}; allowed: image/png, image/jpeg, image/webp, image/gif, audio/mpeg, \
         audio/ogg"
    )]
    NotAllowed(String),
    #[error("the {0} header does not give readable dimensions")]
    Unreadable(&'static str),
}

pub fn sniff(data: &[u8]) -> Result<Sniffed, SniffError> {
    let Some(kind) = infer::get(data) else {
        return Err(SniffError::NotAllowed("of no recognised type".into()));
    };
    let Some(content_type) = MediaContentType::parse(kind.mime_type()) else {
        return Err(SniffError::NotAllowed(kind.mime_type().to_owned()));
    };
    // `infer` recognises some formats by a shorter prefix than their specification's
    // signature (PNG by 4 of its 8 bytes): bytes without the whole signature are refused.
    if !has_signature(content_type, data) {
        return Err(SniffError::Unreadable(content_type.as_str()));
    }
    if !content_type.is_image() {
        return Ok(Sniffed {
            content_type,
            width: None,
            height: None,
        });
    }
    // Both readers must agree on the format: bytes one calls PNG and the other something
    // else are not an image a phone can be trusted to draw.
    let agrees = matches!(
        (content_type, imagesize::image_type(data)),
        (MediaContentType::Png, Ok(imagesize::ImageType::Png))
            | (MediaContentType::Jpeg, Ok(imagesize::ImageType::Jpeg))
            | (MediaContentType::Webp, Ok(imagesize::ImageType::Webp))
            | (MediaContentType::Gif, Ok(imagesize::ImageType::Gif))
    );
    let unreadable = || SniffError::Unreadable(content_type.as_str());
    if !agrees {
        return Err(unreadable());
    }
    let size = imagesize::blob_size(data).map_err(|_| unreadable())?;
    let dimension = |n: usize| i32::try_from(n).ok().filter(|n| *n > 0);
    match (dimension(size.width), dimension(size.height)) {
        (Some(width), Some(height)) => Ok(Sniffed {
            content_type,
            width: Some(width),
            height: Some(height),
        }),
        _ => Err(unreadable()),
    }
}

/// Whether `data` starts with the signature its format's specification defines.
fn has_signature(content_type: MediaContentType, data: &[u8]) -> bool {
    match content_type {
        MediaContentType::Png => data.starts_with(b"\x89PNG\r\n\x1a\n"),
        MediaContentType::Jpeg => data.starts_with(&[0xFF, 0xD8, 0xFF]),
        MediaContentType::Gif => data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a"),
        MediaContentType::Webp => {
            data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP"
        }
        MediaContentType::Ogg => data.starts_with(b"OggS"),
        MediaContentType::Mpeg => {
            data.starts_with(b"ID3")
                || (data.len() >= 2 && data[0] == 0xFF && data[1] & 0xE0 == 0xE0)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_truncated_png_signature_is_refused() {
        // Found by the media_sniff fuzz target: `\x89PNG` and then not the rest of it.
        let mut data = b"\x89PNG;P\xa9d".to_vec();
        data.extend_from_slice(&[b'd'; 56]);
        assert!(sniff(&data).is_err());
        assert!(sniff(&tiny_png(3, 2)).is_ok());
    }

    pub(crate) fn tiny_png(width: u32, height: u32) -> Vec<u8> {
        crate::media::draw::png_gray(width, height, &vec![0x80; (width * height) as usize])
    }

    #[test]
    fn allowed_types_are_recognised() {
        let png = tiny_png(4, 3);
        assert_eq!(
            sniff(&png).unwrap(),
            Sniffed {
                content_type: MediaContentType::Png,
                width: Some(4),
                height: Some(3)
            }
        );
        let mp3 = crate::media::draw::silent_mp3(2);
        assert_eq!(sniff(&mp3).unwrap().content_type, MediaContentType::Mpeg);
        assert_eq!(sniff(&mp3).unwrap().width, None);
        let gif = b"GIF89a\x05\x00\x07\x00\x00\x00\x00;";
        let sniffed = sniff(gif).unwrap();
        assert_eq!(sniffed.content_type, MediaContentType::Gif);
        assert_eq!((sniffed.width, sniffed.height), (Some(5), Some(7)));
        let mut ogg = b"OggS\x00\x02".to_vec();
        ogg.resize(64, 0);
        assert_eq!(sniff(&ogg).unwrap().content_type, MediaContentType::Ogg);
    }

    #[test]
    fn jpeg_and_webp_headers_give_dimensions() {
        // SOI, a JFIF APP0 segment, then a baseline SOF0 of 3 × 2 pixels.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        jpeg.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x02, 0x00, 0x03, 0x03]);
        jpeg.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
        let sniffed = sniff(&jpeg).unwrap();
        assert_eq!(sniffed.content_type, MediaContentType::Jpeg);
        assert_eq!((sniffed.width, sniffed.height), (Some(3), Some(2)));
        // An extended WebP (VP8X) of 5 × 4: the canvas size minus one, 24 bits each.
        let mut webp = b"RIFF\x16\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00".to_vec();
        webp.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 3, 0, 0]);
        let sniffed = sniff(&webp).unwrap();
        assert_eq!(sniffed.content_type, MediaContentType::Webp);
        assert_eq!((sniffed.width, sniffed.height), (Some(5), Some(4)));
    }

    #[test]
    fn everything_else_is_refused() {
        let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>"#;
        assert!(matches!(sniff(svg), Err(SniffError::NotAllowed(_))));
        assert!(matches!(sniff(b""), Err(SniffError::NotAllowed(_))));
        assert!(matches!(sniff(b"%PDF-1.7"), Err(SniffError::NotAllowed(_))));
        // A PNG signature without a header: no dimensions, no image.
        let truncated = &tiny_png(2, 2)[..12];
        assert!(sniff(truncated).is_err());
        // Zero-sized images are refused.
        let gif = b"GIF89a\x00\x00\x07\x00\x00\x00\x00;";
        assert!(matches!(sniff(gif), Err(SniffError::Unreadable(_))));
    }
}
