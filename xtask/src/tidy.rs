//! Conventions of the source tree, checked by tests in the manner of rust-analyzer's
//! `xtask/src/tidy.rs`: module docs, no tests that expect a panic, the CUDA launcher's shape
//! list against the kernels the `.cu` source instantiates, the README's command lines against
//! the command-line parsers, and the crate manifests. `cargo test --workspace` runs them (so
//! `cargo xtask ci` does); each failure lists every offending file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The `cargo xtask` tasks whose extra arguments go to a `clusterkv` command (see `main` in
/// `main.rs`), with the flags the task reads from them itself.
const FORWARDED: [(&str, &str, &[&str]); 3] =
    [("demo", "eval", &["--full"]), ("bench", "bench", &[]), ("cache-sim", "cache-sim", &[])];

/// Every crate root and every other module, bench, example and test file opens with a `//!`
/// doc comment (after blank lines and `#![...]` attributes).
#[test]
fn module_docs() {
    let mut dirs: Vec<PathBuf> = crate_dirs()
        .iter()
        .flat_map(|c| ["src", "benches", "examples", "tests"].map(|d| c.join(d)))
        .collect();
    dirs.push(root().join("xtask/src"));
    let problems: Vec<String> = dirs
        .iter()
        .flat_map(|dir| rs_files(dir))
        .filter(|file| !opens_with_doc(&read(file)))
        .map(|file| format!("{}:1: does not open with a `//!` doc comment", rel(&file)))
        .collect();
    assert_none("files without a module doc", &problems);
}

/// No test expects a panic: bad input gets a typed error. The needle is built so that this
/// file does not match itself.
#[test]
fn no_should_panic() {
    let needle = ["#[should", "_panic"].concat();
    let mut problems = Vec::new();
    for file in rs_files(&root().join("crates")).into_iter().chain(rs_files(&root().join("xtask"))) {
        for (i, line) in read(&file).lines().enumerate().filter(|(_, line)| line.contains(&needle)) {
            problems.push(format!("{}:{}: {}", rel(&file), i + 1, line.trim()));
        }
    }
    assert_none("tests that expect a panic instead of a typed error", &problems);
}

/// The launcher's `ATTENTION_SHAPES` are exactly the `(group, head dim)` pairs that
/// `attention.cu` instantiates with `ATTENTION(G, D)`, and each of their head dims has its
/// `MERGE(D)` (the launcher loads `attention_chunk_g{G}_d{D}` and `attention_merge_d{D}`).
#[test]
fn attention_shapes_match_kernels() {
    let (rust_path, cu_path) =
        ("crates/ckv-kernels/src/gpu/decode.rs", "crates/ckv-kernels/kernels/attention.cu");
    let rust = read(&root().join(rust_path));
    let list = rust
        .split_once("pub const ATTENTION_SHAPES")
        .and_then(|(_, rest)| rest.split_once('='))
        .and_then(|(_, rest)| rest.split_once(';'))
        .unwrap_or_else(|| panic!("{rust_path}: no `pub const ATTENTION_SHAPES: ... = [...];`"))
        .0;
    let launcher: BTreeSet<Vec<usize>> =
        list.split('(').skip(1).map(|pair| numbers(pair.split(')').next().unwrap_or(""))).collect();
    let cu = read(&root().join(cu_path));
    let dims = launcher.iter().map(|shape| shape[1..].to_vec()).collect();
    let mut problems = differences(&launcher, &instantiations(&cu, "ATTENTION"), rust_path, cu_path);
    problems.extend(differences(&dims, &instantiations(&cu, "MERGE"), rust_path, cu_path));
    assert_none("launcher shapes against the kernels instantiated", &problems);
}

/// Every `clusterkv <command>` and `cargo xtask <task>` in the README (code blocks and inline
/// code) exists and takes each long flag written after it.
#[test]
fn readme_flags_exist() {
    let commands = readme_commands();
    let problems: Vec<String> = readme_texts(&read(&root().join("README.md")))
        .into_iter()
        .flat_map(|(line, text)| {
            check_text(&commands, &text)
                .into_iter()
                .map(move |problem| format!("README.md:{line}: {problem}"))
        })
        .collect();
    assert_none("README command lines the command-line parsers reject", &problems);
}

/// Every crate's manifest has a `description` and takes the workspace lints.
#[test]
fn crate_manifests() {
    let mut problems = Vec::new();
    for manifest in crate_dirs().iter().map(|dir| dir.join("Cargo.toml")) {
        let entries = toml_entries(&read(&manifest));
        if !entries.keys().any(|k| k == "package.description" || k.starts_with("package.description.")) {
            problems.push(format!("{}: no `description` in [package]", rel(&manifest)));
        }
        if entries.get("lints.workspace").map(String::as_str) != Some("true") {
            problems.push(format!("{}: no `[lints] workspace = true`", rel(&manifest)));
        }
    }
    assert_none("crate manifests", &problems);
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace root").to_owned()
}

/// `path` relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// The text of the file at `path`.
fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The crate folders under `crates/`, sorted.
fn crate_dirs() -> Vec<PathBuf> {
    let entries = fs::read_dir(root().join("crates")).expect("a `crates` folder");
    let mut dirs: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable `crates` folder").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every `.rs` file under `dir`, sorted, leaving out `target` and `proptest-regressions`
/// folders (not code); none when `dir` does not exist.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in fs::read_dir(dir).into_iter().flatten().map(|entry| entry.expect("a readable folder").path())
    {
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("proptest-regressions") {
                files.extend(rs_files(&path));
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Whether `text` opens with `//!` after blank lines and `#![...]` attributes.
fn opens_with_doc(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("#!["))
        .is_some_and(|l| l.starts_with("//!"))
}

/// Fails with `what` and every problem, one a line, unless there are none.
fn assert_none(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Numbers separated by commas.
fn numbers(list: &str) -> Vec<usize> {
    list.split(',').map(|n| n.trim().parse().unwrap_or_else(|_| panic!("not a number: {n:?}"))).collect()
}

/// The arguments of every line of `cu` that invokes the macro `name`, e.g. `[1, 64]` for
/// `ATTENTION(1, 64)` (its `#define` is not an invocation).
fn instantiations(cu: &str, name: &str) -> BTreeSet<Vec<usize>> {
    cu.lines()
        .filter_map(|line| line.trim().strip_prefix(name)?.strip_prefix('(')?.split_once(')'))
        .map(|(args, _)| numbers(args))
        .collect()
}

/// What one of the two sets holds and the other lacks, naming where each comes from.
fn differences(left: &BTreeSet<Vec<usize>>, right: &BTreeSet<Vec<usize>>, l: &str, r: &str) -> Vec<String> {
    let only = |a: &BTreeSet<Vec<usize>>, b, from: &str, not: &str| {
        a.difference(b).map(|x| format!("{x:?} is in {from} but not in {not}")).collect::<Vec<_>>()
    };
    [only(left, right, l, r), only(right, left, r, l)].concat()
}

/// The commands the README may name, by their words (`clusterkv eval`, `cargo xtask demo`),
/// each with the long flags it accepts.
fn readme_commands() -> BTreeMap<String, BTreeSet<String>> {
    let clusterkv = ClapItems::parse(&read(&root().join("crates/clusterkv/src/args.rs"))).commands();
    let xtask = ClapItems::parse(&read(&root().join("xtask/src/main.rs"))).commands();
    let mut all: BTreeMap<String, BTreeSet<String>> =
        clusterkv.iter().map(|(command, flags)| (format!("clusterkv {command}"), flags.clone())).collect();
    for (task, mut flags) in xtask {
        if let Some((_, to, own)) = FORWARDED.iter().find(|(from, ..)| *from == task) {
            flags.extend(clusterkv[*to].iter().cloned());
            flags.extend(own.iter().map(|flag| flag.to_string()));
        }
        all.insert(format!("cargo xtask {task}"), flags);
    }
    all
}

/// The README's command texts with the line each starts on: every line of a fenced code block
/// (joined with the next after a trailing `\`) and every inline code span (which may run over
/// the lines of a paragraph or table).
fn readme_texts(readme: &str) -> Vec<(usize, String)> {
    let mut texts = Vec::new();
    let (mut fenced, mut code, mut span) = (false, None::<(usize, String)>, None::<(usize, String)>);
    for (n, line) in readme.lines().enumerate().map(|(i, line)| (i + 1, line)) {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            let (start, mut text) = code.take().unwrap_or((n, String::new()));
            match line.trim_end().strip_suffix('\\') {
                Some(head) => {
                    text.push_str(head);
                    code = Some((start, text));
                }
                None => texts.push((start, text + line)),
            }
        } else if line.trim().is_empty() {
            // A paragraph ends: a backtick left open was a literal one.
            span = None;
        } else {
            for (i, part) in line.split('`').enumerate() {
                if i > 0 {
                    match span.take() {
                        Some(done) => texts.push(done),
                        None => span = Some((n, String::new())),
                    }
                }
                if let Some((_, text)) = &mut span {
                    text.push_str(part);
                }
            }
            if let Some((_, text)) = &mut span {
                text.push(' ');
            }
        }
    }
    texts
}

/// The problems of one README command text: commands that do not exist, and long flags that
/// the command before them does not accept. A bare `--`, `&&`, `;` or `|` ends a command, a
/// word starting with `#` the text (a shell comment).
fn check_text(commands: &BTreeMap<String, BTreeSet<String>>, text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut problems, mut current, mut i) = (Vec::new(), None, 0);
    while i < words.len() {
        let named = match words[i] {
            "clusterkv" => 1,
            "cargo" if words.get(i + 1) == Some(&"xtask") => 2,
            _ => 0,
        };
        if named > 0
            && let Some(command) = words.get(i + named).filter(|w| !w.starts_with('-'))
        {
            let name = format!("{} {command}", words[i..i + named].join(" "));
            current = commands.get_key_value(&name);
            if current.is_none() {
                problems.push(format!("no command `{name}`"));
            }
            i += named + 1;
            continue;
        }
        let word = words[i];
        if word.starts_with('#') {
            break;
        } else if ["--", "&&", "||", ";", "|"].contains(&word) {
            current = None;
        } else if let (Some((name, flags)), Some(flag)) = (current, flag(word))
            && !flags.contains(flag)
        {
            problems.push(format!("`{name}` has no flag `{flag}`"));
        }
        i += 1;
    }
    problems
}

/// The long flag a word names, if any: `--name` out of `[--name`, `--name=value` or `--name,`.
fn flag(word: &str) -> Option<&str> {
    let word = word.trim_start_matches(['[', '(']);
    let name = word.strip_prefix("--")?;
    let len = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(name.len());
    name.starts_with(|c: char| c.is_ascii_alphabetic()).then(|| &word[..len + 2])
}

/// The TOML entries of a manifest, each key prefixed by its table (`package.description`,
/// `lints.workspace`), with the value's text; plain line-by-line reading, enough for
/// manifests.
fn toml_entries(text: &str) -> BTreeMap<String, String> {
    let (mut table, mut entries) = (String::new(), BTreeMap::new());
    for line in text.lines().map(str::trim).filter(|line| !line.starts_with('#')) {
        if line.starts_with('[') {
            table = line.trim_matches(['[', ']']).trim().to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            let key =
                if table.is_empty() { key.trim().to_owned() } else { format!("{table}.{}", key.trim()) };
            entries.insert(key, value.trim().to_owned());
        }
    }
    entries
}

/// A token of Rust source as the clap parser needs it. Line comments (doc comments too) are
/// dropped; block comments and raw strings are not understood (the files parsed have none).
#[derive(Clone, PartialEq)]
enum Tok {
    /// An identifier, keyword or number.
    Word(String),
    /// The contents of a string literal or of a one-character char literal.
    Lit(String),
    /// One punctuation character.
    Punct(char),
}

impl Tok {
    /// Whether it is the word `word`.
    fn is(&self, word: &str) -> bool {
        matches!(self, Tok::Word(w) if w == word)
    }

    /// Its text if it is a word.
    fn word(&self) -> Option<&str> {
        match self {
            Tok::Word(w) => Some(w),
            _ => None,
        }
    }
}

/// The tokens of `src`.
fn tokenize(src: &str) -> Vec<Tok> {
    let (mut toks, mut chars) = (Vec::new(), src.chars().peekable());
    while let Some(c) = chars.next() {
        if c == '/' && chars.peek() == Some(&'/') {
            while chars.next_if(|&c| c != '\n').is_some() {}
        } else if c == '"' {
            let mut lit = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => lit.extend(chars.next()),
                    c => lit.push(c),
                }
            }
            toks.push(Tok::Lit(lit));
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(c) = chars.next_if(|&c| c.is_alphanumeric() || c == '_') {
                word.push(c);
            }
            toks.push(Tok::Word(word));
        } else if c == '\''
            && let mut ahead = chars.clone()
            && let (Some(x), Some('\'')) = (ahead.next(), ahead.next())
            && x != '\\'
        {
            chars = ahead;
            toks.push(Tok::Lit(x.to_string()));
        } else if !c.is_whitespace() {
            toks.push(Tok::Punct(c));
        }
    }
    toks
}

/// The index of the bracket that closes the one at `toks[open]`.
fn close(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (i, tok) in toks.iter().enumerate().skip(open) {
        match tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i;
        }
    }
    panic!("unbalanced brackets in a parsed source file");
}

/// `toks` split at the commas outside brackets and generics.
fn split(toks: &[Tok]) -> Vec<&[Tok]> {
    let (mut parts, mut start, mut depth) = (Vec::new(), 0, 0);
    for (i, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

/// The outer attributes that open `toks`, each without its `#[` and `]` (`arg(long)`), and the
/// tokens after them.
fn take_attrs(mut toks: &[Tok]) -> (Vec<&[Tok]>, &[Tok]) {
    let mut attrs = Vec::new();
    while toks.first() == Some(&Tok::Punct('#')) && toks.get(1) == Some(&Tok::Punct('[')) {
        let end = close(toks, 1);
        attrs.push(&toks[2..end]);
        toks = &toks[end + 1..];
    }
    (attrs, toks)
}

/// A field of a clap struct or struct variant.
struct Field {
    /// Its name.
    name: String,
    /// The last word of its type: the struct a flattened field names.
    ty: String,
    /// The arguments of its `#[arg(...)]` and `#[command(...)]` attributes (`long`,
    /// `long = "x"`, `flatten`, ...).
    args: Vec<Vec<Tok>>,
}

impl Field {
    /// The fields in the body of a struct (or struct variant).
    fn parse_all(body: &[Tok]) -> Vec<Field> {
        let parse = |part| {
            let (attrs, rest): (_, &[Tok]) = take_attrs(part);
            // `pub(crate) name: Type`: the name is the word before the first colon.
            let colon = rest.iter().position(|t| *t == Tok::Punct(':'))?;
            let name = rest[..colon].last()?.word()?.to_owned();
            let ty = rest.iter().rev().find_map(Tok::word)?.to_owned();
            let clap = attrs.into_iter().filter(|a| a.len() > 2 && (a[0].is("arg") || a[0].is("command")));
            let args = clap.flat_map(|a| split(&a[2..a.len() - 1])).map(<[Tok]>::to_vec).collect();
            Some(Field { name, ty, args })
        };
        split(body).into_iter().filter_map(parse).collect()
    }

    /// The tokens after the clap argument `key` (none for a bare `long`), if it has that
    /// argument.
    fn arg(&self, key: &str) -> Option<&[Tok]> {
        self.args.iter().find(|a| a.first().is_some_and(|t| t.is(key))).map(|a| &a[1..])
    }

    /// The long flag it declares, if any: its name in kebab case or the one `long = "..."`
    /// gives.
    fn long(&self) -> Option<String> {
        Some(match self.arg("long")? {
            [_, Tok::Lit(name)] => format!("--{name}"),
            _ => format!("--{}", self.name.replace('_', "-")),
        })
    }
}

/// A variant of a clap subcommand enum.
struct Variant {
    /// Its name (CamelCase).
    name: String,
    /// The struct a tuple variant holds (`Eval(EvalArgs)`).
    tuple: Option<String>,
    /// The fields of a struct variant.
    fields: Vec<Field>,
}

/// The clap items of one source file.
#[derive(Default)]
struct ClapItems {
    /// The structs deriving `Args` or `Parser`, by name.
    structs: BTreeMap<String, Vec<Field>>,
    /// The enums deriving `Subcommand`, by name.
    enums: BTreeMap<String, Vec<Variant>>,
}

impl ClapItems {
    /// The clap items of the Rust source `src`.
    fn parse(src: &str) -> ClapItems {
        let (toks, mut items, mut attrs, mut i) = (tokenize(src), ClapItems::default(), Vec::new(), 0);
        while i < toks.len() {
            let keyword = toks[i].word().filter(|&w| w == "struct" || w == "enum");
            if toks[i] == Tok::Punct('#') && toks.get(i + 1) == Some(&Tok::Punct('[')) {
                let end = close(&toks, i + 1);
                attrs.push(&toks[i + 2..end]);
                i = end;
            } else if let (Some(keyword), Some(name)) = (keyword, toks.get(i + 1).and_then(Tok::word))
                && toks.get(i + 2) == Some(&Tok::Punct('{'))
            {
                let end = close(&toks, i + 2);
                let body = &toks[i + 3..end];
                let derives = |names: &[&str]| {
                    attrs.iter().any(|a| {
                        a.first().is_some_and(|t| t.is("derive"))
                            && a.iter().any(|t| names.iter().any(|n| t.is(n)))
                    })
                };
                if keyword == "struct" && derives(&["Args", "Parser"]) {
                    items.structs.insert(name.to_owned(), Field::parse_all(body));
                } else if keyword == "enum" && derives(&["Subcommand"]) {
                    items.enums.insert(name.to_owned(), Self::variants(body));
                }
                attrs.clear();
                i = end;
            } else if matches!(toks[i], Tok::Punct(';' | '{' | '}')) {
                attrs.clear();
            }
            i += 1;
        }
        items
    }

    /// The variants in the body of an enum.
    fn variants(body: &[Tok]) -> Vec<Variant> {
        let parse = |part| {
            let (_, rest): (_, &[Tok]) = take_attrs(part);
            let name = rest.first()?.word()?.to_owned();
            let inner = || &rest[2..close(rest, 1)];
            let (tuple, fields) = match rest.get(1) {
                Some(Tok::Punct('(')) => {
                    (inner().iter().rev().find_map(Tok::word).map(str::to_owned), Vec::new())
                }
                Some(Tok::Punct('{')) => (None, Field::parse_all(inner())),
                _ => (None, Vec::new()),
            };
            Some(Variant { name, tuple, fields })
        };
        split(body).into_iter().filter_map(parse).collect()
    }

    /// The long flags of `fields`, those of flattened structs included.
    fn flags(&self, fields: &[Field]) -> BTreeSet<String> {
        let mut flags = BTreeSet::new();
        for field in fields {
            if field.arg("flatten").is_some() {
                let inner = self.structs.get(&field.ty);
                flags.extend(self.flags(inner.unwrap_or_else(|| panic!("no clap struct {}", field.ty))));
            }
            flags.extend(field.long());
        }
        flags
    }

    /// Every subcommand of the struct `Cli` by its kebab-case name, with the flags it accepts:
    /// its own, the global ones of `Cli`, `--help` and `--version`.
    fn commands(&self) -> BTreeMap<String, BTreeSet<String>> {
        let cli = self.structs.get("Cli").expect("a `Cli` struct deriving clap's `Parser`");
        let is_global = |f: &&Field| matches!(f.arg("global"), Some([_, t]) if t.is("true"));
        let mut global: BTreeSet<String> = cli.iter().filter(is_global).filter_map(Field::long).collect();
        global.extend(["--help".to_owned(), "--version".to_owned()]);
        let subcommand =
            cli.iter().find(|f| f.arg("subcommand").is_some()).expect("`Cli` has a subcommand field");
        let variants = self.enums.get(&subcommand.ty).unwrap_or_else(|| panic!("no enum {}", subcommand.ty));
        let command = |v: &Variant| {
            let own = match &v.tuple {
                Some(ty) => self.flags(self.structs.get(ty).unwrap_or_else(|| panic!("no clap struct {ty}"))),
                None => self.flags(&v.fields),
            };
            (kebab(&v.name), own.union(&global).cloned().collect())
        };
        variants.iter().map(command).collect()
    }
}

/// `CamelCase` as `kebab-case`, as clap names a subcommand.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.char_indices() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
