//! Semantic checks every manifest passes before it is encoded or accepted.

use std::collections::HashMap;

use super::path::{parent, validate_rel_path};
use super::{ChunkingSpec, EntryKind, MAX_CHUNK_LEN, Manifest, ManifestError};

const MAX_NAME_SEGMENT: usize = 128;
const MAX_VERSION: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;

fn name_segment_ok(s: &str, max: usize, extra: &[u8]) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    let b = s.as_bytes();
    if !b[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && extra.contains(&(*c as u8)))))
    {
        let allowed: String = extra.iter().map(|&c| c as char).collect();
        return Err(format!(
            "has {c:?}; use letters, digits and any of {allowed:?}"
        ));
    }
    Ok(())
}

/// `[namespace/]name`: one or two segments of letters, digits, `.`, `_`, `-`.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let bad = |reason: String| ManifestError::BadName {
        name: name.to_owned(),
        reason,
    };
    let segs: Vec<&str> = name.split('/').collect();
    if segs.len() > 2 {
        return Err(bad(
            "has more than one '/'; the form is [namespace/]name".into()
        ));
    }
    for s in segs {
        name_segment_ok(s, MAX_NAME_SEGMENT, b"._-").map_err(bad)?;
    }
    Ok(())
}

/// Letters, digits, `.`, `_`, `+`, `-`; starts with a letter or digit.
pub fn validate_version(version: &str) -> Result<(), ManifestError> {
    name_segment_ok(version, MAX_VERSION, b"._+-").map_err(|reason| ManifestError::BadVersion {
        version: version.to_owned(),
        reason,
    })
}

impl Manifest {
    /// Checks everything a receiver relies on: names, paths (relative,
    /// unique, sorted, under directory entries), symlinks that stay inside
    /// the package, chunks that tile every file exactly, sizes that add up.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.name)?;
        validate_version(&self.version)?;
        if self.publisher_key_id.len() != 16
            || !self
                .publisher_key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ManifestError::BadKeyId {
                key_id: self.publisher_key_id.clone(),
            });
        }
        self.validate_chunking()?;
        self.validate_labels()?;
        let index = self.validate_files()?;
        self.validate_symlinks(&index)?;
        self.validate_chunks()?;
        let actual = self
            .files
            .iter()
            .try_fold(0u64, |acc, f| acc.checked_add(f.size()))
            .ok_or(ManifestError::TotalSizeMismatch {
                declared: self.total_size,
                actual: u64::MAX,
            })?;
        if actual != self.total_size {
            return Err(ManifestError::TotalSizeMismatch {
                declared: self.total_size,
                actual,
            });
        }
        Ok(())
    }

    fn validate_chunking(&self) -> Result<(), ManifestError> {
        let bad = |reason: String| Err(ManifestError::BadChunking { reason });
        match self.chunking {
            ChunkingSpec::Fixed { size } if size == 0 || size > MAX_CHUNK_LEN => bad(format!(
                "fixed chunk size {size} must be 1..={MAX_CHUNK_LEN}"
            )),
            ChunkingSpec::Cdc { min, avg, max }
                if !(0 < min && min <= avg && avg <= max && max <= MAX_CHUNK_LEN) =>
            {
                bad(format!(
                    "CDC bounds min {min}, avg {avg}, max {max} must satisfy 0 < min <= avg <= max <= {MAX_CHUNK_LEN}"
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_labels(&self) -> Result<(), ManifestError> {
        for (k, v) in &self.labels {
            name_segment_ok(k, MAX_LABEL_KEY, b"._-").map_err(|reason| {
                ManifestError::BadLabel {
                    key: k.clone(),
                    reason: format!("key {reason}"),
                }
            })?;
            if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
                return Err(ManifestError::BadLabel {
                    key: k.clone(),
                    reason: format!(
                        "value must be at most {MAX_LABEL_VALUE} bytes without control characters"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Returns path → index for the symlink check.
    fn validate_files(&self) -> Result<HashMap<&str, usize>, ManifestError> {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.files.len());
        let mut prev: Option<&str> = None;
        for (i, f) in self.files.iter().enumerate() {
            validate_rel_path(&f.path).map_err(|reason| ManifestError::BadPath {
                index: i,
                path: f.path.clone(),
                reason,
            })?;
            if let Some(&first) = index.get(f.path.as_str()) {
                return Err(ManifestError::DuplicatePath {
                    index: i,
                    path: f.path.clone(),
                    first,
                });
            }
            if let Some(p) = prev
                && p.as_bytes() > f.path.as_bytes()
            {
                return Err(ManifestError::Unsorted {
                    index: i,
                    path: f.path.clone(),
                    prev: p.to_owned(),
                });
            }
            if f.mode & !0o777 != 0 {
                return Err(ManifestError::BadMode {
                    index: i,
                    path: f.path.clone(),
                    mode: f.mode,
                });
            }
            prev = Some(&f.path);
            index.insert(&f.path, i);
        }
        // Every ancestor must be a directory entry: no file under a file or
        // symlink, and every directory's mode is stated.
        for (i, f) in self.files.iter().enumerate() {
            if let Some(dir) = parent(&f.path) {
                let ok = index
                    .get(dir)
                    .is_some_and(|&d| matches!(self.files[d].kind, EntryKind::Dir));
                if !ok {
                    return Err(ManifestError::MissingParent {
                        index: i,
                        path: f.path.clone(),
                        parent: dir.to_owned(),
                    });
                }
            }
        }
        Ok(index)
    }

    /// A symlink may point anywhere inside the package, resolved lexically
    /// from its directory. It may not pass *through* another symlink of the
    /// package: a link to "." followed by ".." would escape while looking
    /// contained, so that case is refused outright.
    fn validate_symlinks(&self, index: &HashMap<&str, usize>) -> Result<(), ManifestError> {
        for (i, f) in self.files.iter().enumerate() {
            let EntryKind::Symlink { target } = &f.kind else {
                continue;
            };
            let fail = |reason| {
                Err(ManifestError::SymlinkEscapes {
                    index: i,
                    path: f.path.clone(),
                    target: target.clone(),
                    reason,
                })
            };
            if target.is_empty() {
                return fail("is empty");
            }
            if target.starts_with('/') || target.contains('\\') || target.contains('\0') {
                return fail(
                    "is absolute or not a portable path; only relative targets inside the package are allowed",
                );
            }
            let mut stack: Vec<&str> = match parent(&f.path) {
                Some(d) => d.split('/').collect(),
                None => Vec::new(),
            };
            let comps: Vec<&str> = target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            for (n, c) in comps.iter().enumerate() {
                if *c == ".." {
                    if stack.pop().is_none() {
                        return fail("escapes the package root");
                    }
                    continue;
                }
                stack.push(c);
                let here = stack.join("/");
                let is_link = index
                    .get(here.as_str())
                    .is_some_and(|&j| matches!(self.files[j].kind, EntryKind::Symlink { .. }));
                if is_link && n + 1 < comps.len() {
                    return fail("passes through another symlink of the package");
                }
            }
        }
        Ok(())
    }

    /// Chunks tile the files' bytes in order: each starts where the one
    /// before ended, within one file, except that a chunk starting at a
    /// file's offset 0 may carry on through whole following files (small
    /// files packed into one chunk). Directories, symlinks and empty files
    /// hold no bytes and are stepped over.
    fn validate_chunks(&self) -> Result<(), ManifestError> {
        // Files with bytes, in order; `r` is the one the next chunk starts
        // in and `covered` how much of it is covered already.
        let data: Vec<usize> = (0..self.files.len())
            .filter(|&i| self.files[i].size() > 0)
            .collect();
        let (mut r, mut covered) = (0usize, 0u64);
        for (ci, c) in self.chunks.iter().enumerate() {
            let bad = |reason: String| ManifestError::BadChunk { index: ci, reason };
            let cf = c.file as usize;
            let Some(named) = self.files.get(cf) else {
                return Err(bad(format!(
                    "names file index {}, but the package has {} entries",
                    c.file,
                    self.files.len()
                )));
            };
            if !matches!(named.kind, EntryKind::File { .. }) {
                return Err(bad(format!(
                    "belongs to files[{cf}] {:?}, which is a {}, not a regular file",
                    named.path,
                    named.kind.name()
                )));
            }
            if c.length == 0 || c.length > MAX_CHUNK_LEN {
                return Err(bad(format!(
                    "length {} must be 1..={MAX_CHUNK_LEN}",
                    c.length
                )));
            }
            let Some(&fi) = data.get(r) else {
                return Err(bad(
                    "comes after chunks that already cover every file".into()
                ));
            };
            let f = &self.files[fi];
            if cf < fi {
                return Err(bad(
                    "out of order; chunks must be sorted by (file, offset)".to_owned()
                ));
            }
            if cf > fi {
                return Err(ManifestError::FileNotCovered {
                    index: fi,
                    path: f.path.clone(),
                    covered,
                    size: f.size(),
                });
            }
            if c.offset < covered {
                return Err(ManifestError::ChunkOverlap {
                    index: ci,
                    path: f.path.clone(),
                    offset: c.offset,
                    expected: covered,
                });
            }
            if c.offset > covered {
                return Err(ManifestError::ChunkGap {
                    index: ci,
                    path: f.path.clone(),
                    offset: c.offset,
                    expected: covered,
                });
            }
            let end = c.offset.saturating_add(u64::from(c.length));
            let size = f.size();
            if end < size {
                covered = end;
                continue;
            }
            r += 1;
            covered = 0;
            if end == size {
                continue;
            }
            // A packed chunk: whole files only, from the first's start.
            if c.offset != 0 {
                return Err(ManifestError::ChunkBeyondEnd {
                    index: ci,
                    path: f.path.clone(),
                    end,
                    size,
                });
            }
            let mut left = end - size;
            while left > 0 {
                let Some(&g) = data.get(r) else {
                    return Err(ManifestError::ChunkBeyondEnd {
                        index: ci,
                        path: f.path.clone(),
                        end,
                        size,
                    });
                };
                let next = &self.files[g];
                if left < next.size() {
                    return Err(bad(format!(
                        "packs whole files from {:?} but ends {left} bytes into {:?} ({} bytes)",
                        f.path,
                        next.path,
                        next.size()
                    )));
                }
                left -= next.size();
                r += 1;
            }
        }
        if let Some(&fi) = data.get(r) {
            let f = &self.files[fi];
            return Err(ManifestError::FileNotCovered {
                index: fi,
                path: f.path.clone(),
                covered,
                size: f.size(),
            });
        }
        Ok(())
    }
}
