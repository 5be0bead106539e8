//! `clusterkv generate`: greedy generation from a prompt, streamed.

use std::error::Error;
use std::io::Write;
use std::time::Instant;

use ckv_core::{ParamError, ParamGuard};
use ckv_select::SelectParams;

use crate::args::GenerateArgs;
use crate::check;
use crate::common::load;

pub(crate) fn run(args: GenerateArgs) -> Result<(), Box<dyn Error>> {
    // Refuse bad input before loading anything: the budget at the most lenient context (one
    // it covers whole), as the prompt's length is known only once the tokenizer is loaded.
    SelectParams::new(args.method).budget(args.budget).max_context(args.budget).check_ref()?;
    let (model, tokenizer) = load(&args.model.model)?;
    check::fits_model("--budget", args.budget, args.budget, model.config())?;
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(ParamError::new("--prompt", format!("{:?}", args.prompt), "some text").into());
    }
    let positions = prompt.len() + args.max_tokens;
    let given = format!("{} tokens + {}", prompt.len(), args.max_tokens);
    check::fits_model("--prompt + --max-tokens", given, positions, model.config())?;
    let max_context = positions.max(args.budget);
    let select = SelectParams::new(args.method).budget(args.budget).max_context(max_context);
    let mut runner = model.runner(&select, args.model.dense_layers)?;
    let started = Instant::now();
    let (mut seq, hidden) = runner.prefill(&prompt)?;
    let mut step = [(&mut seq, model.greedy_next(&hidden))];
    let mut generated = Vec::new();
    let mut shown = 0;
    let mut out = std::io::stdout();
    print!("{}", args.prompt);
    while generated.len() < args.max_tokens && Some(step[0].1) != tokenizer.eos_id() {
        generated.push(step[0].1);
        // Decode everything generated so far and print what is new, so that characters
        // split over several tokens come out whole.
        let text = tokenizer.decode(&generated)?;
        if !text.ends_with('\u{FFFD}') {
            print!("{}", &text[shown..]);
            out.flush()?;
            shown = text.len();
        }
        runner.decode_greedy(&mut step)?;
    }
    println!();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("{} tokens generated in {seconds:.1} s ({})", generated.len(), args.method);
    Ok(())
}
