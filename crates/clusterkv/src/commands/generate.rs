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
    finite(&hidden, 0)?;
    let mut step = [(&mut seq, model.greedy_next(&hidden))];
    let eos = tokenizer.eos_id().filter(|_| !args.ignore_eos);
    let mut generated = Vec::new();
    let mut shown = 0;
    let mut out = std::io::stdout();
    print!("{}", args.prompt);
    while generated.len() < args.max_tokens && Some(step[0].1) != eos {
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
        finite(runner.logits(), generated.len())?;
    }
    println!();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("{} tokens generated in {seconds:.1} s ({})", generated.len(), args.method);
    Ok(())
}

/// Refuses to go on from values (the prompt's last hidden state, a step's logits) that hold
/// a NaN or an infinity: a token chosen from them would be silently wrong.
fn finite(values: &[f32], generated: usize) -> Result<(), String> {
    match values.iter().position(|x| !x.is_finite()) {
        Some(i) => {
            Err(format!("the model produced {} at value {i} after {generated} generated tokens", values[i]))
        }
        None => Ok(()),
    }
}
