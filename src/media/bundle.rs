//! The media bundle of a package: one ZIP of its objects, each stored (not compressed),
//! named by its hash, sorted by name, dated 1980-01-01 00:00, with no extra fields. Every
//! byte follows from the sorted list of (hash, size, CRC-32), so the bundle is the same on
//! every instance and after every restart, and its layout — where each header, each
//! object's bytes and the central directory lie — is computed without reading any object.
//! A request for any byte range then streams just the objects it overlaps, one at a time:
//! no bundle is ever held in memory.
use super::{MediaMeta, MediaSha256};
use crate::hashing::sha256_hex;

/// Every entry name is a hex SHA-256.
const NAME_LEN: usize = 64;
const LOCAL_HEADER_LEN: u64 = 30 + NAME_LEN as u64;
const CENTRAL_HEADER_LEN: usize = 46 + NAME_LEN;
const END_LEN: usize = 22;
/// Version 1.0: stored entries need nothing newer.
const VERSION_NEEDED: u16 = 10;
/// MS-DOS date of 1980-01-01 (year 0 since 1980, month 1, day 1); the time is 00:00:00.
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;

/// Past these the classic ZIP fields overflow and ZIP64 would be needed; a package that
/// large is refused rather than served as a corrupt archive.
const MAX_ENTRIES: usize = u16::MAX as usize;
const MAX_OFFSET: u64 = u32::MAX as u64;

/// One part of the bundle's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The local header of entry `index`.
    LocalHeader { index: usize },
    /// The bytes of the object of entry `index`.
    Data { index: usize },
    /// The central directory and its end record.
    Directory,
}

/// Where every byte of a bundle comes from.
#[derive(Clone, Debug)]
pub struct Layout {
    entries: Vec<MediaMeta>,
    /// Offset of each entry's local header.
    offsets: Vec<u64>,
    /// The central directory plus end record (small: a hundred bytes or so an entry).
    directory: Vec<u8>,
    directory_offset: u64,
    etag: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the bundle would need ZIP64 ({0})")]
pub struct TooLarge(&'static str);

impl Layout {
    /// The layout of a bundle of `objects` (sorted and de-duplicated here).
    pub fn new(mut objects: Vec<MediaMeta>) -> Result<Layout, TooLarge> {
        objects.sort_by_key(|m| m.sha256);
        objects.dedup_by_key(|m| m.sha256);
        if objects.len() > MAX_ENTRIES {
            return Err(TooLarge("too many entries"));
        }
        let mut offsets = Vec::with_capacity(objects.len());
        let mut at = 0u64;
        for object in &objects {
            if object.bytes > MAX_OFFSET {
                return Err(TooLarge("an entry is too large"));
            }
            offsets.push(at);
            at += LOCAL_HEADER_LEN + object.bytes;
        }
        let directory_offset = at;
        let mut directory = Vec::with_capacity(objects.len() * CENTRAL_HEADER_LEN + END_LEN);
        for (object, offset) in objects.iter().zip(&offsets) {
            if *offset > MAX_OFFSET {
                return Err(TooLarge("the archive is too large"));
            }
            central_header(&mut directory, object, *offset as u32);
        }
        if directory_offset > MAX_OFFSET {
            return Err(TooLarge("the archive is too large"));
        }
        let count = objects.len() as u16;
        let directory_len = directory.len() as u32;
        directory.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        directory.extend_from_slice(&0u16.to_le_bytes()); // this disk
        directory.extend_from_slice(&0u16.to_le_bytes()); // disk of the directory
        directory.extend_from_slice(&count.to_le_bytes());
        directory.extend_from_slice(&count.to_le_bytes());
        directory.extend_from_slice(&directory_len.to_le_bytes());
        directory.extend_from_slice(&(directory_offset as u32).to_le_bytes());
        directory.extend_from_slice(&0u16.to_le_bytes()); // comment length
        // The bytes follow from the names alone (each name fixes its object's bytes), so
        // the names are the strong validator.
        let mut names = String::with_capacity(objects.len() * (NAME_LEN + 1) + 32);
        names.push_str("examsync-media-bundle-1\n");
        for object in &objects {
            names.push_str(&object.sha256.hex());
            names.push('\n');
        }
        let etag = format!("\"{}\"", sha256_hex(names.as_bytes()));
        Ok(Layout {
            entries: objects,
            offsets,
            directory,
            directory_offset,
            etag,
        })
    }

    pub fn len(&self) -> u64 {
        self.directory_offset + self.directory.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn entries(&self) -> &[MediaMeta] {
        &self.entries
    }

    /// The strong `ETag`, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Roughly the memory this layout holds, for bounded caches.
    pub fn weight(&self) -> usize {
        self.entries.len() * (std::mem::size_of::<MediaMeta>() + std::mem::size_of::<u64>())
            + self.directory.len()
            + self.etag.len()
    }

    /// Every piece in order, with its offset and length.
    pub fn pieces(&self) -> impl Iterator<Item = (Piece, u64, u64)> + '_ {
        self.entries
            .iter()
            .zip(&self.offsets)
            .enumerate()
            .flat_map(|(index, (object, offset))| {
                [
                    (Piece::LocalHeader { index }, *offset, LOCAL_HEADER_LEN),
                    (
                        Piece::Data { index },
                        offset + LOCAL_HEADER_LEN,
                        object.bytes,
                    ),
                ]
            })
            .chain(std::iter::once((
                Piece::Directory,
                self.directory_offset,
                self.directory.len() as u64,
            )))
    }

    /// The pieces overlapping bytes `start..=end`, each with the part of it wanted
    /// (`from..to` within the piece).
    pub fn pieces_in(&self, start: u64, end: u64) -> Vec<(Piece, u64, u64)> {
        self.pieces()
            .filter(|(_, offset, len)| *len > 0 && *offset <= end && offset + len > start)
            .map(|(piece, offset, len)| {
                let from = start.saturating_sub(offset);
                let to = (end + 1 - offset).min(len);
                (piece, from, to)
            })
            .collect()
    }

    /// The bytes of a header piece (the data pieces come from the store).
    pub fn header_bytes(&self, piece: Piece) -> Vec<u8> {
        match piece {
            Piece::LocalHeader { index } => local_header(&self.entries[index]),
            Piece::Directory => self.directory.clone(),
            Piece::Data { .. } => Vec::new(),
        }
    }

    /// The object of a data piece.
    pub fn object(&self, index: usize) -> &MediaMeta {
        &self.entries[index]
    }
}

fn entry_fields(out: &mut Vec<u8>, object: &MediaMeta) {
    out.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // flags: sizes known, ASCII names
    out.extend_from_slice(&0u16.to_le_bytes()); // method: stored
    out.extend_from_slice(&DOS_TIME.to_le_bytes());
    out.extend_from_slice(&DOS_DATE.to_le_bytes());
    out.extend_from_slice(&object.crc32.to_le_bytes());
    // Checked against MAX_OFFSET in `Layout::new`.
    out.extend_from_slice(&(object.bytes as u32).to_le_bytes()); // compressed
    out.extend_from_slice(&(object.bytes as u32).to_le_bytes()); // uncompressed
    out.extend_from_slice(&(NAME_LEN as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // extra field length
}

fn local_header(object: &MediaMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOCAL_HEADER_LEN as usize);
    out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    entry_fields(&mut out, object);
    out.extend_from_slice(object.sha256.hex().as_bytes());
    out
}

fn central_header(out: &mut Vec<u8>, object: &MediaMeta, offset: u32) {
    out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    out.extend_from_slice(&VERSION_NEEDED.to_le_bytes()); // made by: MS-DOS, 1.0
    entry_fields(out, object);
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out.extend_from_slice(&0u16.to_le_bytes()); // disk number
    out.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    out.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(object.sha256.hex().as_bytes());
}

/// The whole bundle in memory, from the objects' bytes (tests, the vector file and the
/// CLI; the server streams instead).
pub fn assemble(layout: &Layout, data_of: impl Fn(&MediaSha256) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(layout.len() as usize);
    for (piece, _, _) in layout.pieces() {
        match piece {
            Piece::Data { index } => out.extend_from_slice(&data_of(&layout.object(index).sha256)),
            header => out.extend_from_slice(&layout.header_bytes(header)),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::media::MediaContentType;

    fn object(data: &[u8]) -> MediaMeta {
        MediaMeta {
            sha256: MediaSha256::of(data),
            content_type: MediaContentType::Png,
            bytes: data.len() as u64,
            width: Some(1),
            height: Some(1),
            crc32: crc32fast::hash(data),
        }
    }

    /// `vectors/media.json` (what the mobile recipes are tested against) is what this code
    /// computes: the package's `version_hash` with media references, and its bundle's bytes.
    /// `EXAMSYNC_WRITE_VECTORS=1` rewrites it from the drawings below.
    #[test]
    fn media_vector_agrees() {
        use crate::media::{MediaPlacement, draw};
        use crate::packages::{Snapshot, SnapshotMedia, canonical_questions};
        use base64::Engine;
        use serde_json::{Value, json};
        use uuid::Uuid;

        let b64 = base64::engine::general_purpose::STANDARD;
        let datas = [
            draw::png_gray(2, 2, &[0, 85, 170, 255]),
            draw::png_rgb(3, 1, &[255, 0, 0, 0, 255, 0, 0, 0, 255]),
            draw::silent_mp3(1),
        ];
        let metas: Vec<MediaMeta> = datas
            .iter()
            .map(|d| {
                let sniffed = crate::media::sniff(d).unwrap();
                MediaMeta {
                    sha256: MediaSha256::of(d),
                    content_type: sniffed.content_type,
                    bytes: d.len() as u64,
                    width: sniffed.width,
                    height: sniffed.height,
                    crc32: crc32fast::hash(d),
                }
            })
            .collect();
        let question = |n: u128, stem: &str, media: Vec<SnapshotMedia>| Snapshot {
            question_id: Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + n).into(),
            stem: stem.into(),
            option_a: Some("Sinus rhythm".into()),
            option_b: Some("Atrial fibrillation".into()),
            option_c: None,
            option_d: None,
            option_e: None,
            correct_index: 0,
            explanation_md: None,
            year_id: 1,
            block_id: None,
            theme_id: None,
            cognitive_level: None,
            difficulty: None,
            media,
        };
        let questions = vec![
            question(
                1,
                "Which rhythm does the strip show?",
                vec![
                    SnapshotMedia::new(&metas[0], MediaPlacement::Stem, Some("ECG strip".into())),
                    SnapshotMedia::new(&metas[2], MediaPlacement::Explanation, None),
                ],
            ),
            question(
                2,
                "Which image shows atrial fibrillation?",
                vec![
                    SnapshotMedia::new(&metas[1], MediaPlacement::OptionB, Some("Strip B".into())),
                    SnapshotMedia::new(&metas[0], MediaPlacement::OptionA, Some("Strip A".into())),
                ],
            ),
            question(3, "A question without media.", Vec::new()),
        ];
        let (canonical, version_hash) = canonical_questions(questions.clone()).unwrap();
        let layout = Layout::new(metas.clone()).unwrap();
        let bundle = assemble(&layout, |sha| {
            datas
                .iter()
                .find(|d| MediaSha256::of(d) == *sha)
                .unwrap()
                .clone()
        });
        let expected = json!({
            "description": "A small package with media (docs/api.md sections 4, 4.1 and 5): its \
                snapshots and version_hash, its objects, and its media bundle (the ZIP served by \
                GET /api/v1/tests/packages/{id}/media) with the entries it holds, sorted by name.",
            "questions": serde_json::from_str::<Value>(&canonical).unwrap(),
            "version_hash": version_hash,
            "objects": metas.iter().zip(&datas).map(|(m, d)| json!({
                "sha256": m.sha256, "content_type": m.content_type, "bytes": m.bytes,
                "width": m.width, "height": m.height, "base64": b64.encode(d),
            })).collect::<Vec<_>>(),
            "bundle": {
                "etag": layout.etag(),
                "bytes": bundle.len(),
                "entries": layout.entries().iter().map(|m| json!({
                    "name": m.sha256, "bytes": m.bytes, "crc32": m.crc32,
                })).collect::<Vec<_>>(),
                "base64": b64.encode(&bundle),
            },
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/media.json");
        if std::env::var("EXAMSYNC_WRITE_VECTORS").is_ok_and(|v| v == "1") {
            let text = serde_json::to_string_pretty(&expected).unwrap();
            std::fs::write(path, format!("{text}\n")).unwrap();
        }
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(stored, expected, "vectors/media.json is out of date");
    }

    #[test]
    fn empty_bundle_is_an_end_record() {
        let layout = Layout::new(Vec::new()).unwrap();
        assert_eq!(layout.len(), 22);
        let bytes = assemble(&layout, |_| Vec::new());
        assert_eq!(&bytes[..4], b"PK\x05\x06");
        assert!(bytes[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn ranges_cover_exactly_the_assembled_bytes() {
        let datas: Vec<Vec<u8>> = vec![b"alpha".to_vec(), vec![7; 300], Vec::new(), b"z".to_vec()];
        let by_sha: HashMap<MediaSha256, Vec<u8>> = datas
            .iter()
            .map(|d| (MediaSha256::of(d), d.clone()))
            .collect();
        let layout = Layout::new(datas.iter().map(|d| object(d)).collect()).unwrap();
        let whole = assemble(&layout, |sha| by_sha[sha].clone());
        assert_eq!(whole.len() as u64, layout.len());
        for (start, end) in [
            (0, 0),
            (0, 93),
            (90, 100),
            (5, whole.len() as u64 - 1),
            (400, 700),
        ] {
            let end = end.min(whole.len() as u64 - 1);
            let mut part = Vec::new();
            for (piece, from, to) in layout.pieces_in(start, end) {
                let bytes = match piece {
                    Piece::Data { index } => by_sha[&layout.object(index).sha256].clone(),
                    header => layout.header_bytes(header),
                };
                part.extend_from_slice(&bytes[from as usize..to as usize]);
            }
            assert_eq!(part, whole[start as usize..=end as usize], "{start}-{end}");
        }
    }
}
