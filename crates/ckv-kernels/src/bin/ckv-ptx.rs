//! `ckv-ptx OUT_DIR [INCLUDE_DIR ...]`: compiles every kernel source with NVRTC for every
//! architecture of `ckv_kernels::ARCHS`, writing `OUT_DIR/<name>.<arch>.ptx`.

use std::path::PathBuf;
use std::process::ExitCode;

use ckv_kernels::{ARCHS, SOURCES, compile_ptx};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(out) = args.next() else {
        eprintln!("usage: ckv-ptx OUT_DIR [INCLUDE_DIR ...]");
        return ExitCode::FAILURE;
    };
    let include: Vec<PathBuf> = args.collect();
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for source in SOURCES {
        for arch in ARCHS {
            let path = out.join(format!("{}.{arch}.ptx", source.name));
            let written = compile_ptx(source, arch, &include).map_err(|e| e.to_string()).and_then(|ptx| {
                std::fs::write(&path, ptx).map_err(|e| format!("cannot write {}: {e}", path.display()))
            });
            if let Err(e) = written {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            println!("{}", path.display());
        }
    }
    ExitCode::SUCCESS
}
