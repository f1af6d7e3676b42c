//! The `tollgate` crate's modules form no import cycle: reading `proxy/src`, every file belongs to its top-level
//! module (`foo.rs` and everything under `foo/` are module `foo`), and a reference from one module to another
//! (a `use`, grouped forms like `use crate::{a, b::c}` included, or a path written inline, such as
//! `crate::a::f()`) is an edge. The graph of those edges must have no cycle, and no file may import a file that
//! imports it back. `#[cfg(test)]` modules count like any other code. Comments and string literals do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One token of Rust source, with its line; comments, strings and character literals are dropped.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Drops comments and string/char literals, keeps identifiers, `::` and other punctuation, each with its line.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let word_end = |mut i: usize| {
        while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
            i += 1;
        }
        i
    };
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < c.len() {
        if let Some(end) = literal_end(&c, i) {
            line += c[i..end].iter().filter(|&&x| x == '\n').count();
            i = end;
            continue;
        }
        let ch = c[i];
        if ch.is_alphabetic() || ch == '_' {
            let end = word_end(i);
            out.push((Tok::Ident(c[i..end].iter().collect()), line));
            i = end;
        } else if ch.is_ascii_digit() {
            i = word_end(i);
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            line += usize::from(ch == '\n');
            if !ch.is_whitespace() {
                out.push((Tok::Punct(ch), line));
            }
            i += 1;
        }
    }
    out
}

/// Where the comment, string or character literal starting at `i` ends, if one starts there.
fn literal_end(c: &[char], i: usize) -> Option<usize> {
    match (c[i], c.get(i + 1).copied()) {
        ('/', Some('/')) => Some(
            c[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(c.len(), |n| i + n),
        ),
        ('/', Some('*')) => Some(block_comment_end(c, i)),
        ('b', Some('"' | '\'')) => quoted_end(c, i + 1),
        _ => raw_string_end(c, i).or_else(|| quoted_end(c, i)),
    }
}

/// Where the (possibly nested) block comment starting at `i` ends.
fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match (c[i], c.get(i + 1).copied()) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) => {
                (depth, i) = (depth - 1, i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    c.len()
}

/// Where the string (`"..."`) or character literal (`'x'`, `'\n'`) starting at `i` ends; `None` for anything else,
/// a lifetime or label included (its name follows as an identifier).
fn quoted_end(c: &[char], i: usize) -> Option<usize> {
    let close = match c[i] {
        '"' => '"',
        '\'' if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') => '\'',
        _ => return None,
    };
    let mut j = i + 1;
    while j < c.len() && c[j] != close {
        j += if c[j] == '\\' { 2 } else { 1 };
    }
    Some((j + 1).min(c.len()))
}

/// Where a raw string (`r"..."`, `r#"..."#`, `br"..."`) starting at `i` ends, if one starts there.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&x| x == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    loop {
        if c.get(j)? == &'"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&x| x == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
}

/// A source file of the crate and the module path it defines (`kafka/handler.rs` = `["kafka", "handler"]`).
struct SourceFile {
    rel: String,
    module: Vec<String>,
    tokens: Vec<(Tok, usize)>,
}

fn source_files(root: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        // main.rs is the binary: its `crate` is another crate, and it uses this one as `tollgate::`.
        .filter(|p| p.strip_prefix(root).unwrap() != Path::new("main.rs"))
        .map(|path| {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let tokens = tokenize(&std::fs::read_to_string(&path).unwrap());
            SourceFile {
                rel,
                module,
                tokens,
            }
        })
        .collect()
}

/// A path a file names: its absolute module path (from the crate root) and the line it is on.
struct Reference {
    path: Vec<String>,
    line: usize,
}

/// Every `crate::`, `self::`, `super::` or child-module path a file names, in `use` trees and inline, resolved from
/// the (inline) module it is written in.
fn references(file: &SourceFile, modules: &BTreeSet<Vec<String>>) -> Vec<Reference> {
    let t = &file.tokens;
    let mut refs = Vec::new();
    // Inline modules (`mod tests { ... }`) open: their name and the brace depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let (mut depth, mut i) = (0, 0);
    while i < t.len() {
        let here: Vec<String> = file
            .module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut paths = Vec::new();
        let mut next = i + 1;
        match (
            &t[i].0,
            t.get(i + 1).map(|x| &x.0),
            t.get(i + 2).map(|x| &x.0),
        ) {
            (Tok::Punct('{'), _, _) => depth += 1,
            (Tok::Punct('}'), _, _) => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            (Tok::Ident(w), Some(Tok::Ident(name)), Some(Tok::Punct('{'))) if w == "mod" => {
                depth += 1;
                inline.push((name.clone(), depth));
                next = i + 3;
            }
            (Tok::Ident(w), _, _) if w == "use" => use_tree(t, &mut next, Vec::new(), &mut paths),
            (Tok::Ident(_), _, _)
                if !matches!(t.get(i.wrapping_sub(1)), Some((Tok::PathSep, _))) =>
            {
                next = inline_path(t, i, &mut paths);
            }
            _ => {}
        }
        let line = t[i].1;
        refs.extend(
            paths
                .iter()
                .filter_map(|p| resolve(&here, p, modules))
                .map(|path| Reference { path, line }),
        );
        i = next;
    }
    refs
}

/// Reads the path written inline at `i` (`a::b::c`), adding it to `out` when it has more than one segment; returns
/// where it ends.
fn inline_path(t: &[(Tok, usize)], i: usize, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = Vec::new();
    let mut j = i;
    while let Some((Tok::Ident(segment), _)) = t.get(j) {
        path.push(segment.clone());
        match (t.get(j + 1), t.get(j + 2)) {
            (Some((Tok::PathSep, _)), Some((Tok::Ident(_), _))) => j += 2,
            _ => break,
        }
    }
    if path.len() > 1 {
        out.push(path);
    }
    j + 1
}

/// Reads one use tree at `*j` (`a::b`, `a::{b, c::d}`, `a::*`, `a as b`), adding each full path to `out`.
fn use_tree(
    t: &[(Tok, usize)],
    j: &mut usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    loop {
        match t.get(*j).map(|x| &x.0) {
            Some(Tok::PathSep) => *j += 1,
            Some(Tok::Ident(w)) if w == "as" => {
                *j += 2;
                break;
            }
            Some(Tok::Ident(w)) if w == "self" && !prefix.is_empty() => *j += 1,
            Some(Tok::Ident(w)) => {
                prefix.push(w.clone());
                *j += 1;
            }
            Some(Tok::Punct('*')) => *j += 1,
            Some(Tok::Punct('{')) => {
                *j += 1;
                while !matches!(t.get(*j).map(|x| &x.0), Some(Tok::Punct('}')) | None) {
                    use_tree(t, j, prefix.clone(), out);
                    if matches!(t.get(*j).map(|x| &x.0), Some(Tok::Punct(','))) {
                        *j += 1;
                    }
                }
                *j += 1;
                return;
            }
            _ => break,
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// The absolute path `path` names when written in module `here`, if it names something of this crate.
fn resolve(
    here: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut base = here.to_vec();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A bare path names this crate only when its first segment is a child module of `here`.
            let mut child = here.to_vec();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
        }
        None => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file that defines the longest module prefix of `path`.
fn file_of<'a>(path: &[String], by_module: &BTreeMap<Vec<String>, &'a str>) -> Option<&'a str> {
    (0..=path.len())
        .rev()
        .find_map(|n| by_module.get(&path[..n]).copied())
}

/// Edges `from -> to` with the first place (file:line) that makes each.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graphs() -> (Graph, Graph) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = source_files(&root);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let by_module: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|f| (f.module.clone(), f.rel.as_str()))
        .collect();
    let (mut module_graph, mut file_graph) = (Graph::new(), Graph::new());
    for file in &files {
        let Some(top) = file.module.first() else {
            continue; // lib.rs: the crate root declares the modules
        };
        for r in references(file, &modules) {
            let place = format!("{}:{}", file.rel, r.line);
            if let Some(to) = r
                .path
                .first()
                .filter(|m| *m != top && modules.contains(&vec![m.to_string()]))
            {
                module_graph
                    .entry(top.clone())
                    .or_default()
                    .entry(to.clone())
                    .or_insert(place.clone());
            }
            if let Some(to) =
                file_of(&r.path, &by_module).filter(|to| *to != file.rel && *to != "lib.rs")
            {
                file_graph
                    .entry(file.rel.clone())
                    .or_default()
                    .entry(to.to_string())
                    .or_insert(place);
            }
        }
    }
    (module_graph, file_graph)
}

/// A cycle of `graph`, as its nodes in order, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, g, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn describe(cycle: &[String], graph: &Graph) -> String {
    let mut text = String::new();
    for (k, from) in cycle.iter().enumerate() {
        let to = &cycle[(k + 1) % cycle.len()];
        text += &format!("\n  {from} -> {to}  ({})", graph[from][to]);
    }
    text
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (modules, _) = graphs();
    assert!(
        modules.len() > 20,
        "the scan found too few modules: {modules:?}"
    );
    assert!(
        modules["kafka"].contains_key("flow"),
        "the scan misses known references: {:?}",
        modules["kafka"]
    );
    if let Some(cycle) = find_cycle(&modules) {
        panic!("module import cycle:{}", describe(&cycle, &modules));
    }
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let (_, files) = graphs();
    let mutual: Vec<String> = files
        .iter()
        .flat_map(|(a, edges)| edges.keys().map(move |b| (a, b)))
        .filter(|(a, b)| a < b && files.get(*b).is_some_and(|e| e.contains_key(*a)))
        .map(|(a, b)| describe(&[a.clone(), b.clone()], &files))
        .collect();
    assert!(
        mutual.is_empty(),
        "files importing each other:{}",
        mutual.concat()
    );
}

#[test]
fn the_scan_reads_grouped_uses_and_inline_paths() {
    let src = "use crate::{a, b::{c, d as e}, f::*};\n// crate::g::h\nfn x() { let s = \"crate::i::j\"; crate::k::l(); }\nmod tests { use super::m; }";
    let file = SourceFile {
        rel: "z/y.rs".into(),
        module: vec!["z".into(), "y".into()],
        tokens: tokenize(src),
    };
    let paths: Vec<String> = references(&file, &BTreeSet::new())
        .into_iter()
        .map(|r| format!("{}@{}", r.path.join("::"), r.line))
        .collect();
    assert_eq!(
        paths,
        ["a@1", "b::c@1", "b::d@1", "f@1", "k::l@3", "z::y::m@4"]
    );
}
