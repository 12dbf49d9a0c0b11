//! Trusted documents: the operations an app version was built with, read at start from
//! manifests in the format Apollo's client tooling generates
//! (`apollo-persisted-query-manifest`, version 1). When configured, only these operations
//! run, by id or by their exact text (docs/api.md section 6).
//!
//! Several app versions are in the field at once, so the server serves the union of
//! several manifests: each configured path is a manifest file or a directory of them.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::hashing::sha256_hex;

/// The only manifest format and version understood.
pub const MANIFEST_FORMAT: &str = "apollo-persisted-query-manifest";
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    operations: Vec<ManifestOperation>,
}

#[derive(Deserialize)]
struct ManifestOperation {
    id: String,
    body: String,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<OperationKind>,
}

/// The `type` of a manifest entry.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

/// Why a manifest was refused; the message names the file and, when it is about one
/// entry, the entry (its 0-based index, name and id).
#[derive(Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub path: PathBuf,
    pub entry: Option<String>,
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trusted documents {}", self.path.display())?;
        if let Some(entry) = &self.entry {
            write!(f, ", {entry}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ManifestError {}

/// The union of the configured manifests.
#[derive(Debug, Default)]
pub struct TrustedDocuments {
    /// Operation body by id (the lowercase hex SHA-256 of the body).
    by_id: HashMap<String, String>,
    /// Every body, for requests that send the text.
    bodies: HashSet<String>,
    /// The manifest files read, for the start-up log.
    files: Vec<PathBuf>,
}

impl TrustedDocuments {
    /// Reads every path (a manifest file, or a directory whose `*.json` files are
    /// manifests) into one list.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ManifestError> {
        let mut documents = TrustedDocuments::default();
        for path in paths {
            if path.is_dir() {
                let error = |reason: String| ManifestError {
                    path: path.clone(),
                    entry: None,
                    reason,
                };
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| error(e.to_string()))?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|ext| ext == "json") && p.is_file())
                    .collect();
                if files.is_empty() {
                    return Err(error("the directory holds no *.json manifest".into()));
                }
                files.sort();
                for file in files {
                    documents.add_file(&file)?;
                }
            } else {
                documents.add_file(path)?;
            }
        }
        Ok(documents)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), ManifestError> {
        let text = std::fs::read(path).map_err(|e| ManifestError {
            path: path.to_owned(),
            entry: None,
            reason: e.to_string(),
        })?;
        self.add_manifest(&text)
            .map_err(|(entry, reason)| ManifestError {
                path: path.to_owned(),
                entry,
                reason,
            })?;
        self.files.push(path.to_owned());
        Ok(())
    }

    /// Adds one manifest's operations; an error names the entry it is about.
    fn add_manifest(&mut self, text: &[u8]) -> Result<(), (Option<String>, String)> {
        let manifest: Manifest = serde_json::from_slice(text)
            .map_err(|e| (None, format!("not a persisted query manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT || manifest.version != MANIFEST_VERSION {
            return Err((
                None,
                format!(
                    "format {:?} version {} is not {MANIFEST_FORMAT:?} version {MANIFEST_VERSION}",
                    manifest.format, manifest.version
                ),
            ));
        }
        for (index, operation) in manifest.operations.into_iter().enumerate() {
            let entry = format!(
                "operation {index} (name {:?}, id {:?})",
                operation.name.as_deref().unwrap_or(""),
                operation.id
            );
            let actual = sha256_hex(operation.body.as_bytes());
            if operation.id != actual {
                return Err((
                    Some(entry),
                    format!("id is not the SHA-256 of the body (that is {actual})"),
                ));
            }
            if let Err(e) = async_graphql::parser::parse_query(&operation.body) {
                return Err((Some(entry), format!("the body does not parse: {e}")));
            }
            if operation.kind == Some(OperationKind::Subscription) {
                return Err((Some(entry), "this server has no subscriptions".into()));
            }
            self.bodies.insert(operation.body.clone());
            self.by_id.insert(operation.id, operation.body);
        }
        Ok(())
    }

    /// The body listed under `id` (lowercase hex).
    pub fn body(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// True when `text` is exactly a listed body.
    pub fn contains_body(&self, text: &str) -> bool {
        self.bodies.contains(text)
    }

    /// How many distinct operations are listed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The manifest files read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(operations: serde_json::Value) -> Vec<u8> {
        json!({"format": MANIFEST_FORMAT, "version": 1, "operations": operations})
            .to_string()
            .into_bytes()
    }

    fn entry(name: &str, body: &str) -> serde_json::Value {
        json!({"id": sha256_hex(body.as_bytes()), "name": name, "type": "query", "body": body})
    }

    #[test]
    fn lists_operations_by_id_and_text() {
        let mut docs = TrustedDocuments::default();
        let body = "query A { syncStatus { ackedCount } }";
        docs.add_manifest(&manifest(json!([entry("A", body)])))
            .unwrap();
        assert_eq!(docs.body(&sha256_hex(body.as_bytes())), Some(body));
        assert!(docs.contains_body(body));
        assert!(!docs.contains_body("query A { syncStatus { ackedCount } } "));
        assert_eq!(docs.body(&"0".repeat(64)), None);
    }

    #[test]
    fn refuses_bad_entries_naming_them() {
        let mut docs = TrustedDocuments::default();
        let wrong = json!({"id": "a".repeat(64), "name": "Wrong", "type": "query", "body": "{ __typename }"});
        let (named, reason) = docs
            .add_manifest(&manifest(json!([entry("Ok", "{ __typename }"), wrong])))
            .unwrap_err();
        let named = named.unwrap();
        assert!(
            named.contains("operation 1") && named.contains("Wrong"),
            "{named}"
        );
        assert!(reason.contains("SHA-256"), "{reason}");

        let (named, reason) = docs
            .add_manifest(&manifest(json!([entry("Broken", "{ a ")])))
            .unwrap_err();
        assert!(named.unwrap().contains("Broken"));
        assert!(reason.contains("parse"), "{reason}");

        let (named, _) = docs.add_manifest(b"{\"format\": 1").unwrap_err();
        assert_eq!(named, None);
        let other = json!({"format": "relay", "version": 1, "operations": []}).to_string();
        let (_, reason) = docs.add_manifest(other.as_bytes()).unwrap_err();
        assert!(reason.contains("relay"), "{reason}");
    }

    #[test]
    fn loads_the_union_of_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let a = "query A { syncStatus { ackedCount } }";
        let b = "query B { mySessions { id } }";
        let c = "query C { packages { id } }";
        let versions = dir.path().join("versions");
        std::fs::create_dir(&versions).unwrap();
        std::fs::write(versions.join("1.json"), manifest(json!([entry("A", a)]))).unwrap();
        std::fs::write(
            versions.join("2.json"),
            manifest(json!([entry("A", a), entry("B", b)])),
        )
        .unwrap();
        std::fs::write(versions.join("notes.txt"), "not a manifest").unwrap();
        let single = dir.path().join("ios.json");
        std::fs::write(&single, manifest(json!([entry("C", c)]))).unwrap();
        let docs = TrustedDocuments::load(&[versions, single]).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs.files().len(), 3);
        assert!(docs.contains_body(a) && docs.contains_body(b) && docs.contains_body(c));

        let missing = dir.path().join("missing.json");
        let err = TrustedDocuments::load(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(err.path, missing);
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = TrustedDocuments::load(&[empty]).unwrap_err();
        assert!(err.to_string().contains("no *.json"), "{err}");
    }
}
