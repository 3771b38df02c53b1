//! Python functions from LLM answers.
//!
//! An answer is Markdown-ish prose with code: fenced blocks (```` ```python ````,
//! ```` ```py ````, bare ```` ``` ````, `~~~`), possibly unterminated, or no fence at
//! all. Each Python-looking block is parsed with ruff's error-recovering parser;
//! every top-level function and every method of a top-level class becomes a
//! [`Function`] that carries what it needs to run on its own: the block's imports
//! and module-level assignments it uses and the names of the block's other
//! top-level functions and classes it calls. A block with syntax errors still
//! yields the functions whose own text parses, flagged `block_has_error`.

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, ExprContext, Stmt};
use ruff_python_parser::{parse_module, parse_unchecked, Mode, ParseOptions};
use ruff_text_size::{Ranged, TextRange};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::stack;

/// One function found in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// `Class.method` for methods, else the name.
    pub qualname: String,
    pub class_name: Option<String>,
    pub is_method: bool,
    pub is_async: bool,
    /// `def name(params) -> ret:` rebuilt from the source pieces (no body).
    pub signature: String,
    /// Cleaned like `inspect.cleandoc`.
    pub docstring: Option<String>,
    /// The statements after the docstring, dedented.
    pub body: String,
    /// Decorators, signature and body, dedented to column 0: parses on its own.
    pub source: String,
    /// Decorator expressions as written, without `@`.
    pub decorators: Vec<String>,
    /// 1-based lines in the whole answer (after CRLF normalisation), inclusive.
    pub start_line: usize,
    pub end_line: usize,
    /// Index of the code block in the answer.
    pub block: usize,
    pub block_has_error: bool,
    /// Module-level import statements of the block whose names the function uses.
    pub imports: Vec<String>,
    /// Module-level assignments of the block whose names the function uses.
    pub globals: Vec<String>,
    /// The block's other top-level functions and classes the function refers to.
    pub helpers: Vec<String>,
}

/// A code block found in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// 0-based line of the block's first code line in the normalised answer.
    pub first_line: usize,
    pub text: String,
}

const PYTHON_TAGS: [&str; 7] = ["", "python", "py", "python3", "py3", "ipython", "ipython3"];

/// Fence opening: the fence character, its run length, indentation and info word.
fn fence_open(line: &str) -> Option<(char, usize, usize, String)> {
    let indent = line.len() - line.trim_start().len();
    let rest = &line[indent..];
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let run = rest.chars().take_while(|c| *c == ch).count();
    if run < 3 {
        return None;
    }
    let info = rest[run..].trim();
    if ch == '`' && info.contains('`') {
        return None; // inline code such as ```x``` is not a fence
    }
    let word = info
        .split(|c: char| c.is_whitespace() || c == '{' || c == ',')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    Some((ch, run, indent, word))
}

fn is_fence_close(line: &str, ch: char, run: usize) -> bool {
    let t = line.trim();
    t.chars().count() >= run && t.chars().all(|c| c == ch)
}

/// Python code blocks of an answer whose newlines are already `\n`.
pub fn find_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut blocks = Vec::new();
    let mut saw_fence = false;
    let mut i = 0;
    while i < lines.len() {
        let Some((ch, run, indent, word)) = fence_open(lines[i]) else {
            i += 1;
            continue;
        };
        saw_fence = true;
        let start = i + 1;
        let mut end = start;
        // A fence with a language inside a block opens the next block: LLMs often
        // forget to close one.
        let mut reopened = false;
        while end < lines.len() && !is_fence_close(lines[end], ch, run) {
            if fence_open(lines[end]).is_some_and(|(_, _, _, w)| !w.is_empty()) {
                reopened = true;
                break;
            }
            end += 1;
        }
        if PYTHON_TAGS.contains(&word.as_str()) {
            // Inside an indented fence (a list item) the fence's indentation is
            // not part of the code, as in CommonMark.
            let body: Vec<&str> = lines[start..end]
                .iter()
                .map(|l| {
                    let strip = l.len() - l.trim_start_matches([' ', '\t']).len();
                    &l[strip.min(indent)..]
                })
                .collect();
            let code = body.join("\n");
            if !code.trim().is_empty() {
                blocks.push(Block {
                    first_line: start,
                    text: code,
                });
            }
        }
        i = if reopened { end } else { end + 1 };
    }
    if !saw_fence && !text.trim().is_empty() {
        blocks.push(Block {
            first_line: 0,
            text: text.to_string(),
        });
    }
    blocks
}

/// Byte offsets of line starts, for offset → line lookups.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self(starts)
    }

    /// 0-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset) - 1
    }

    fn line_start(&self, offset: usize) -> usize {
        self.0[self.line(offset)]
    }
}

fn slice(text: &str, r: TextRange) -> &str {
    &text[r.start().to_usize()..r.end().to_usize()]
}

/// Remove `prefix` from every line that starts with it (others, e.g. inside a
/// multi-line string, are left alone).
fn dedent(text: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        return text.to_string();
    }
    text.split('\n')
        .map(|l| l.strip_prefix(prefix).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `inspect.cleandoc`: tabs expanded, first line stripped, common indentation of
/// the rest removed, blank lines at both ends dropped.
pub fn cleandoc(doc: &str) -> String {
    let expanded: Vec<String> = doc.split('\n').map(|l| expand_tabs(l, 8)).collect();
    let margin = expanded
        .iter()
        .skip(1)
        .filter(|l| !l.trim_start().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let mut lines: Vec<String> = Vec::with_capacity(expanded.len());
    for (i, l) in expanded.iter().enumerate() {
        if i == 0 {
            lines.push(l.trim_start().to_string());
        } else {
            lines.push(l.chars().skip(margin).collect());
        }
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let first = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .unwrap_or(lines.len());
    lines[first..].join("\n")
}

fn expand_tabs(line: &str, size: usize) -> String {
    let mut out = String::with_capacity(line.len());
    let mut col = 0;
    for c in line.chars() {
        if c == '\t' {
            let n = size - col % size;
            out.extend(std::iter::repeat_n(' ', n));
            col += n;
        } else {
            out.push(c);
            col = if c == '\n' { 0 } else { col + 1 };
        }
    }
    out
}

/// Every name a function loads (including decorators, defaults and annotations).
#[derive(Default)]
struct Loads<'a>(FxHashSet<&'a str>);

impl<'a> Visitor<'a> for Loads<'a> {
    fn visit_expr(&mut self, expr: &'a Expr) {
        if let Expr::Name(n) = expr {
            if matches!(n.ctx, ExprContext::Load) {
                self.0.insert(n.id.as_str());
            }
        }
        visitor::walk_expr(self, expr);
    }
}

/// What the block's top level defines, by name.
#[derive(Default)]
struct ModuleScope<'a> {
    /// name → index of the import statement binding it.
    imports: FxHashMap<&'a str, usize>,
    /// name → index of the assignment binding it.
    assigns: FxHashMap<&'a str, usize>,
    defs: FxHashSet<&'a str>,
}

fn target_names<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
    match e {
        Expr::Name(n) => out.push(n.id.as_str()),
        Expr::Tuple(t) => t.elts.iter().for_each(|x| target_names(x, out)),
        Expr::List(l) => l.elts.iter().for_each(|x| target_names(x, out)),
        Expr::Starred(s) => target_names(&s.value, out),
        _ => {}
    }
}

impl<'a> ModuleScope<'a> {
    fn new(body: &'a [Stmt]) -> Self {
        let mut s = Self::default();
        for (i, stmt) in body.iter().enumerate() {
            let mut names = Vec::new();
            match stmt {
                Stmt::Import(imp) => {
                    for a in &imp.names {
                        let n = a.asname.as_ref().map_or_else(
                            || a.name.id.as_str().split('.').next().unwrap_or(""),
                            |n| n.id.as_str(),
                        );
                        s.imports.insert(n, i);
                    }
                }
                Stmt::ImportFrom(imp) => {
                    for a in &imp.names {
                        s.imports
                            .insert(a.asname.as_ref().unwrap_or(&a.name).id.as_str(), i);
                    }
                }
                Stmt::Assign(a) => a.targets.iter().for_each(|t| target_names(t, &mut names)),
                Stmt::AnnAssign(a) => target_names(&a.target, &mut names),
                Stmt::AugAssign(a) => target_names(&a.target, &mut names),
                Stmt::FunctionDef(f) => {
                    s.defs.insert(f.name.id.as_str());
                }
                Stmt::ClassDef(c) => {
                    s.defs.insert(c.name.id.as_str());
                }
                _ => {}
            }
            for n in names {
                s.assigns.entry(n).or_insert(i);
            }
        }
        s
    }
}

struct BlockCtx<'a> {
    text: &'a str,
    lines: LineIndex,
    body: &'a [Stmt],
    scope: ModuleScope<'a>,
    errors: Vec<TextRange>,
    block: usize,
    first_line: usize,
}

impl BlockCtx<'_> {
    #[allow(clippy::too_many_lines)]
    fn function(&self, stmt: &Stmt, class: Option<&str>, own_name: &str) -> Option<Function> {
        let Stmt::FunctionDef(f) = stmt else {
            return None;
        };
        let start = f
            .decorator_list
            .first()
            .map_or(f.start(), |d| d.start().min(f.start()));
        let range = TextRange::new(start, f.end());
        if self
            .errors
            .iter()
            .any(|e| e.intersect(range).is_some() || e.start() == range.end())
        {
            return None;
        }
        let text = self.text;
        let line_start = self.lines.line_start(start.to_usize());
        let indent = &text[line_start..start.to_usize()];
        if !indent.chars().all(char::is_whitespace) {
            return None; // e.g. `x = 1; def f(): ...` cannot stand alone by line
        }
        let source = dedent(&text[line_start..f.end().to_usize()], indent);
        if !self.errors.is_empty() && parse_module(&source).is_err() {
            return None;
        }
        let mut signature = String::new();
        if f.is_async {
            signature.push_str("async ");
        }
        signature.push_str("def ");
        signature.push_str(f.name.id.as_str());
        if let Some(tp) = &f.type_params {
            signature.push_str(slice(text, tp.range()));
        }
        signature.push_str(slice(text, f.parameters.range()));
        if let Some(r) = &f.returns {
            signature.push_str(" -> ");
            signature.push_str(slice(text, r.range()));
        }
        signature.push(':');
        let (docstring, rest) = match f.body.split_first() {
            Some((Stmt::Expr(e), rest)) if matches!(*e.value, Expr::StringLiteral(_)) => {
                let Expr::StringLiteral(s) = &*e.value else {
                    unreachable!()
                };
                (Some(cleandoc(s.value.to_str())), rest)
            }
            _ => (None, &f.body[..]),
        };
        let body = match rest.first() {
            None => String::new(),
            Some(first) => {
                let header_line = self.lines.line(f.start().to_usize());
                let s = first.start().to_usize();
                if self.lines.line(s) > header_line {
                    let ls = self.lines.line_start(s);
                    dedent(&text[ls..f.end().to_usize()], &text[ls..s])
                } else {
                    text[s..f.end().to_usize()].to_string()
                }
            }
        };
        let mut loads = Loads::default();
        loads.visit_stmt(stmt);
        let mut import_idx: Vec<usize> = Vec::new();
        let mut global_idx: Vec<usize> = Vec::new();
        let mut helpers: Vec<String> = Vec::new();
        for name in &loads.0 {
            if let Some(&i) = self.scope.imports.get(name) {
                import_idx.push(i);
            } else if self.scope.defs.contains(name) && *name != own_name {
                helpers.push((*name).to_string());
            } else if let Some(&i) = self.scope.assigns.get(name) {
                global_idx.push(i);
            }
        }
        let stmt_texts = |mut idx: Vec<usize>| -> Vec<String> {
            idx.sort_unstable();
            idx.dedup();
            idx.iter()
                .map(|&i| slice(text, self.body[i].range()).to_string())
                .collect()
        };
        helpers.sort();
        Some(Function {
            name: f.name.id.to_string(),
            qualname: class.map_or_else(|| f.name.id.to_string(), |c| format!("{c}.{}", f.name.id)),
            class_name: class.map(str::to_string),
            is_method: class.is_some(),
            is_async: f.is_async,
            signature,
            docstring,
            body,
            source,
            decorators: f
                .decorator_list
                .iter()
                .map(|d| slice(text, d.expression.range()).to_string())
                .collect(),
            start_line: self.first_line + self.lines.line(start.to_usize()) + 1,
            end_line: self.first_line + self.lines.line(f.end().to_usize().saturating_sub(1)) + 1,
            block: self.block,
            block_has_error: !self.errors.is_empty(),
            imports: stmt_texts(import_idx),
            globals: stmt_texts(global_idx),
            helpers,
        })
    }
}

fn extract_block(block: &Block, index: usize, out: &mut Vec<Function>) {
    if stack::too_complex(&block.text) {
        return;
    }
    let parsed = parse_unchecked(&block.text, ParseOptions::from(Mode::Module));
    let Some(module) = parsed.syntax().as_module() else {
        return;
    };
    let ctx = BlockCtx {
        text: &block.text,
        lines: LineIndex::new(&block.text),
        body: &module.body,
        scope: ModuleScope::new(&module.body),
        errors: parsed.errors().iter().map(|e| e.location).collect(),
        block: index,
        first_line: block.first_line,
    };
    for stmt in &module.body {
        match stmt {
            Stmt::FunctionDef(f) => out.extend(ctx.function(stmt, None, f.name.id.as_str())),
            Stmt::ClassDef(c) => {
                let class = c.name.id.as_str();
                for s in &c.body {
                    out.extend(ctx.function(s, Some(class), class));
                }
            }
            _ => {}
        }
    }
}

/// All functions in an answer, in order of appearance. Call on a big stack
/// (see [`stack::on_big_stack`]).
pub fn extract_functions(answer: &str) -> Vec<Function> {
    let text = answer.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = Vec::new();
    for (i, block) in find_blocks(&text).iter().enumerate() {
        extract_block(block, i, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(answer: &str) -> Vec<String> {
        stack::on_big_stack(|| extract_functions(answer))
            .into_iter()
            .map(|f| f.qualname)
            .collect()
    }

    #[test]
    fn prose_and_several_blocks() {
        let answer = "Here you go:\n\n```python\nimport math\n\nR = 2\n\ndef area(r=R):\n    \"\"\"Area.\n\n    Of a circle.\n    \"\"\"\n    return math.pi * r ** 2\n```\n\nAnd a test:\n\n```py\nclass T:\n    def test(self):\n        assert area(1) > 3\n```\n\n```bash\ndef not_python(): pass\n```\n";
        let fs = stack::on_big_stack(|| extract_functions(answer));
        assert_eq!(fs.len(), 2);
        let a = &fs[0];
        assert_eq!(
            (a.name.as_str(), a.start_line, a.end_line, a.block),
            ("area", 8, 13, 0)
        );
        assert_eq!(a.signature, "def area(r=R):");
        assert_eq!(a.docstring.as_deref(), Some("Area.\n\nOf a circle."));
        assert_eq!(a.body, "return math.pi * r ** 2");
        assert_eq!(a.imports, ["import math"]);
        assert_eq!(a.globals, ["R = 2"]);
        let t = &fs[1];
        assert!(t.is_method);
        assert_eq!(t.qualname, "T.test");
        assert_eq!(t.source, "def test(self):\n    assert area(1) > 3");
    }

    #[test]
    fn crlf_tabs_unterminated_and_unfenced() {
        assert_eq!(names("```python\r\ndef f(x):\r\n\treturn x\r\n"), ["f"]);
        assert_eq!(
            names("def g():\n    return 1\n\nasync def h(): pass\n"),
            ["g", "h"]
        );
        assert_eq!(names("no code at all"), Vec::<String>::new());
    }

    #[test]
    fn syntax_errors_keep_the_good_functions() {
        let fs = stack::on_big_stack(|| {
            extract_functions("```python\ndef good():\n    return 1\n\ndef bad(:\n    pass\n\ndef also_good(y):\n    return y\n```")
        });
        let got: Vec<&str> = fs.iter().map(|f| f.name.as_str()).collect();
        assert!(
            got.contains(&"good") && got.contains(&"also_good") && !got.contains(&"bad"),
            "{got:?}"
        );
        assert!(fs.iter().all(|f| f.block_has_error));
    }

    #[test]
    fn non_ascii_identifiers_and_helpers() {
        let fs = stack::on_big_stack(|| {
            extract_functions(
                "```\ndef größe(ä):\n    return hilfe(ä)\n\ndef hilfe(x):\n    return x\n```",
            )
        });
        assert_eq!(fs[0].name, "größe");
        assert_eq!(fs[0].helpers, ["hilfe"]);
    }

    #[test]
    fn cleandoc_matches_inspect() {
        assert_eq!(
            cleandoc("  Summary.\n\n      More.\n        Deeper.\n    "),
            "Summary.\n\nMore.\n  Deeper."
        );
        assert_eq!(cleandoc("\n    A\n    B\n"), "A\nB");
    }
}
