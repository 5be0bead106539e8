//! Progress of long work, reported through a small trait so that the library does not
//! depend on a terminal: the `clusterkv` binary draws it with `indicatif`, tests pass `&()`.

/// Receives the progress of an evaluation, a sweep or a cache simulation. Calls may come
/// from several threads.
pub trait Progress: Sync {
    /// A new phase begins: its label (e.g. `context 2048`) and its number of units.
    fn start(&self, prefix: &str, units: u64);
    /// The total number of units of the phase, once known.
    fn set_units(&self, units: u64);
    /// What is being worked on now.
    fn message(&self, message: &str);
    /// `units` more units are done.
    fn advance(&self, units: u64);
}

/// No progress shown.
impl Progress for () {
    fn start(&self, _: &str, _: u64) {}
    fn set_units(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn advance(&self, _: u64) {}
}
