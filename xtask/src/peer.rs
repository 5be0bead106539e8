//! `cargo xtask peer`: builds llama.cpp's `llama-bench`, `llama-quantize` and
//! `llama-perplexity` into `target/peer/`, then makes a Q4_K_M copy of the default model
//! with them, so that the bench can set llama.cpp's figures beside ours.
//!
//! The llama.cpp sources are the ones vendored in the sdist of the PyPI package
//! `llama-cpp-python` (pinned), downloaded with the ordinary pip client. The steps, each
//! skipped when already done: `cmake` (apt-get, when missing), `scikit-build-core` (pip:
//! pip reads the sdist's metadata with it), the sdist (pip download, extracted with the tar
//! crate), the CMake configure and build (native CPU flags, release), the Q4_K_M file.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::assets;
use crate::fetch::{self, render, shown, stderr_tail};

/// The pinned package whose sdist vendors llama.cpp.
const PACKAGE: &str = "llama-cpp-python";

/// Its pinned version.
const VERSION: &str = "0.3.36";

/// The llama.cpp programs built, as CMake targets (also their file names in `build/bin`).
pub const TARGETS: [&str; 3] = ["llama-bench", "llama-quantize", "llama-perplexity"];

/// Parallel compile jobs of the build (the reference machine has 2 cores).
const JOBS: &str = "2";

/// The quantization type of the peer model, as `llama-quantize` names it.
const QUANT: &str = "Q4_K_M";

/// The CMake cache entries of the configure step: native CPU code, no libcurl, release;
/// only the tools (`llama-bench` and the others), no tests, examples or server; static
/// libraries, so that the programs stand alone.
const CMAKE_OPTIONS: [&str; 9] = [
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_BACKEND_DL=OFF",
];

/// Why building the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A needed program could not be started.
    #[error("{need} is needed to {purpose}: {source}")]
    ToolMissing {
        /// The program, as the user should install it.
        need: String,
        /// What it is needed for.
        purpose: &'static str,
        /// The spawn error.
        source: io::Error,
    },
    /// A program exited with a failure.
    #[error("`{command}` failed ({status}){tail}")]
    ToolFailed {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr when it was captured (with a leading line break), else
        /// empty: its output went to the terminal.
        tail: String,
    },
    /// A step succeeded but the file it should have made is not there.
    #[error("{step} succeeded but {} is not there", .path.display())]
    Missing {
        /// The step, for the message.
        step: String,
        /// The file expected.
        path: PathBuf,
    },
    /// A file-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// Fetching the default model failed.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

impl PeerError {
    /// A [`PeerError::Io`] with its context.
    fn io(context: String, source: io::Error) -> Self {
        Self::Io { context, source }
    }
}

/// What `cargo xtask peer` leaves in `target/peer/`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The built programs, in the order of [`TARGETS`].
    pub programs: Vec<PathBuf>,
    /// The default model requantized to Q4_K_M.
    pub model: PathBuf,
}

/// `cargo xtask peer`: every step (see the module documentation), then the paths of the
/// programs and of the Q4_K_M model on stdout.
pub fn peer() -> Result<(), PeerError> {
    let started = Instant::now();
    let built = build(&assets::workspace_root().join("target/peer"))?;
    eprintln!("\npeer: done in {:.0} s", started.elapsed().as_secs_f64());
    for program in &built.programs {
        println!("{}", shown(program));
    }
    println!("{}", shown(&built.model));
    Ok(())
}

/// `llama-bench` as `cargo xtask peer` leaves it, when it is there.
pub fn built_llama_bench() -> Option<PathBuf> {
    let path = assets::workspace_root().join("target/peer/build/bin").join(TARGETS[0]);
    path.is_file().then_some(path)
}

/// Builds the programs into `dir/build/bin` and the Q4_K_M model into `dir`, skipping the
/// steps already done; prints one progress line per step to stderr.
pub fn build(dir: &Path) -> Result<Peer, PeerError> {
    let build_dir = dir.join("build");
    let programs: Vec<PathBuf> = TARGETS.iter().map(|t| build_dir.join("bin").join(t)).collect();
    if programs.iter().all(|p| p.is_file()) {
        eprintln!("ok: llama.cpp programs already built in {}", shown(&build_dir.join("bin")));
    } else {
        ensure_cmake()?;
        ensure_scikit_build_core()?;
        let llama_cpp = ensure_sources(&dir.join("src"))?;
        configure(&llama_cpp, &build_dir)?;
        compile(&build_dir)?;
        for program in &programs {
            if !program.is_file() {
                return Err(PeerError::Missing { step: "the llama.cpp build".into(), path: program.clone() });
            }
        }
        eprintln!("ok: built {}", TARGETS.join(", "));
    }
    let model = quantize(&build_dir.join("bin/llama-quantize"), dir)?;
    Ok(Peer { programs, model })
}

/// Installs `cmake` with apt-get when it cannot be run (through `sudo` unless root); when
/// the install fails, the package lists are updated and it is tried once more.
fn ensure_cmake() -> Result<(), PeerError> {
    if runs(Command::new("cmake").arg("--version")) {
        eprintln!("ok: cmake present");
        return Ok(());
    }
    eprintln!("cmake is missing: installing it with apt-get...");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let need = if root { "apt-get" } else { "sudo with apt-get" };
        run(cmd, need, "install cmake")
    };
    if let Err(first) = apt(&["install", "-y", "cmake"]) {
        eprintln!("{first}\nupdating the package lists and trying again...");
        apt(&["update"])?;
        apt(&["install", "-y", "cmake"])?;
    }
    if !runs(Command::new("cmake").arg("--version")) {
        return Err(PeerError::Missing { step: "apt-get install cmake".into(), path: "cmake".into() });
    }
    eprintln!("ok: cmake installed");
    Ok(())
}

/// Installs the Python package `scikit-build-core` with pip when it cannot be imported:
/// `llama-cpp-python` builds with it, and pip needs it to read the sdist's metadata.
fn ensure_scikit_build_core() -> Result<(), PeerError> {
    if runs(Command::new("python3").args(["-c", "import scikit_build_core"])) {
        eprintln!("ok: scikit-build-core present");
        return Ok(());
    }
    eprintln!("installing scikit-build-core with pip...");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "scikit-build-core"]);
    run(pip, "python3 with pip", "install scikit-build-core")?;
    eprintln!("ok: scikit-build-core installed");
    Ok(())
}

/// The names pip may give the sdist (normalised name first, as current indexes serve it).
fn sdist_names() -> [String; 2] {
    [format!("{}-{VERSION}.tar.gz", PACKAGE.replace('-', "_")), format!("{PACKAGE}-{VERSION}.tar.gz")]
}

/// The downloaded sdist in `src`, if there.
fn find_sdist(src: &Path) -> Option<PathBuf> {
    sdist_names().iter().map(|name| src.join(name)).find(|p| p.is_file())
}

/// Downloads the sdist into `src` with pip (unless there) and extracts it to
/// `src/llama-cpp-python-<version>` (unless done); returns its vendored llama.cpp folder.
fn ensure_sources(src: &Path) -> Result<PathBuf, PeerError> {
    let unpacked = src.join(format!("{PACKAGE}-{VERSION}"));
    let llama_cpp = unpacked.join("vendor/llama.cpp");
    if llama_cpp.join("CMakeLists.txt").is_file() {
        eprintln!("ok: llama.cpp sources present in {}", shown(&llama_cpp));
        return Ok(llama_cpp);
    }
    let sdist = match find_sdist(src) {
        Some(sdist) => {
            eprintln!("ok: {} already downloaded", shown(&sdist));
            sdist
        }
        None => {
            eprintln!("downloading the sdist of {PACKAGE}=={VERSION} (it vendors llama.cpp) with pip...");
            fs::create_dir_all(src)
                .map_err(|e| PeerError::io(format!("cannot create {}", src.display()), e))?;
            let mut pip = Command::new("python3");
            pip.args(["-m", "pip", "download", "--disable-pip-version-check", "--no-deps"])
                .args(["--no-build-isolation", "--no-binary", PACKAGE])
                .arg(format!("{PACKAGE}=={VERSION}"))
                .arg("-d")
                .arg(src);
            run(pip, "python3 with pip", "download the llama.cpp sources")?;
            find_sdist(src).ok_or_else(|| PeerError::Missing {
                step: format!("pip download {PACKAGE}=={VERSION}"),
                path: src.join(&sdist_names()[0]),
            })?
        }
    };
    eprintln!("extracting {}...", shown(&sdist));
    // Into a scratch folder first, renamed at the end: a half-extracted tree is never taken
    // for a whole one.
    let scratch = src.join(".extracting");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .map_err(|e| PeerError::io(format!("cannot remove {}", scratch.display()), e))?;
    }
    let read_err = |e: io::Error| PeerError::io(format!("cannot extract {}", sdist.display()), e);
    let file = File::open(&sdist).map_err(read_err)?;
    tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)))
        .unpack(&scratch)
        .map_err(read_err)?;
    // The sdist holds one top folder, `<name>-<version>`.
    let top = fs::read_dir(&scratch)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("vendor/llama.cpp/CMakeLists.txt").is_file())
        .ok_or_else(|| PeerError::Missing {
            step: format!("extracting {}", sdist.display()),
            path: scratch.join("<top folder>/vendor/llama.cpp/CMakeLists.txt"),
        })?;
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)
            .map_err(|e| PeerError::io(format!("cannot remove {}", unpacked.display()), e))?;
    }
    fs::rename(&top, &unpacked).map_err(|e| {
        PeerError::io(format!("cannot rename {} to {}", top.display(), unpacked.display()), e)
    })?;
    let _ = fs::remove_dir_all(&scratch);
    eprintln!("ok: llama.cpp sources in {}", shown(&llama_cpp));
    Ok(llama_cpp)
}

/// Configures the build of `llama_cpp` in `build_dir`, unless a configure already finished
/// there (its Makefile is written last).
fn configure(llama_cpp: &Path, build_dir: &Path) -> Result<(), PeerError> {
    if build_dir.join("CMakeCache.txt").is_file() && build_dir.join("Makefile").is_file() {
        eprintln!("ok: build already configured in {}", shown(build_dir));
        return Ok(());
    }
    let mut cmake = Command::new("cmake");
    cmake.arg("-B").arg(build_dir).arg(llama_cpp).args(CMAKE_OPTIONS);
    streamed(cmake, "configure the llama.cpp build")
}

/// Builds the programs of [`TARGETS`] (CMake re-runs only what changed).
fn compile(build_dir: &Path) -> Result<(), PeerError> {
    eprintln!("(the build takes about 15 minutes on 2 cores)");
    let mut cmake = Command::new("cmake");
    cmake.arg("--build").arg(build_dir).args(["-j", JOBS, "--target"]).args(TARGETS);
    streamed(cmake, "build llama.cpp")
}

/// Requantizes the default model (fetched if needed) to Q4_K_M into `dir` with
/// `llama_quantize`, unless the file is there; returns its path.
fn quantize(llama_quantize: &Path, dir: &Path) -> Result<PathBuf, PeerError> {
    let stem = assets::MODEL.file_name.strip_suffix(".Q4_1.gguf").unwrap_or("model");
    let out = dir.join(format!("{stem}.{QUANT}.gguf"));
    if out.is_file() {
        eprintln!("ok: {} already made", shown(&out));
        return Ok(out);
    }
    let source = fetch::fetch(&assets::default_dir())?.model;
    eprintln!("requantizing {} to {QUANT}...", shown(&source));
    let partial = dir.join(format!("{stem}.{QUANT}.gguf.part"));
    let mut cmd = Command::new(llama_quantize);
    // The source is already quantized (Q4_1): requantizing must be allowed explicitly.
    cmd.arg("--allow-requantize").arg(&source).arg(&partial).arg(QUANT);
    streamed(cmd, "requantize the model")?;
    if !partial.is_file() {
        return Err(PeerError::Missing { step: "llama-quantize".into(), path: partial });
    }
    fs::rename(&partial, &out)
        .map_err(|e| PeerError::io(format!("cannot rename {} to {}", partial.display(), out.display()), e))?;
    eprintln!("ok: {}", shown(&out));
    Ok(out)
}

/// Whether `cmd` starts and exits with success (its output discarded).
fn runs(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `cmd` (program `need`, for the error) to the end, echoing it; its stdout goes to our
/// stderr, its stderr is kept for the error message.
fn run(mut cmd: Command, need: &str, purpose: &'static str) -> Result<(), PeerError> {
    let command = render(&cmd);
    eprintln!("$ {command}");
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PeerError::ToolMissing { need: need.to_owned(), purpose, source })?;
    if !output.status.success() {
        let tail = format!("; end of its stderr:\n{}", stderr_tail(&output.stderr));
        return Err(PeerError::ToolFailed { command, status: output.status, tail });
    }
    Ok(())
}

/// Runs `cmd` to the end, echoing it, with its output on the terminal (long steps whose
/// progress should be seen), and its duration after it.
fn streamed(mut cmd: Command, purpose: &'static str) -> Result<(), PeerError> {
    let command = render(&cmd);
    eprintln!("\n$ {command}");
    let started = Instant::now();
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::from(io::stderr())).status().map_err(|source| {
        PeerError::ToolMissing { need: cmd.get_program().to_string_lossy().into_owned(), purpose, source }
    })?;
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(PeerError::ToolFailed { command, status, tail: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdist_names_are_pips() {
        assert_eq!(sdist_names(), ["llama_cpp_python-0.3.36.tar.gz", "llama-cpp-python-0.3.36.tar.gz"]);
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = run(Command::new("xtask-test-no-such-program"), "the test program", "test").unwrap_err();
        assert!(matches!(err, PeerError::ToolMissing { .. }), "{err:?}");
        assert!(err.to_string().starts_with("the test program is needed to test: "), "{err}");
    }

    #[test]
    fn a_failing_program_reports_its_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken >&2; exit 3"]);
        let err = run(cmd, "sh", "test").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PeerError::ToolFailed { .. }), "{err:?}");
        assert!(msg.contains("`sh -c echo broken >&2; exit 3` failed") && msg.ends_with("broken"), "{msg}");
    }
}
