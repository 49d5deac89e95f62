//! Bearer-token authentication (SPEC §6, `--token-file`): the token in force, its file, and the
//! constant-time check every endpoint but `/healthz` goes through.
//!
//! Only the SHA-256 digest of the token is kept. Comparing digests with `subtle` takes the same
//! time whatever the presented token is, including its length, so timing reveals nothing.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use slog::Logger;
use subtle::ConstantTimeEq;

use crate::log::records;

/// Why a token file cannot be used.
#[derive(Debug)]
pub enum TokenError {
    /// The file cannot be read (missing, or not readable by the daemon's user).
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Nothing but whitespace: no token at all, which must not mean "no auth".
    Empty { path: PathBuf },
    /// A token must fit in an `Authorization` header: one word of visible ASCII.
    Malformed { path: PathBuf },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Read { path, source } => {
                write!(
                    f,
                    "{}: cannot read the token file: {source}",
                    path.display()
                )
            }
            TokenError::Empty { path } => write!(f, "{}: the token file is empty", path.display()),
            TokenError::Malformed { path } => write!(
                f,
                "{}: the token must be one word of visible ASCII characters",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokenError {}

/// The token in force and the file it came from; re-read on every reload pass.
pub struct TokenFile {
    path: PathBuf,
    digest: ArcSwap<[u8; 32]>,
    /// The last failure reported, so a file that stays broken is reported once.
    last_error: std::sync::Mutex<Option<String>>,
}

impl TokenFile {
    /// Reads the token at startup; any failure stops the daemon (exit 78, like a bad map).
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        Ok(TokenFile {
            path: path.to_path_buf(),
            digest: ArcSwap::from_pointee(read_digest(path)?),
            last_error: std::sync::Mutex::new(None),
        })
    }

    /// The file's mode when group or others may read it: the token should be the daemon's alone.
    pub fn readable_by_others(&self) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.path).ok()?.permissions().mode() & 0o7777;
        (mode & 0o044 != 0).then_some(mode)
    }

    /// Re-reads the file; on failure the old token stays in force and the failure is logged.
    pub fn reload(&self, log: &Logger) {
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match read_digest(&self.path) {
            Ok(digest) => {
                *last_error = None;
                if **self.digest.load() != digest {
                    self.digest.store(digest.into());
                    records::token_loaded(log, &self.path);
                }
            }
            Err(err) => {
                let message = err.to_string();
                if last_error.as_deref() != Some(&message) {
                    records::token_rejected(log, &message);
                    *last_error = Some(message);
                }
            }
        }
    }

    /// The names of the environment variables the token came from: those holding the token
    /// itself or the token file's path as given. Exec workflows must not inherit them (SPEC §8).
    pub fn revealing_variables(&self) -> Vec<OsString> {
        let digest = self.digest.load();
        std::env::vars_os()
            .filter(|(_, value)| {
                let holds_token = Sha256::digest(value.as_bytes().trim_ascii()).ct_eq(&**digest);
                value == self.path.as_os_str() || bool::from(holds_token)
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// True when `authorization` is `Bearer <the token in force>`.
    pub fn authorizes(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(|value| bearer(value.as_bytes())) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&**self.digest.load()).into()
    }
}

fn read_digest(path: &Path) -> Result<[u8; 32], TokenError> {
    Ok(Sha256::digest(read_token(path)?).into())
}

/// Reads the token in `path` as the daemon and `autohealer send` both use it: surrounding
/// whitespace trimmed, and it must be one word of visible ASCII (what a header can carry).
pub fn read_token(path: &Path) -> Result<Vec<u8>, TokenError> {
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(TokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_vec())
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive (RFC 7235 §2.1).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = header.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn the_bearer_scheme_is_parsed() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let (_dir, path) = token_file("\n  s3cret \n");
        let token = TokenFile::load(&path).unwrap();
        let header = |v: &'static str| HeaderValue::from_static(v);
        assert!(token.authorizes(Some(&header("Bearer s3cret"))));
        assert!(!token.authorizes(Some(&header("Bearer s3cre"))));
        assert!(!token.authorizes(Some(&header("Bearer s3cret2"))));
        assert!(!token.authorizes(Some(&header("s3cret"))));
        assert!(!token.authorizes(None));
    }

    #[test]
    fn bad_token_files_say_what_is_wrong() {
        let (_dir, path) = token_file(" \n\t");
        let err = TokenFile::load(&path).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("{}: the token file is empty", path.display())
        );
        let (_dir, path) = token_file("two words");
        let err = TokenFile::load(&path).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the token must be one word of visible ASCII characters",
                path.display()
            )
        );
        let missing = Path::new("/nonexistent/token");
        let err = TokenFile::load(missing).err().unwrap();
        assert_eq!(
            err.to_string(),
            "/nonexistent/token: cannot read the token file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_old_token() {
        let (_dir, path) = token_file("old");
        let token = TokenFile::load(&path).unwrap();
        let log = Logger::root(slog::Discard, slog::o!());
        std::fs::write(&path, "").unwrap();
        token.reload(&log);
        assert!(token.authorizes(Some(&HeaderValue::from_static("Bearer old"))));
        std::fs::write(&path, "new").unwrap();
        token.reload(&log);
        assert!(token.authorizes(Some(&HeaderValue::from_static("Bearer new"))));
        assert!(!token.authorizes(Some(&HeaderValue::from_static("Bearer old"))));
    }
}
