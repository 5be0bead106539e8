//! The Markdown tables every report prints: one builder, one format.

use std::fmt;

/// A Markdown table: a header row, an alignment rule, then rows of cells.
///
/// ```
/// use ckv_sim::MarkdownTable;
///
/// let mut table = MarkdownTable::new(["method", "budget", "ppl"], "lrr");
/// table.row(["dense", "-", "45.6"]);
/// assert_eq!(table.to_string(), "| method | budget | ppl |\n|---|---:|---:|\n| dense | - | 45.6 |\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkdownTable {
    text: String,
}

impl MarkdownTable {
    /// A table with the columns `header`, aligned by `align`: one letter per column, `l` for
    /// left (labels), anything else for right (figures). Missing letters mean right.
    pub fn new<S: AsRef<str>>(header: impl IntoIterator<Item = S>, align: &str) -> Self {
        let header: Vec<S> = header.into_iter().collect();
        let mut align = align.chars();
        let rule: Vec<&str> =
            header.iter().map(|_| if align.next() == Some('l') { "---" } else { "---:" }).collect();
        let mut table = Self { text: String::new() };
        table.line(header.iter().map(AsRef::as_ref));
        table.text.push('|');
        table.text.push_str(&rule.join("|"));
        table.text.push_str("|\n");
        table
    }

    /// Appends a row; each cell is written with `Display`.
    pub fn row<T: fmt::Display>(&mut self, cells: impl IntoIterator<Item = T>) {
        self.line(cells);
    }

    fn line<T: fmt::Display>(&mut self, cells: impl IntoIterator<Item = T>) {
        use fmt::Write as _;
        self.text.push('|');
        for cell in cells {
            let _ = write!(self.text, " {cell} |");
        }
        self.text.push('\n');
    }
}

impl fmt::Display for MarkdownTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
