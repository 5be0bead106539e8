//! One way to check settings: [`ParamGuard`], and one error for a setting out of range,
//! [`ParamError`], shared by every crate of the workspace.

use std::borrow::Cow;
use std::fmt::Display;

/// A setting out of range: its name, the value given and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name} = {value}: expected {expected}")]
pub struct ParamError {
    /// The setting.
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What is accepted.
    pub expected: Cow<'static, str>,
}

impl ParamError {
    /// The setting `name` was `value`; `expected` says what is accepted.
    pub fn new(name: &'static str, value: impl Display, expected: impl Into<Cow<'static, str>>) -> Self {
        Self { name, value: value.to_string(), expected: expected.into() }
    }

    /// A row (head) dimension `d` of 0.
    pub fn zero_dim() -> Self {
        Self::new("d", 0, "at least 1")
    }
}

/// Settings checked once, before any work, into a checked form that the work takes (the
/// pattern of linfa's `ParamGuard`): an unchecked value cannot reach the code that relies
/// on it.
///
/// ```
/// use ckv_core::{ParamError, ParamGuard};
///
/// struct Window(usize);
/// struct ValidWindow(usize);
///
/// impl ParamGuard for Window {
///     type Checked = ValidWindow;
///     type Error = ParamError;
///     fn check_ref(&self) -> Result<(), ParamError> {
///         if self.0 == 0 {
///             return Err(ParamError::new("window", self.0, "at least 1"));
///         }
///         Ok(())
///     }
///     fn validate(self) -> Result<ValidWindow, ParamError> {
///         self.check_ref()?;
///         Ok(ValidWindow(self.0))
///     }
/// }
///
/// assert!(Window(64).validate().is_ok());
/// assert_eq!(Window(0).validate().err().unwrap().to_string(), "invalid window = 0: expected at least 1");
/// ```
pub trait ParamGuard: Sized {
    /// The checked settings.
    type Checked;
    /// Why settings are rejected.
    type Error;

    /// Checks the settings without consuming them.
    ///
    /// # Errors
    /// The first setting out of range.
    fn check_ref(&self) -> Result<(), Self::Error>;

    /// Checks the settings and turns them into their checked form.
    ///
    /// # Errors
    /// The first setting out of range.
    fn validate(self) -> Result<Self::Checked, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_value() {
        let m = ParamError::new("budget", 3, format!("at least {}", 5)).to_string();
        assert_eq!(m, "invalid budget = 3: expected at least 5");
        assert_eq!(ParamError::zero_dim().to_string(), "invalid d = 0: expected at least 1");
    }
}
