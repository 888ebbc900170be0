//! Rules for paths inside a package: relative, normalised, portable.

/// Why a path is not acceptable inside a package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute; package paths are relative to the package root")]
    Absolute,
    #[error("path has a '..' component, which could escape the package root")]
    ParentComponent,
    #[error("path has an empty or '.' component; write it in normal form")]
    NotNormal,
    #[error("path contains a backslash; package paths use '/' only")]
    Backslash,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {max} bytes")]
    TooLong { max: usize },
}

/// Longest path accepted (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single component accepted (NAME_MAX on common file systems).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Checks a package-relative path.
pub fn validate_rel_path(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { max: MAX_PATH_LEN });
    }
    if p.contains('\0') {
        return Err(PathError::Nul);
    }
    if p.contains('\\') {
        return Err(PathError::Backslash);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for c in p.split('/') {
        match c {
            ".." => return Err(PathError::ParentComponent),
            "" | "." => return Err(PathError::NotNormal),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathError::TooLong {
                    max: MAX_COMPONENT_LEN,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parent directory of a package path, `None` at the root.
pub(crate) fn parent(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in ["a", "a/b.txt", "dir/sub/file", ".hidden", "a..b"] {
            assert_eq!(validate_rel_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(validate_rel_path(""), Err(PathError::Empty));
        assert_eq!(validate_rel_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(
            validate_rel_path("a/../../b"),
            Err(PathError::ParentComponent)
        );
        assert_eq!(validate_rel_path(".."), Err(PathError::ParentComponent));
        assert_eq!(validate_rel_path("a//b"), Err(PathError::NotNormal));
        assert_eq!(validate_rel_path("a/./b"), Err(PathError::NotNormal));
        assert_eq!(validate_rel_path("a/"), Err(PathError::NotNormal));
        assert_eq!(validate_rel_path("a\\b"), Err(PathError::Backslash));
        assert_eq!(validate_rel_path("a\0b"), Err(PathError::Nul));
        assert!(matches!(
            validate_rel_path(&"x".repeat(300)),
            Err(PathError::TooLong { .. })
        ));
    }
}
