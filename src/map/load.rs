//! Loading a map from disk: read the file once, digest it, compile it, and refuse a map that
//! declares exec workflows when someone other than root or the daemon's user could change it
//! (SPEC §3). `check`, startup and every reload load through here, so all three agree.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::{compile, Action, ConfigError, ConfigErrors, ReflexMap};

/// The largest map read (SPEC §8): 32 MiB, eight times a map of 100,000 reflexes; anything larger
/// is refused before parsing.
const MAX_MAP_BYTES: u64 = 32 * 1024 * 1024;

/// Characters of the hex digest shown as a map's `version`.
const VERSION_HEX_CHARS: usize = 12;

/// The shared, atomically swapped map in force. Readers `load()`; only the `Reloader` stores.
pub type MapHandle = Arc<ArcSwap<LoadedMap>>;

/// One generation of the map, with what `GET /reflexes` reports about it.
#[derive(Debug)]
pub struct LoadedMap {
    pub map: ReflexMap,
    /// Short hex digest of the file's bytes.
    pub version: Arc<str>,
    digest: [u8; 32],
    /// Successful swaps since start: 1 after startup.
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub path: PathBuf,
}

/// Why a map could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(ConfigErrors),
    /// The map declares exec workflows and someone other than root or the daemon's user could
    /// change it; `problem` says how, and how to fix it.
    Insecure {
        path: PathBuf,
        problem: String,
    },
}

impl LoadError {
    /// True when the file does not exist (a delete, or a rename caught half-way).
    pub fn is_missing(&self) -> bool {
        matches!(self, LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(
                    f,
                    "{}: cannot read the reflex map: {source}",
                    path.display()
                )
            }
            LoadError::Invalid(errors) => write!(f, "{errors}"),
            LoadError::Insecure { path, problem } => write!(
                f,
                "{}: refusing a map that declares exec workflows: {problem}; anyone who can \
                 change it could run commands as the daemon",
                path.display(),
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// The file's bytes, their digest, its permission bits and owner, read once per load attempt:
/// the reloader compares the digest with the map in force before it compiles anything.
pub struct MapFile {
    bytes: Vec<u8>,
    digest: [u8; 32],
    mode: u32,
    owner: u32,
}

impl MapFile {
    /// Reads the file at `path`: a regular file (or a symlink to one) of at most `MAX_MAP_BYTES`.
    ///
    /// Anything else is refused without blocking: a FIFO would hold the reload thread until a
    /// writer came, and a device such as `/dev/zero` would be read forever.
    pub fn read(path: &Path) -> Result<MapFile, LoadError> {
        let read = || -> std::io::Result<MapFile> {
            // O_NONBLOCK: opening a FIFO for reading waits for a writer without it. std adds
            // O_CLOEXEC itself, so no command the daemon runs inherits the descriptor.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(path)
                .map_err(|err| explain_open_error(path, err))?;
            // Kind, size, mode and bytes come from the same open file, so a swap in between
            // cannot mix them.
            let meta = file.metadata()?;
            let kind = meta.file_type();
            if !kind.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("it is {}, not a regular file", kind_of(&kind)),
                ));
            }
            if meta.len() > MAX_MAP_BYTES {
                return Err(too_large());
            }
            // The size can change after fstat: read one byte past the limit to know.
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.take(MAX_MAP_BYTES + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > MAX_MAP_BYTES {
                return Err(too_large());
            }
            let digest = Sha256::digest(&bytes).into();
            Ok(MapFile {
                bytes,
                digest,
                mode: meta.permissions().mode(),
                owner: meta.uid(),
            })
        };
        read().map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The SHA-256 of the bytes, which identifies the content (a save of the same bytes is no
    /// new generation).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Validates and compiles these bytes, read from `path`, into generation `generation`.
    pub fn compile(&self, path: &Path, generation: u64) -> Result<LoadedMap, LoadError> {
        let map = self.parse(path)?;
        let runs_commands = map
            .workflows
            .values()
            .any(|w| matches!(w.action, Action::Exec(_)));
        if runs_commands {
            if let Some(problem) = who_else_can_change(path, self) {
                return Err(LoadError::Insecure {
                    path: path.to_path_buf(),
                    problem,
                });
            }
        }
        Ok(LoadedMap {
            map,
            version: version_of(&self.digest),
            digest: self.digest,
            generation,
            loaded_at: SystemTime::now(),
            path: path.to_path_buf(),
        })
    }

    fn parse(&self, path: &Path) -> Result<ReflexMap, LoadError> {
        let source = std::str::from_utf8(&self.bytes).map_err(|err| {
            LoadError::Invalid(ConfigErrors::one(ConfigError {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: format!("the file is not valid UTF-8 ({err})"),
            }))
        })?;
        compile(path, source).map_err(LoadError::Invalid)
    }
}

/// Why someone other than root or the daemon's user could change the map at `path`, if they
/// could: it is theirs, it is writable by group or others, or a directory it sits in (through
/// the path as given or its symlink target) lets them replace it.
fn who_else_can_change(path: &Path, file: &MapFile) -> Option<String> {
    let daemon_user = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == daemon_user;
    let shown = path.display();
    if !trusted(file.owner) {
        return Some(format!(
            "it is owned by uid {}; fix with: chown root {shown}",
            file.owner
        ));
    }
    if file.mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {:04o}); fix with: chmod go-w {shown}",
            file.mode & 0o7777
        ));
    }
    for dir in watch_dirs(path) {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        // A sticky directory (like /tmp) stops others from replacing a file they do not own.
        let replaceable = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if !trusted(meta.uid()) || replaceable {
            return Some(format!(
                "its directory {} can be changed by others (owner uid {}, mode {:04o}); \
                 fix with: chown root {0} && chmod go-w {0}",
                dir.display(),
                meta.uid(),
                mode & 0o7777
            ));
        }
    }
    None
}

/// What kind of file `kind` is, for the error that refuses it.
fn kind_of(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "of an unknown kind"
    }
}

/// Opening a Unix socket fails with ENXIO ("No such device or address"), which names neither
/// the socket nor the cure; say what the path is instead.
fn explain_open_error(path: &Path, err: std::io::Error) -> std::io::Error {
    if err.raw_os_error() != Some(nix::libc::ENXIO) {
        return err;
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(&meta.file_type())),
        ),
        _ => err,
    }
}

fn too_large() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "it is larger than the limit of {} MiB ({MAX_MAP_BYTES} bytes)",
            MAX_MAP_BYTES / (1024 * 1024)
        ),
    )
}

fn version_of(digest: &[u8; 32]) -> Arc<str> {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Arc::from(&hex[..VERSION_HEX_CHARS])
}

/// Reads, validates and compiles the map at `path` as generation `generation`.
pub fn load(path: &Path, generation: u64) -> Result<LoadedMap, LoadError> {
    MapFile::read(path)?.compile(path, generation)
}

impl LoadedMap {
    /// True when `file` holds the bytes this map was compiled from.
    pub fn is_content_of(&self, file: &MapFile) -> bool {
        self.digest == file.digest
    }

    /// One line on the map in force, and the last rejection if an edit was refused: systemd's
    /// `STATUS=`, what `systemctl status` shows an operator.
    pub fn status_line(&self, rejected: Option<&str>) -> String {
        let mut status = format!(
            "map {} (generation {}): {} reflexes, {} workflows",
            self.version,
            self.generation,
            self.map.reflexes.len(),
            self.map.workflows.len()
        );
        if let Some(error) = rejected {
            status.push_str("; last reload rejected: ");
            status.push_str(error);
        }
        status
    }
}

/// The directories whose entries decide what `path` reads: its own, plus its symlink target's
/// when that is another one. The watcher watches them, and `load` refuses a map with exec
/// workflows when others can change them.
pub fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![config_dir(path)];
    let target_dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|target| target.parent().map(Path::to_path_buf));
    if let Some(target_dir) = target_dir {
        let same = std::fs::canonicalize(&dirs[0]).is_ok_and(|dir| dir == target_dir);
        if !same {
            dirs.push(target_dir);
        }
    }
    dirs
}

/// The file's directory: watching the file itself would lose it on the first rename.
fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_short_hex() {
        let version = version_of(&Sha256::digest(b"reflexes: {}\n").into());
        assert_eq!(version.len(), VERSION_HEX_CHARS);
        assert!(version.chars().all(|c| c.is_ascii_hexdigit()));
    }

    /// `MapFile::read` on another thread, failing the test (instead of hanging it) when the read
    /// does not return within a few seconds.
    fn read_within_deadline(path: &Path) -> Result<MapFile, LoadError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(MapFile::read(&path));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("MapFile::read blocked")
    }

    fn read_error(path: &Path) -> String {
        match read_within_deadline(path) {
            Ok(_) => panic!("{} was read", path.display()),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_error(&path),
            format!(
                "{}: cannot read the reflex map: it is a FIFO (named pipe), not a regular file",
                path.display()
            )
        );
    }

    #[test]
    fn a_symlink_to_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(
            read_error(&path).ends_with("it is a character device, not a regular file"),
            "{}",
            read_error(&path)
        );
    }

    #[test]
    fn a_directory_and_a_socket_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        std::fs::create_dir(&path).unwrap();
        assert!(read_error(&path).ends_with("it is a directory, not a regular file"));
        let socket = dir.path().join("socket.yml");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(read_error(&socket).ends_with("it is a socket, not a regular file"));
    }

    #[test]
    fn a_symlink_to_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target.yml"), "reflexes: {}\n").unwrap();
        let path = dir.path().join("map.yml");
        std::os::unix::fs::symlink("target.yml", &path).unwrap();
        let file = read_within_deadline(&path).unwrap();
        assert_eq!(file.bytes, b"reflexes: {}\n");
    }

    #[test]
    fn files_over_the_limit_are_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        // Sparse files: the size is what counts, and a test need not write 32 MiB.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_MAP_BYTES).unwrap();
        assert_eq!(
            read_within_deadline(&path).unwrap().bytes.len() as u64,
            MAX_MAP_BYTES
        );
        file.set_len(MAX_MAP_BYTES + 1).unwrap();
        assert_eq!(
            read_error(&path),
            format!(
                "{}: cannot read the reflex map: it is larger than the limit of 32 MiB (33554432 bytes)",
                path.display()
            )
        );
    }
}
