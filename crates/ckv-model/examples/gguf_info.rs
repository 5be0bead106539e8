//! Prints the metadata and tensor table of a GGUF file:
//! `cargo run -p ckv-model --example gguf_info -- FILE`.

use ckv_model::{GgufFile, GgufValue};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: gguf_info FILE")?;
    let gguf = GgufFile::open(&path)?;
    println!(
        "GGUF v{}: {} metadata keys, {} tensors",
        gguf.version(),
        gguf.metadata().len(),
        gguf.tensors().len()
    );
    for (key, value) in gguf.metadata() {
        match value {
            GgufValue::Array(items) => {
                println!("{key} = [{} x {}]", items.len(), items.first().map_or("?", |v| v.type_name()))
            }
            GgufValue::String(s) if s.len() > 80 => {
                println!("{key} = {:?}...", s.chars().take(80).collect::<String>())
            }
            v => println!("{key} = {v:?}"),
        }
    }
    for t in gguf.tensors() {
        println!("{:<32} {:>10} {:?}", t.name, t.dtype.to_string(), t.dims);
    }
    Ok(())
}
