//! `examsync media import PATH…`: stores every allowed file of the given files and
//! directories (recursively, in path order), and reports the others.
use std::path::{Path, PathBuf};

use sea_orm::DatabaseConnection;

use super::{MediaMeta, MediaSha256, load_meta, store_object};
use crate::error::AppError;

/// What one import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Each stored (or already present) file with its object.
    pub stored: Vec<(PathBuf, MediaMeta)>,
    /// Each file refused, with why.
    pub refused: Vec<(PathBuf, String)>,
}

/// The files under `paths`, sorted within each directory.
fn files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        walk(path, &mut files)?;
    }
    Ok(files)
}

fn walk(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if metadata.is_dir() {
        let mut entries = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list {}: {e}", path.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
        entries.sort();
        for entry in entries {
            walk(&entry, files)?;
        }
    } else {
        files.push(path.to_owned());
    }
    Ok(())
}

/// Stores each allowed file. A refused file (type, size) is reported and the others still
/// stored; an unreadable path or a database fault stops the import.
///
/// Every file is hashed first and the store asked once (per 500 hashes) which objects it
/// already holds, so that running an import again reads the files but writes nothing and
/// asks the database a handful of questions.
pub async fn import_paths(
    db: &DatabaseConnection,
    paths: &[PathBuf],
    max_bytes: usize,
) -> Result<ImportReport, String> {
    let mut report = ImportReport::default();
    let mut hashed = Vec::new();
    for file in files_of(paths)? {
        let len = std::fs::metadata(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            .len();
        if len > max_bytes as u64 {
            report.refused.push((
                file,
                format!("larger than EXAMSYNC_MEDIA_MAX_BYTES ({max_bytes} bytes)"),
            ));
            continue;
        }
        let data = read(&file)?;
        hashed.push((file, MediaSha256::of(&data)));
    }
    let shas: Vec<MediaSha256> = hashed.iter().map(|(_, sha)| *sha).collect();
    let present = load_meta(db, &shas)
        .await
        .map_err(|e| e.operator_message())?;
    for (file, sha) in hashed {
        if let Some(meta) = present.get(&sha) {
            report.stored.push((file, *meta));
            continue;
        }
        // Read again rather than held from the first pass: a directory of radiographs need
        // not fit in memory. The hash is checked again, so a file changed since is refused.
        let data = read(&file)?;
        match store_object(db, Some(sha), data, max_bytes).await {
            Ok((meta, _)) => report.stored.push((file, meta)),
            Err(
                e @ (AppError::MediaTypeNotAllowed(_)
                | AppError::PayloadTooLarge { .. }
                | AppError::BadRequest { .. }),
            ) => report.refused.push((file, e.to_string())),
            Err(e) => return Err(e.operator_message()),
        }
    }
    Ok(report)
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}
