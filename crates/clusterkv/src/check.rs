//! Checks of command-line input, made before any long work: each refusal is a
//! [`ParamError`] naming the flag and the value as the user gave it.

use std::fmt::Display;
use std::fs::OpenOptions;
use std::path::Path;

use ckv_core::{ParamError, ParamGuard};
use ckv_model::LlamaConfig;
use ckv_select::{SelectError, SelectParams};

/// Refuses a list (the values of `flag`) that holds a value twice.
pub(crate) fn distinct<T: Display>(flag: &'static str, values: &[T]) -> Result<(), ParamError> {
    let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
    match shown.iter().enumerate().find(|(i, v)| shown[..*i].contains(v)) {
        Some((_, twice)) => {
            Err(ParamError::new(flag, joined(values), format!("distinct values ({twice} is given twice)")))
        }
        None => Ok(()),
    }
}

/// A list as the command line takes it: `1024,2048`.
pub(crate) fn joined<T: Display>(values: &[T]) -> String {
    values.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Refuses a budget of `flag` above `limit` tokens, the context it runs in (`within` names
/// it as the user gave it), or one that `select` refuses at a context of `limit` tokens.
pub(crate) fn budgets(
    flag: &'static str,
    budgets: &[usize],
    select: &SelectParams,
    limit: usize,
    within: &str,
) -> Result<(), SelectError> {
    if let Some(&budget) = budgets.iter().find(|&&b| b > limit) {
        return Err(ParamError::new(flag, budget, format!("at most the context, {within}")).into());
    }
    budgets.iter().try_for_each(|&b| select.clone().budget(b).max_context(limit).check_ref())
}

/// Refuses `positions` tokens (the setting `name` = `value`) beyond the model's context.
pub(crate) fn fits_model(
    name: &'static str,
    value: impl Display,
    positions: usize,
    model: &LlamaConfig,
) -> Result<(), ParamError> {
    if positions > model.context {
        return Err(ParamError::new(
            name,
            value,
            format!("at most the model's context length ({} tokens)", model.context),
        ));
    }
    Ok(())
}

/// Checks that the folder `dir` of `flag` can be written (see [`can_create_in`]).
pub(crate) fn writable_dir(flag: &'static str, dir: &Path) -> Result<(), ParamError> {
    can_create_in(dir)
        .map_err(|why| ParamError::new(flag, dir.display(), format!("a folder that can be written ({why})")))
}

/// Checks that the file `file` of `flag` can be written, leaving it as it is: an existing
/// file opened for appending, a new one as [`can_create_in`] its folder.
pub(crate) fn writable_file(flag: &'static str, file: &Path) -> Result<(), ParamError> {
    let refuse =
        |why: String| ParamError::new(flag, file.display(), format!("a file that can be written ({why})"));
    if file.is_dir() {
        return Err(refuse("it is a folder".into()));
    }
    if file.exists() {
        return OpenOptions::new().append(true).open(file).map(drop).map_err(|e| refuse(e.to_string()));
    }
    can_create_in(file.parent().unwrap_or(Path::new(""))).map_err(refuse)
}

/// Why files cannot be created in the folder `dir`, or, while it does not exist, in the
/// nearest of its ancestors that does (the writers create the rest); nothing is left behind.
fn can_create_in(dir: &Path) -> Result<(), String> {
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!("{} is not a folder", existing.display()));
    }
    let probe = existing.join(format!(".clusterkv-write-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("{}: {e}", existing.display()))
}
