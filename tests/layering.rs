//! The crate's layering, checked (a "tidy" test in rust-analyzer's sense).
//!
//! It reads every `src/**/*.rs`, collects the paths that start with `crate::`,
//! `super::`, `self::` (and `walrcv::` in `src/main.rs`), resolves them to
//! module paths, and checks that:
//!
//! 1. the top-level modules form no cycle;
//! 2. inside every module, its files (child modules) form no cycle;
//! 3. the edges between top-level modules are exactly those of the dependency
//!    table in `ARCHITECTURE.md` (the fenced block after the
//!    `<!-- layers: tests/layering.rs -->` marker), so that the table stays true.
//!
//! Paths are read from tokens, not resolved by the compiler: a name
//! re-exported by `pub use` (`crate::archive::ArchiveDir`, re-exported by
//! `archive/mod.rs` from `archive/scan.rs`) is followed to the file that
//! defines it, but a glob re-export (`pub use x::*`) and an item defined in a
//! module's root file are no edge. `#[cfg(test)]` code counts like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The marker line in ARCHITECTURE.md after which the dependency table's fenced
/// block follows.
const TABLE_MARKER: &str = "<!-- layers: tests/layering.rs -->";

/// File cycles known and assigned (module path, files). Listed here so that the
/// test is green until they are broken; once one is gone the test fails until it
/// is removed from this list, so the list only shrinks.
const KNOWN_FILE_CYCLES: &[(&str, &[&str])] = &[];

/// A module path from the crate root: `["archive", "scan"]`.
type ModPath = Vec<String>;

/// Where a reference was seen, for the failure message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    line: usize,
}

/// One reference from a module to a path (module or item).
#[derive(Clone, Debug)]
struct Reference {
    from: ModPath,
    to: ModPath,
    site: Site,
}

/// The module path a source file defines, from its path under `src/`.
/// `lib.rs` is the root; `main.rs` (another crate) is called `main`.
fn module_of_file(rel: &str) -> ModPath {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        parts.clear();
    }
    parts
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Rust source to tokens, without comments, strings, chars and lifetimes; each
/// token with its line.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i = skip_block_comment(&b, i, &mut line);
        } else if c == '"' {
            i = skip_string(&b, i + 1, &mut line);
        } else if let Some(end) = raw_string_end(&b, i, &mut line) {
            i = end;
        } else if c == '\'' {
            i = skip_char_or_lifetime(&b, i);
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            if b[i - 1] == 'b' && i - start == 1 && b.get(i) == Some(&'"') {
                continue; // b"...": the string is skipped next round
            }
            out.push((Tok::Ident(b[start..i].iter().collect()), line));
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

fn skip_block_comment(b: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i] == '/' && b.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            *line += usize::from(b[i] == '\n');
            i += 1;
        }
    }
    i
}

fn skip_string(b: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() && b[i] != '"' {
        *line += usize::from(b[i] == '\n');
        i += if b[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// `r"..."`, `r#"..."#`, `br#"..."#`: the index after the literal, if one starts at `i`.
fn raw_string_end(b: &[char], i: usize, line: &mut usize) -> Option<usize> {
    let mut j = i;
    if b.get(j) == Some(&'b') {
        j += 1;
    }
    if b.get(j) != Some(&'r') || (i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if b.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == '"'
            && b[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        *line += usize::from(b[j] == '\n');
        j += 1;
    }
    Some(j)
}

/// `'x'`, `'\n'`, `'\u{1F}'` are skipped whole; a lifetime `'a` only its quote.
fn skip_char_or_lifetime(b: &[char], i: usize) -> usize {
    if b.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < b.len() && b[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if b.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    i + 1
}

/// Every path in `src` that starts with `crate`, `super`, `self` (or `walrcv`
/// when `extern_root` is set), resolved from the module `file_module`, with
/// inline `mod name { .. }` blocks taken into account.
fn references(file: &str, file_module: &ModPath, src: &str, extern_root: bool) -> Vec<Reference> {
    let toks = tokenize(src);
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Tok::Ident(head) if is_path_head(head, extern_root) => {
                let starts_path = i == 0 || toks[i - 1].0 != Tok::PathSep;
                if starts_path && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep) {
                    let mut here = file_module.clone();
                    here.extend(inline.iter().map(|(n, _)| n.clone()));
                    let line = toks[i].1;
                    let (paths, next) = parse_tree(&toks, i);
                    for p in paths {
                        if let Some(to) = resolve(&here, &p) {
                            let site = Site {
                                file: file.to_owned(),
                                line,
                            };
                            out.push(Reference {
                                from: here.clone(),
                                to,
                                site,
                            });
                        }
                    }
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The `pub use` re-exports of a file: the path each re-exported name is
/// known by (`archive::Scan`) and the path it names (`archive::scan::Scan`).
fn reexports(file_module: &ModPath, src: &str) -> Vec<(ModPath, ModPath)> {
    let toks = tokenize(src);
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if toks[i].0 != Tok::Ident("use".into()) || !preceded_by_pub(&toks, i) {
            continue;
        }
        let (paths, _) = parse_tree(&toks, i + 1);
        for p in paths {
            let relative = !p.first().is_some_and(|h| is_path_head(h, false));
            let target = if relative {
                Some([file_module.clone(), p.clone()].concat())
            } else {
                resolve(file_module, &p)
            };
            if let (Some(target), Some(name)) = (target, p.last()) {
                out.push(([file_module.clone(), vec![name.clone()]].concat(), target));
            }
        }
    }
    out
}

/// `pub use`, `pub(crate) use`, `pub(super) use`.
fn preceded_by_pub(toks: &[(Tok, usize)], i: usize) -> bool {
    let before = |n: usize| i.checked_sub(n).map(|k| &toks[k].0);
    before(1) == Some(&Tok::Ident("pub".into()))
        || (before(1) == Some(&Tok::Punct(')')) && before(4) == Some(&Tok::Ident("pub".into())))
}

/// `to` with every re-exported name replaced by what it names, so that a
/// use through a module's re-export counts as a use of the file defining it.
fn through_reexports(
    to: &ModPath,
    aliases: &BTreeMap<ModPath, ModPath>,
    modules: &BTreeSet<ModPath>,
) -> ModPath {
    let mut to = to.clone();
    for _ in 0..8 {
        let hit = (1..=to.len()).rev().find(|&k| {
            !modules.contains(&to[..k].to_vec()) && aliases.contains_key(&to[..k].to_vec())
        });
        match hit {
            Some(k) => to = [aliases[&to[..k].to_vec()].clone(), to[k..].to_vec()].concat(),
            None => break,
        }
    }
    to
}

fn is_path_head(word: &str, extern_root: bool) -> bool {
    matches!(word, "crate" | "super" | "self") || (extern_root && word == "walrcv")
}

/// A path or use tree starting at `i`: every path it names (segments) and the
/// index after it.
fn parse_tree(toks: &[(Tok, usize)], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
            }
            Some(Tok::Punct('{')) => return parse_group(toks, i + 1, &prefix),
            _ => return (vec![prefix], i),
        }
        if toks.get(i).map(|t| &t.0) != Some(&Tok::PathSep) {
            return (vec![prefix], i);
        }
        i += 1;
    }
}

/// The inside of `{ a, b::c, d::{e, self} }`, each item prefixed.
fn parse_group(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
) -> (Vec<Vec<String>>, usize) {
    let mut out = Vec::new();
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('}') => return (out, i + 1),
            Tok::Ident(s) if s == "self" => {
                out.push(prefix.to_vec());
                i += 1;
            }
            Tok::Ident(s) if s == "as" => i += 2, // the alias is no path
            Tok::Ident(_) => {
                let (inner, next) = parse_tree(toks, i);
                out.extend(inner.into_iter().map(|p| [prefix.to_vec(), p].concat()));
                i = next;
            }
            Tok::Punct('{') => {
                let (inner, next) = parse_group(toks, i + 1, prefix);
                out.extend(inner);
                i = next;
            }
            _ => i += 1, // `,`, `*`, `as` names are idents but harmless
        }
    }
    (out, i)
}

/// An absolute module path for `path` seen in module `here`; `None` when it
/// climbs above the root.
fn resolve(here: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut segs = path.iter().peekable();
    let mut base = match segs.peek().map(|s| s.as_str()) {
        Some("crate" | "walrcv") => {
            segs.next();
            Vec::new()
        }
        _ => here.clone(),
    };
    while let Some(s) = segs.peek() {
        match s.as_str() {
            "self" => {}
            "super" => {
                base.pop()?;
            }
            _ => break,
        }
        segs.next();
    }
    base.extend(segs.cloned());
    Some(base)
}

/// Edges between sibling modules, per parent module: parent → (from → to → sites).
type Graphs = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Vec<Site>>>>;

/// Each reference becomes an edge between the two children of the deepest
/// module holding both ends, when both children are files (modules of their
/// own). A reference to an item of a parent is no edge.
fn graphs(modules: &BTreeSet<ModPath>, refs: &[Reference]) -> Graphs {
    let mut g = Graphs::new();
    for r in refs {
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        if common >= r.from.len() || common >= r.to.len() {
            continue;
        }
        let parent: ModPath = r.from[..common].to_vec();
        let (a, b) = (&r.from[common], &r.to[common]);
        let is_file = |c: &String| modules.contains(&[parent.clone(), vec![c.clone()]].concat());
        if is_file(a) && is_file(b) {
            g.entry(parent)
                .or_default()
                .entry(a.clone())
                .or_default()
                .entry(b.clone())
                .or_default()
                .push(r.site.clone());
        }
    }
    g
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeMap<String, Vec<Site>>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, Vec<Site>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The dependency table: module → the modules it uses.
type Table = BTreeMap<String, BTreeSet<String>>;

/// The fenced block after [`TABLE_MARKER`]: lines `module: dep dep ...`
/// (`#` starts a comment).
fn parse_table(doc: &str) -> Result<Table, String> {
    let after = doc
        .split_once(TABLE_MARKER)
        .ok_or_else(|| format!("no `{TABLE_MARKER}` marker"))?
        .1;
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    if !lines
        .next()
        .is_some_and(|l| l.trim_start().starts_with("```"))
    {
        return Err("the marker is not followed by a fenced block".into());
    }
    let mut table = Table::new();
    for line in lines.take_while(|l| !l.trim_start().starts_with("```")) {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (module, deps) = line
            .split_once(':')
            .ok_or_else(|| format!("table line without `:`: {line:?}"))?;
        let deps = deps
            .split([' ', ','])
            .filter(|d| !d.is_empty())
            .map(str::to_owned);
        if table
            .insert(module.trim().to_owned(), deps.collect())
            .is_some()
        {
            return Err(format!("module {} listed twice", module.trim()));
        }
    }
    Ok(table)
}

/// Everything wrong with the crate's layering, one line each (empty: fine).
fn problems(sources: &[(String, String)], table: &Table, known: &[(&str, &[&str])]) -> Vec<String> {
    let mut modules = BTreeSet::new();
    let mut refs = Vec::new();
    let mut aliases = BTreeMap::new();
    for (rel, text) in sources {
        let module = module_of_file(rel);
        refs.extend(references(rel, &module, text, module == ["main"]));
        aliases.extend(reexports(&module, text));
        modules.insert(module);
    }
    for r in &mut refs {
        r.to = through_reexports(&r.to, &aliases, &modules);
    }
    let g = graphs(&modules, &refs);
    let mut out = Vec::new();
    for (parent, edges) in &g {
        let name = if parent.is_empty() {
            "the crate".to_owned()
        } else {
            parent.join("::")
        };
        for comp in cycles(edges) {
            let files: Vec<&str> = comp.iter().map(String::as_str).collect();
            if known
                .iter()
                .any(|(m, f)| *m == name && *f == files.as_slice())
            {
                continue;
            }
            out.push(format!(
                "cycle in {name}: {{{}}} ({})",
                files.join(", "),
                evidence(edges, &comp)
            ));
        }
    }
    for (m, files) in known {
        let still = g
            .iter()
            .filter(|(p, _)| p.join("::") == *m)
            .flat_map(|(_, e)| cycles(e))
            .any(|c| c.iter().map(String::as_str).eq(files.iter().copied()));
        if !still {
            out.push(format!(
                "the known cycle {m}::{{{}}} is gone: remove it from KNOWN_FILE_CYCLES",
                files.join(", ")
            ));
        }
    }
    out.extend(table_problems(&modules, g.get(&Vec::new()), table));
    out
}

/// One site per edge of a cycle, so that the message says where to look.
fn evidence(
    edges: &BTreeMap<String, BTreeMap<String, Vec<Site>>>,
    comp: &BTreeSet<String>,
) -> String {
    let mut parts = Vec::new();
    for a in comp {
        for (b, sites) in edges.get(a).into_iter().flatten() {
            if comp.contains(b) {
                let s = &sites[0];
                parts.push(format!("{a} -> {b} at {}:{}", s.file, s.line));
            }
        }
    }
    parts.join("; ")
}

/// The top-level edges against the table: same modules, same edges.
fn table_problems(
    modules: &BTreeSet<ModPath>,
    top: Option<&BTreeMap<String, BTreeMap<String, Vec<Site>>>>,
    table: &Table,
) -> Vec<String> {
    let mut out = Vec::new();
    let tops: BTreeSet<&str> = modules
        .iter()
        .filter(|m| m.len() == 1)
        .map(|m| m[0].as_str())
        .collect();
    for m in &tops {
        if !table.contains_key(*m) {
            out.push(format!(
                "top-level module {m} is missing from the table in ARCHITECTURE.md"
            ));
        }
    }
    for (m, deps) in table {
        for name in std::iter::once(m).chain(deps) {
            if !tops.contains(name.as_str()) {
                out.push(format!(
                    "ARCHITECTURE.md's table names {name}, which is no top-level module"
                ));
            }
        }
    }
    let empty = BTreeMap::new();
    let top = top.unwrap_or(&empty);
    for (a, bs) in top {
        for (b, sites) in bs {
            if !table.get(a).is_some_and(|d| d.contains(b)) {
                let s = &sites[0];
                out.push(format!(
                    "{a} -> {b} ({}:{}) is not in ARCHITECTURE.md's table: remove the use, or add the edge if the layering allows it",
                    s.file, s.line
                ));
            }
        }
    }
    for (a, deps) in table {
        for b in deps {
            if !top.get(a).is_some_and(|m| m.contains_key(b)) {
                out.push(format!("ARCHITECTURE.md's table says {a} -> {b}, which the code no longer has: remove it"));
            }
        }
    }
    out
}

fn read_sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_sources(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p
                .strip_prefix(root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((rel, text));
        }
    }
}

#[test]
fn the_crate_is_layered_as_architecture_md_says() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    read_sources(&repo.join("src"), &repo.join("src"), &mut sources);
    let doc = std::fs::read_to_string(repo.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let table = parse_table(&doc).expect("the dependency table of ARCHITECTURE.md");
    let found = problems(&sources, &table, KNOWN_FILE_CYCLES);
    assert!(
        found.is_empty(),
        "layering problems:\n  {}",
        found.join("\n  ")
    );
}

/// The sans-IO modules: code that takes bytes and returns values, so that it
/// is unit-tested, fuzzed and benchmarked without a file or a socket.
const SANS_IO: &[&str] = &["lsn", "wal"];

/// Names of file, socket and runtime APIs a sans-IO module must not use.
const IO_NAMES: &[&str] = &[
    "fs",
    "net",
    "tokio",
    "File",
    "OpenOptions",
    "TcpStream",
    "UnixStream",
];

/// Every use of an IO API in the files of `modules` (path under `src/`, line, name).
fn io_uses(sources: &[(String, String)], modules: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in sources {
        let module = module_of_file(rel);
        if !module
            .first()
            .is_some_and(|m| modules.contains(&m.as_str()))
        {
            continue;
        }
        for (tok, line) in tokenize(text) {
            if let Tok::Ident(name) = tok {
                if IO_NAMES.contains(&name.as_str()) {
                    out.push(format!("{rel}:{line}: {name}"));
                }
            }
        }
    }
    out
}

#[test]
fn the_sans_io_modules_use_no_file_nor_socket() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    read_sources(&repo.join("src"), &repo.join("src"), &mut sources);
    let found = io_uses(&sources, SANS_IO);
    assert!(
        found.is_empty(),
        "IO in a sans-IO module:\n  {}",
        found.join("\n  ")
    );
}

#[cfg(test)]
mod checker {
    use super::*;

    fn src(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    fn table(text: &str) -> Table {
        parse_table(&format!("x\n{TABLE_MARKER}\n\n```text\n{text}```\n")).expect("table")
    }

    const LAYERED: &[(&str, &str)] = &[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "//! uses crate::c only in a comment\npub struct A;"),
        ("b.rs", "use crate::a::A; const S: &str = \"crate::c::X\";"),
        ("c/mod.rs", "mod x; mod y; pub use y::Y;"),
        ("c/x.rs", "use super::y::Y; use crate::{a::A, b};"),
        (
            "c/y.rs",
            "pub struct Y; #[cfg(test)] mod tests { use super::*; use super::super::Z; }",
        ),
        (
            "main.rs",
            "use walrcv::c::Y; fn f<'a>(x: &'a str) -> char { 'c' }",
        ),
    ];

    const LAYERED_TABLE: &str = "a:\nb: a  # comment\nc: a b\nmain: c\n";

    #[test]
    fn a_layered_crate_passes() {
        assert_eq!(
            problems(&src(LAYERED), &table(LAYERED_TABLE), &[]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_planted_top_level_cycle_fails() {
        let mut files = src(LAYERED);
        files[1].1.push_str("\nfn f() { crate::c::y::Y; }");
        let p = problems(&files, &table(LAYERED_TABLE), &[]);
        assert!(
            p.iter()
                .any(|l| l.starts_with("cycle in the crate: {a, b, c}")
                    || l.starts_with("cycle in the crate: {a, c}")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.starts_with("a -> c (a.rs:3)")), "{p:?}");
    }

    #[test]
    fn a_planted_file_cycle_fails_and_names_the_sites() {
        let mut files = src(LAYERED);
        files[5].1.push_str("\nfn g() { self::super::x::f(); }");
        let p = problems(&files, &table(LAYERED_TABLE), &[]);
        assert_eq!(
            p,
            ["cycle in c: {x, y} (x -> y at c/x.rs:1; y -> x at c/y.rs:2)"],
        );
    }

    #[test]
    fn an_inline_module_climbs_from_itself() {
        // `super` inside `mod tests` of c/y.rs is c::y, not c: no edge y -> x.
        let files = src(&[
            ("lib.rs", "pub mod c;"),
            ("c/mod.rs", "mod x; mod y;"),
            ("c/x.rs", "use super::y::Y;"),
            (
                "c/y.rs",
                "pub struct Y; mod tests { use super::Y; mod deeper { use super::super::Y; } }",
            ),
        ]);
        assert_eq!(problems(&files, &table("c:\n"), &[]), Vec::<String>::new());
    }

    #[test]
    fn an_edge_outside_the_table_and_a_stale_one_fail() {
        let p = problems(&src(LAYERED), &table("a: b\nb: a\nc: a\nmain: c\n"), &[]);
        assert_eq!(
            p,
            [
                "c -> b (c/x.rs:1) is not in ARCHITECTURE.md's table: remove the use, or add the edge if the layering allows it",
                "ARCHITECTURE.md's table says a -> b, which the code no longer has: remove it",
            ]
        );
    }

    #[test]
    fn a_module_missing_from_the_table_fails() {
        let p = problems(&src(LAYERED), &table("a:\nb: a\nc: a b\nzz:\n"), &[]);
        assert!(
            p.contains(
                &"top-level module main is missing from the table in ARCHITECTURE.md".to_owned()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"ARCHITECTURE.md's table names zz, which is no top-level module".to_owned()
            ),
            "{p:?}"
        );
    }

    #[test]
    fn a_known_cycle_passes_until_it_is_gone() {
        let mut files = src(LAYERED);
        files[5].1.push_str("\nfn g() { super::x::f(); }");
        let known: &[(&str, &[&str])] = &[("c", &["x", "y"])];
        assert!(problems(&files, &table(LAYERED_TABLE), known).is_empty());
        let p = problems(&src(LAYERED), &table(LAYERED_TABLE), known);
        assert_eq!(
            p,
            ["the known cycle c::{x, y} is gone: remove it from KNOWN_FILE_CYCLES"]
        );
    }

    #[test]
    fn tokens_skip_strings_chars_and_comments() {
        let t = tokenize("/* crate::a /* nested */ */ r#\"crate::b\"# b\"x\" '\\'' 'a' crate::c");
        let idents: Vec<_> = t
            .iter()
            .filter_map(|(t, _)| match t {
                Tok::Ident(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(idents, ["crate", "c"]);
    }

    #[test]
    fn a_cycle_through_a_reexport_is_found() {
        let files = src(&[
            ("lib.rs", "pub mod c;"),
            (
                "c/mod.rs",
                "mod x; mod y; pub use x::X; pub(crate) use y::{Y as _Y, Z};",
            ),
            ("c/x.rs", "pub struct X; fn f() { super::Z; }"),
            ("c/y.rs", "pub struct Z; fn g() { crate::c::X; }"),
        ]);
        assert_eq!(
            problems(&files, &table("c:\n"), &[]),
            ["cycle in c: {x, y} (x -> y at c/x.rs:1; y -> x at c/y.rs:1)"]
        );
    }

    #[test]
    fn a_file_api_in_a_sans_io_module_is_found() {
        let files = src(&[
            (
                "wal/page.rs",
                "use std::fs::File; // File in a comment\nfn f() {}",
            ),
            ("archive/durable.rs", "use std::fs::File;"),
        ]);
        assert_eq!(
            io_uses(&files, &["wal"]),
            ["wal/page.rs:1: fs", "wal/page.rs:1: File"]
        );
    }

    #[test]
    fn the_table_needs_its_marker_and_fence() {
        assert!(parse_table("no table").is_err());
        assert!(parse_table(&format!("{TABLE_MARKER}\ntext")).is_err());
        assert!(parse_table(&format!("{TABLE_MARKER}\n```\na: b\na: c\n```")).is_err());
    }
}
