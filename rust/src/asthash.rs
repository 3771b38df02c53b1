//! AST-normalised clone hash of Python source (type-1 and type-2 clones).
//!
//! The normalisation spec lives in `amr_async/ast_reference.py`, a pure-Python
//! version on the stdlib `ast` module that is the oracle for this one: both write
//! the same normal form (CPython's node names and field order, docstrings and
//! annotations dropped, bound names renamed `$0, $1, ...` by first appearance,
//! literals by value) and hash it with BLAKE2b-128. In short:
//!
//! - parse the unit (usually one function) as a module; no parse, no hash;
//! - drop docstrings of module, functions and classes; drop annotations;
//! - rename names bound in the unit (parameters, assignment/for/with/except/match
//!   targets, def/class names, comprehension variables) by first appearance; keep
//!   names declared `global`/`nonlocal` and names bound by imports, and everything
//!   never bound (globals, builtins), attribute names and keyword-argument names;
//!   `include_name` keeps the spelling of the unit's top-level def/class names;
//! - literals by value: strings by characters, bytes in hex, integers in hex,
//!   floats by Python's `repr`; f-strings as CPython's `JoinedStr`.
//!
//! ruff's AST differs from CPython's in shape (elif chains, parameter defaults,
//! literal kinds, f-string parts); the writer below maps each node to CPython's
//! form as it goes. Walks are recursive with an explicit depth limit, and callers
//! run them on a thread with a large stack (see `crate::stack`).

use std::fmt::Write as _;

use ruff_python_ast::{
    self as ast, BoolOp, CmpOp, ConversionFlag, ExceptHandler, Expr, ExprContext,
    InterpolatedStringElement, Number, Operator, Parameters, Pattern, Stmt, TypeParam, UnaryOp,
};
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::arena;

/// Deepest AST nesting the walks accept; deeper units are refused like a parse
/// failure (CPython's own parser refuses far shallower nesting).
pub const MAX_DEPTH: usize = 2_000;

/// Why a unit has no hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhashable {
    /// The text is not valid Python.
    Syntax,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A construct CPython 3.11's `ast` cannot express (template strings, IPython escapes).
    Unsupported,
}

/// The normal form of one unit and its size in AST nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalForm {
    pub text: String,
    pub nodes: usize,
}

/// Parse `code` and write its normal form.
pub fn normal_form(code: &str, include_name: bool) -> Result<NormalForm, Unhashable> {
    let parsed = ruff_python_parser::parse_module(code).map_err(|_| Unhashable::Syntax)?;
    write_form(&parsed.syntax().body, include_name, form_capacity(code))
}

/// Bytes reserved up front for the form of `code`: the filled form is ~2.3 times
/// the source (median over stdlib functions), so `len + 64` grew, i.e. was copied,
/// for 88% of them.
fn form_capacity(code: &str) -> usize {
    code.len() * 5 / 2 + 64
}

/// The normal form of an already parsed module body.
pub fn normal_form_of(body: &[Stmt], include_name: bool) -> Result<NormalForm, Unhashable> {
    write_form(body, include_name, 512)
}

/// One walk writes the form with a gap at every renameable name and notes which
/// names are bound or kept; the gaps are filled once the whole unit is seen (a
/// name's fate, e.g. `global x` after a use of `x`, may come later in the text).
/// This replaced a separate binding pass over the tree: the walk over the AST
/// costs more than the final copy of the text.
fn write_form(
    body: &[Stmt],
    include_name: bool,
    capacity: usize,
) -> Result<NormalForm, Unhashable> {
    let w = walk(body, include_name, capacity)?;
    Ok(NormalForm {
        text: w.fill_gaps(),
        nodes: w.nodes,
    })
}

fn walk(body: &[Stmt], include_name: bool, capacity: usize) -> Result<Writer<'_>, Unhashable> {
    let mut w = Writer {
        slots: FxHashMap::with_capacity_and_hasher(32, FxBuildHasher),
        table: Vec::with_capacity(32),
        gaps: Vec::with_capacity(64),
        out: String::with_capacity(capacity),
        nodes: 0,
    };
    w.out.push_str("Module(");
    w.body(body, true, 0)?;
    w.out.push_str(",)");
    if include_name {
        for stmt in body {
            match stmt {
                Stmt::FunctionDef(f) => w.keep(f.name.id.as_str()),
                Stmt::ClassDef(c) => w.keep(c.name.id.as_str()),
                _ => {}
            }
        }
    }
    Ok(w)
}

/// The 128-bit hash of `code` as 32 lower-case hex characters.
pub fn ast_hash(code: &str, include_name: bool) -> Result<String, Unhashable> {
    ast_digest(code, include_name).map(|(d, _)| hex(&d))
}

/// The 16-byte hash of `code`'s normal form and the form's size in AST nodes,
/// without materialising the form: the digest is fed straight from the walk's
/// buffer and names. Allocates nothing that outlives the call, so it may run in
/// an [`arena`] scope; there it skips dropping the AST when the whole parse lives
/// in the arena (the reset frees it at once).
pub fn ast_digest(code: &str, include_name: bool) -> Result<([u8; 16], usize), Unhashable> {
    let parsed = ruff_python_parser::parse_module(code).map_err(|_| Unhashable::Syntax)?;
    let result = walk(&parsed.syntax().body, include_name, form_capacity(code)).map(|w| {
        let digest = w.digest();
        (digest, w.nodes)
    });
    if arena::in_scope() && !arena::spilled() {
        // Every allocation of this scope is in the arena: dropping would only walk
        // the tree to free nothing.
        std::mem::forget(parsed);
    }
    result
}

/// Bytes of one arena per hashing thread: a typical function's parse needs tens
/// of KiB; larger units spill to mimalloc, so this bounds memory per thread.
const ARENA_BYTES: usize = 1 << 20;

/// `f` of every code on `threads` big-stack threads (`0`: all cores), each call in its
/// thread's [`arena`]; `refused` where the nesting check refuses the code. `R: Copy` owns
/// no heap memory, so a result cannot carry an arena allocation out of its scope.
///
/// # Safety
///
/// `f` must keep [`arena::Arena::run`]'s promise: it drops (or forgets) everything it
/// allocates and is not the first to touch a lazily allocated global.
unsafe fn map_in_arenas<T: AsRef<str> + Sync, R: Copy + Send + Sync>(
    codes: &[T],
    threads: usize,
    refused: R,
    f: impl Fn(&str) -> R + Sync + Send,
) -> Vec<R> {
    crate::stack::map_batch_with(
        codes,
        threads,
        || arena::Arena::new(ARENA_BYTES),
        |arena, code| {
            let code = code.as_ref();
            if crate::stack::too_complex(code) {
                return refused;
            }
            // SAFETY: the caller's promise for `f`; only a `Copy` value leaves the scope.
            unsafe { arena.run(|| f(code)) }
        },
    )
}

/// Codes hashed together: their forms are staged in one buffer and BLAKE2b runs on
/// them four at a time (AVX2) once the group is walked.
const GROUP: usize = 64;

/// Bytes of a hashing thread's staging buffer. A form that does not fit in what is
/// left of it is hashed on its own as it is written (the buffer never grows).
const STAGE_BYTES: usize = 128 << 10;

/// One hashing thread's reusable memory: the arena for parse and walk, and the
/// buffer where a group's forms wait for [`blake2b_simd::many::hash_many`].
struct Hasher {
    arena: arena::Arena,
    /// Allocated outside any arena scope, and never grown inside one (see [`Stage`]),
    /// so the forms outlive the scope that wrote them.
    texts: Vec<u8>,
}

/// What the arena scope hands back for one code (`Copy`: nothing of the scope leaks).
#[derive(Clone, Copy)]
enum Walked {
    /// No hash: syntax error, too deep, unsupported.
    Unhashable,
    /// The form is staged in [`Hasher::texts`]; its node count.
    Staged(usize),
    /// The form did not fit the stage and was hashed directly.
    Hashed([u8; 16], usize),
}

/// Parse and walk `code`, then write its form to `texts` (or hash it there and then
/// when it does not fit). Meant to run inside an arena scope, like [`ast_digest`].
fn walk_and_stage(code: &str, include_name: bool, texts: &mut Vec<u8>) -> Walked {
    let Ok(parsed) = ruff_python_parser::parse_module(code) else {
        return Walked::Unhashable;
    };
    let result = match walk(&parsed.syntax().body, include_name, form_capacity(code)) {
        Err(_) => Walked::Unhashable,
        Ok(w) => {
            let start = texts.len();
            let mut stage = Stage {
                buf: texts,
                fits: true,
            };
            w.emit(&mut stage);
            if stage.fits {
                Walked::Staged(w.nodes)
            } else {
                texts.truncate(start);
                Walked::Hashed(w.digest(), w.nodes)
            }
        }
    };
    if arena::in_scope() && !arena::spilled() {
        std::mem::forget(parsed); // as in `ast_digest`
    }
    result
}

/// [`ast_digest`] of a group of codes (at most [`GROUP`]) on this thread: each parse
/// and walk in the arena, then one `hash_many` over the staged forms.
fn digest_group<T: AsRef<str>>(
    hasher: &mut Hasher,
    codes: &[T],
    include_name: bool,
) -> Vec<Option<([u8; 16], usize)>> {
    let Hasher { arena, texts } = hasher;
    texts.clear();
    let mut walked = Vec::with_capacity(codes.len());
    let mut ends = Vec::with_capacity(codes.len());
    for code in codes {
        let code = code.as_ref();
        let w = if crate::stack::too_complex(code) {
            Walked::Unhashable
        } else {
            // SAFETY: `walk_and_stage` drops (or forgets) everything it allocates, and
            // the parser and walk touch no lazily allocated global (audit in the
            // `arena` module docs). `texts` was allocated outside the scope and `Stage`
            // never grows it, so only a `Copy` value and bytes written into existing
            // capacity leave the scope.
            unsafe { arena.run(|| walk_and_stage(code, include_name, texts)) }
        };
        if matches!(w, Walked::Staged(_)) {
            ends.push(texts.len());
        }
        walked.push(w);
    }
    let mut params = blake2b_simd::Params::new();
    params.hash_length(16);
    let mut start = 0;
    let mut jobs: Vec<_> = ends
        .iter()
        .map(|&end| {
            let job = blake2b_simd::many::HashManyJob::new(&params, &texts[start..end]);
            start = end;
            job
        })
        .collect();
    blake2b_simd::many::hash_many(jobs.iter_mut());
    let mut jobs = jobs.iter();
    walked
        .into_iter()
        .map(|w| match w {
            Walked::Unhashable => None,
            Walked::Hashed(digest, nodes) => Some((digest, nodes)),
            Walked::Staged(nodes) => {
                let mut digest = [0u8; 16];
                let job = jobs.next().expect("one job per staged form");
                digest.copy_from_slice(job.to_hash().as_bytes());
                Some((digest, nodes))
            }
        })
        .collect()
}

/// [`ast_digest`] of every code on `threads` big-stack threads (`0`: all cores),
/// each parse in its thread's [`arena`]; `None` where a code has no hash. Codes go
/// in groups of [`GROUP`] so that BLAKE2b hashes four forms at once: AVX2 is four
/// 64-bit lanes, which one BLAKE2b state cannot fill (its rounds are serial).
pub fn digest_batch<T: AsRef<str> + Sync>(
    codes: &[T],
    include_name: bool,
    threads: usize,
) -> Vec<Option<([u8; 16], usize)>> {
    let groups: Vec<&[T]> = codes.chunks(GROUP).collect();
    let digests = crate::stack::map_batch_with(
        &groups,
        threads,
        || Hasher {
            arena: arena::Arena::new(ARENA_BYTES),
            texts: Vec::with_capacity(STAGE_BYTES),
        },
        |hasher, group| digest_group(hasher, group, include_name),
    );
    digests.into_iter().flatten().collect()
}

/// Where a form's bytes go: a BLAKE2b state, a text, or the staging buffer.
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    #[inline]
    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }

    #[inline]
    fn decimal(&mut self, mut n: usize) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&buf[i..]);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Appends to a buffer that must not grow: inside an arena scope growing would
/// move it into the arena, which is reset when the scope ends. `fits` turns false
/// (and the rest is dropped) when a piece does not fit its spare capacity.
struct Stage<'b> {
    buf: &'b mut Vec<u8>,
    fits: bool,
}

impl Sink for Stage<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if self.fits && self.buf.capacity() - self.buf.len() >= bytes.len() {
            self.buf.extend_from_slice(bytes); // within capacity: no allocation
        } else {
            self.fits = false;
        }
    }
}

/// Bytes staged before each BLAKE2b update: a multiple of its 128-byte block, so
/// full flushes compress straight from the stage.
const STAGE: usize = 1024;

/// A BLAKE2b-128 state fed through a stack buffer.
struct Feed {
    state: blake2b_simd::State,
    stage: [u8; STAGE],
    len: usize,
}

impl Feed {
    fn new() -> Self {
        Self {
            state: blake2b_simd::Params::new().hash_length(16).to_state(),
            stage: [0; STAGE],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.state.update(&self.stage[..self.len]);
        self.len = 0;
    }

    fn finish(mut self) -> [u8; 16] {
        self.flush();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(self.state.finalize().as_bytes());
        digest
    }
}

impl Sink for Feed {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > STAGE {
            self.flush();
            if bytes.len() >= STAGE {
                self.state.update(bytes);
                return;
            }
        }
        self.stage[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn byte(&mut self, b: u8) {
        if self.len == STAGE {
            self.flush();
        }
        self.stage[self.len] = b;
        self.len += 1;
    }
}

/// Whether each code parses, run exactly as [`digest_batch`] runs the parse (same
/// threads, arena, nesting check) but with no walk and no digest: the benchmark's
/// floor for the hash.
pub fn parse_batch<T: AsRef<str> + Sync>(codes: &[T], threads: usize) -> Vec<bool> {
    let parse = |code: &str| {
        let Ok(parsed) = ruff_python_parser::parse_module(code) else {
            return false;
        };
        if arena::in_scope() && !arena::spilled() {
            std::mem::forget(parsed); // as in `ast_digest`
        }
        true
    };
    // SAFETY: as in `digest_batch` (the same parse, no walk).
    unsafe { map_in_arenas(codes, threads, false, parse) }
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(2 * digest.len());
    for &b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    hex
}

/// BLAKE2b with a 16-byte digest, as hex.
pub fn hash_text(text: &str) -> String {
    // blake2b_simd picks AVX2 at run time; same digest as hashlib.blake2b(digest_size=16).
    let digest = blake2b_simd::Params::new()
        .hash_length(16)
        .hash(text.as_bytes());
    hex(digest.as_bytes())
}

/// Append the decimal digits of `n` (the hot path writes many small counts and ids;
/// `write!` costs a formatter call per number).
fn push_decimal(out: &mut String, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: only ASCII digits were written to `buf[i..]`.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) });
}

/// Append the lower-case hex digits of `v` (as `{v:x}` would, without a formatter).
fn push_hex(out: &mut String, mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = HEX[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    // SAFETY: only ASCII hex digits were written to `buf[i..]`.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) });
}

/// Append a string field as `'len:text`.
fn push_literal_str(out: &mut String, s: &str) {
    out.push('\'');
    push_decimal(out, char_count(s));
    out.push(':');
    out.push_str(s);
}

/// Number of `char`s in `s` (what Python's `len` gives), fast for ASCII.
fn char_count(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

fn deeper(depth: usize) -> Result<usize, Unhashable> {
    if depth >= MAX_DEPTH {
        Err(Unhashable::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

/// Id of a name that keeps its spelling.
const UNNUMBERED: u32 = u32::MAX;

/// A renameable name met in the walk, in order of first appearance.
struct Slot<'a> {
    name: &'a str,
    /// Bound somewhere in the unit (parameter, target, def/class, capture, ...).
    bound: bool,
    /// Declared `global`/`nonlocal`, bound by an import, or kept by `include_name`.
    kept: bool,
}

/// Writes the normal form (spec step 6 of `ast_reference.py`).
struct Writer<'a> {
    /// Index into `table` of every name seen.
    slots: FxHashMap<&'a str, u32>,
    /// Names in order of first appearance, which is the order of their `$n` ids.
    table: Vec<Slot<'a>>,
    /// Where in `out` a name goes, and which one (offsets ascending).
    gaps: Vec<(u32, u32)>,
    out: String,
    nodes: usize,
}

fn operator_name(op: Operator) -> &'static str {
    match op {
        Operator::Add => "Add",
        Operator::Sub => "Sub",
        Operator::Mult => "Mult",
        Operator::MatMult => "MatMult",
        Operator::Div => "Div",
        Operator::Mod => "Mod",
        Operator::Pow => "Pow",
        Operator::LShift => "LShift",
        Operator::RShift => "RShift",
        Operator::BitOr => "BitOr",
        Operator::BitXor => "BitXor",
        Operator::BitAnd => "BitAnd",
        Operator::FloorDiv => "FloorDiv",
    }
}

fn cmp_name(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "Eq",
        CmpOp::NotEq => "NotEq",
        CmpOp::Lt => "Lt",
        CmpOp::LtE => "LtE",
        CmpOp::Gt => "Gt",
        CmpOp::GtE => "GtE",
        CmpOp::Is => "Is",
        CmpOp::IsNot => "IsNot",
        CmpOp::In => "In",
        CmpOp::NotIn => "NotIn",
    }
}

/// An expression context field with the separators around it (one copy).
fn ctx_field(ctx: ExprContext) -> &'static str {
    match ctx {
        ExprContext::Load | ExprContext::Invalid => ",L,",
        ExprContext::Store => ",S,",
        ExprContext::Del => ",D,",
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside
/// `1e-4 <= |x| < 1e16`, and `.0` on integral values in fixed form.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` prints the shortest round-trip digits, e.g. `1.2345e-5`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let decpt = exp + 1; // value = 0.DIGITS × 10^decpt
    let n = digits.len() as i32;
    if decpt <= -4 || decpt > 16 {
        let rest = &digits[1..];
        let dot = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{sign}{}{dot}e{esign}{:02}", &digits[..1], e.abs())
    } else if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        format!("{sign}{a}.{b}")
    }
}

/// Lower-case hex of an integer literal's value, whatever base it was written in.
fn int_hex(i: &ast::Int) -> String {
    if let Some(v) = i.as_u64() {
        return format!("{v:x}");
    }
    // Big literals keep their source token: parse it in its base into 32-bit limbs.
    let token = i.to_string().replace('_', "");
    let lower = token.to_ascii_lowercase();
    let (radix, digits) = match lower.get(..2) {
        Some("0x") => (16, &lower[2..]),
        Some("0o") => (8, &lower[2..]),
        Some("0b") => (2, &lower[2..]),
        _ => (10, lower.as_str()),
    };
    let mut limbs: Vec<u32> = vec![0]; // little-endian
    for c in digits.chars() {
        let Some(dv) = c.to_digit(radix) else {
            continue;
        };
        let mut carry = u64::from(dv);
        for limb in &mut limbs {
            let v = u64::from(*limb) * u64::from(radix) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut hex = String::new();
    for (n, limb) in limbs.iter().rev().enumerate() {
        if n == 0 {
            let _ = write!(hex, "{limb:x}");
        } else {
            let _ = write!(hex, "{limb:08x}");
        }
    }
    hex
}

fn is_docstring(s: &Stmt) -> bool {
    matches!(s, Stmt::Expr(e) if matches!(*e.value, Expr::StringLiteral(_)))
}

impl<'a> Writer<'a> {
    /// Start a node: `kind` is its name with the opening parenthesis, one copy.
    #[inline]
    fn open(&mut self, kind: &str) {
        self.nodes += 1;
        self.out.push_str(kind);
    }

    #[inline]
    fn close(&mut self) {
        self.out.push(')');
    }

    #[inline]
    fn sep(&mut self) {
        self.out.push(',');
    }

    #[inline]
    fn slot(&mut self, name: &'a str) -> u32 {
        let next = self.table.len() as u32;
        let slot = *self.slots.entry(name).or_insert(next);
        if slot == next {
            self.table.push(Slot {
                name,
                bound: false,
                kept: false,
            });
        }
        slot
    }

    /// A field holding a renameable name: a gap filled by [`Self::fill_gaps`].
    #[inline]
    fn name(&mut self, name: &'a str) {
        let slot = self.slot(name);
        self.gaps.push((self.out.len() as u32, slot));
    }

    /// A name at a place that binds it.
    #[inline]
    fn bound_name(&mut self, name: &'a str) {
        let slot = self.slot(name);
        self.table[slot as usize].bound = true;
        self.gaps.push((self.out.len() as u32, slot));
    }

    /// A name that keeps its spelling wherever it appears in the unit.
    fn keep(&mut self, name: &'a str) {
        let slot = self.slot(name);
        self.table[slot as usize].kept = true;
    }

    /// The `$n` id of each slot: bound names not kept, numbered by first appearance.
    fn ids(&self) -> Vec<u32> {
        let mut next_id = 0u32;
        self.table
            .iter()
            .map(|s| {
                if s.bound && !s.kept {
                    next_id += 1;
                    next_id - 1
                } else {
                    UNNUMBERED
                }
            })
            .collect()
    }

    /// Write the form to `sink` with every gap filled: bound names not kept become
    /// `$0, $1, ...` by first appearance; all others keep their spelling as `'len:name`.
    fn emit(&self, sink: &mut impl Sink) {
        let ids = self.ids();
        let out = self.out.as_bytes();
        let mut done = 0;
        for &(at, slot) in &self.gaps {
            let at = at as usize;
            sink.put(&out[done..at]);
            done = at;
            let name = self.table[slot as usize].name;
            match ids[slot as usize] {
                UNNUMBERED => {
                    sink.byte(b'\'');
                    sink.decimal(char_count(name));
                    sink.byte(b':');
                    sink.put(name.as_bytes());
                }
                id => {
                    sink.byte(b'$');
                    sink.decimal(id as usize);
                }
            }
        }
        sink.put(&out[done..]);
    }

    /// The form as text.
    fn fill_gaps(&self) -> String {
        let mut text = Vec::with_capacity(self.out.len() + 8 * self.gaps.len());
        self.emit(&mut text);
        String::from_utf8(text).expect("the form is pieces of str")
    }

    /// BLAKE2b-128 of [`Self::fill_gaps`]'s text, staged through a small buffer
    /// instead of materialising the whole text (one `update` per filled gap cost more
    /// than the copy it saved).
    fn digest(&self) -> [u8; 16] {
        let mut feed = Feed::new();
        self.emit(&mut feed);
        feed.finish()
    }

    /// A plain string field (attribute, keyword, module name): `'len:text`.
    fn literal_str(&mut self, s: &str) {
        push_literal_str(&mut self.out, s);
    }

    fn int_field(&mut self, v: i64) {
        self.out.push('#');
        if v < 0 {
            self.out.push('-');
        }
        push_decimal(&mut self.out, v.unsigned_abs() as usize);
    }

    #[inline]
    fn none(&mut self) {
        self.out.push('~');
    }

    fn body(&mut self, body: &'a [Stmt], owner: bool, d: usize) -> Result<(), Unhashable> {
        let skip = usize::from(owner && body.first().is_some_and(is_docstring));
        self.stmt_list(&body[skip..], d)
    }

    fn stmt_list(&mut self, body: &'a [Stmt], d: usize) -> Result<(), Unhashable> {
        self.out.push('[');
        for s in body {
            self.stmt(s, d)?;
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    fn expr_list(&mut self, exprs: &'a [Expr], d: usize) -> Result<(), Unhashable> {
        self.out.push('[');
        for e in exprs {
            self.expr(e, d)?;
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    fn opt_expr(&mut self, e: Option<&'a Expr>, d: usize) -> Result<(), Unhashable> {
        if let Some(e) = e {
            self.expr(e, d)
        } else {
            self.none();
            Ok(())
        }
    }

    /// A field holding a bindable identifier (or `~`).
    fn opt_name(&mut self, n: Option<&'a ast::Identifier>) {
        match n {
            Some(n) => self.bound_name(n.id.as_str()),
            None => self.none(),
        }
    }

    fn arg(&mut self, p: &'a ast::Parameter) {
        self.open("arg(");
        self.bound_name(p.name.id.as_str());
        self.sep();
        self.close();
    }

    fn arguments(&mut self, p: Option<&'a Parameters>, d: usize) -> Result<(), Unhashable> {
        self.open("arguments(");
        let empty: &[ast::ParameterWithDefault] = &[];
        let (posonly, args, kwonly) = p.map_or((empty, empty, empty), |p| {
            (&p.posonlyargs[..], &p.args[..], &p.kwonlyargs[..])
        });
        for group in [posonly, args] {
            self.out.push('[');
            for pd in group {
                self.arg(&pd.parameter);
                self.sep();
            }
            self.out.push(']');
            self.sep();
        }
        match p.and_then(|p| p.vararg.as_deref()) {
            Some(v) => self.arg(v),
            None => self.none(),
        }
        self.sep();
        self.out.push('[');
        for pd in kwonly {
            self.arg(&pd.parameter);
            self.sep();
        }
        self.out.push(']');
        self.sep();
        self.out.push('[');
        for pd in kwonly {
            self.opt_expr(pd.default.as_deref(), d)?;
            self.sep();
        }
        self.out.push(']');
        self.sep();
        match p.and_then(|p| p.kwarg.as_deref()) {
            Some(v) => self.arg(v),
            None => self.none(),
        }
        self.sep();
        self.out.push('[');
        for pd in posonly.iter().chain(args) {
            if let Some(default) = &pd.default {
                self.expr(default, d)?;
                self.sep();
            }
        }
        self.out.push(']');
        self.sep();
        self.close();
        Ok(())
    }

    fn keywords(&mut self, kws: &'a [ast::Keyword], d: usize) -> Result<(), Unhashable> {
        self.out.push('[');
        for k in kws {
            self.open("keyword(");
            match &k.arg {
                Some(a) => self.literal_str(a.id.as_str()),
                None => self.none(),
            }
            self.sep();
            self.expr(&k.value, d)?;
            self.sep();
            self.close();
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    fn decorators(&mut self, decs: &'a [ast::Decorator], d: usize) -> Result<(), Unhashable> {
        self.out.push('[');
        for dec in decs {
            self.expr(&dec.expression, d)?;
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    /// `type_params` is written only when present, so 3.11 and 3.12 forms agree.
    fn type_params(&mut self, tp: Option<&'a ast::TypeParams>, d: usize) -> Result<(), Unhashable> {
        let Some(tp) = tp.filter(|t| !t.type_params.is_empty()) else {
            return Ok(());
        };
        self.out.push('[');
        for t in &tp.type_params {
            match t {
                TypeParam::TypeVar(v) => {
                    self.open("TypeVar(");
                    self.bound_name(v.name.id.as_str());
                    self.sep();
                    self.opt_expr(v.bound.as_deref(), d)?;
                }
                TypeParam::ParamSpec(v) => {
                    self.open("ParamSpec(");
                    self.bound_name(v.name.id.as_str());
                }
                TypeParam::TypeVarTuple(v) => {
                    self.open("TypeVarTuple(");
                    self.bound_name(v.name.id.as_str());
                }
            }
            self.sep();
            self.close();
            self.sep();
        }
        self.out.push(']');
        self.sep();
        Ok(())
    }

    fn alias_list(&mut self, names: &'a [ast::Alias]) {
        self.out.push('[');
        for a in names {
            self.open("alias(");
            self.literal_str(a.name.id.as_str());
            self.sep();
            match &a.asname {
                Some(n) => self.literal_str(n.id.as_str()),
                None => self.none(),
            }
            self.sep();
            self.close();
            self.sep();
        }
        self.out.push(']');
    }

    fn ident_list(&mut self, names: &'a [ast::Identifier]) {
        self.out.push('[');
        for n in names {
            self.literal_str(n.id.as_str());
            self.sep();
        }
        self.out.push(']');
    }

    /// `If` with ruff's elif/else clauses folded back into nested `orelse` lists.
    fn if_chain(
        &mut self,
        test: &'a Expr,
        body: &'a [Stmt],
        rest: &'a [ast::ElifElseClause],
        d: usize,
    ) -> Result<(), Unhashable> {
        let d = deeper(d)?;
        self.open("If(");
        self.expr(test, d)?;
        self.sep();
        self.stmt_list(body, d)?;
        self.sep();
        match rest.split_first() {
            None => self.out.push_str("[]"),
            Some((clause, more)) => match &clause.test {
                None => self.stmt_list(&clause.body, d)?,
                Some(t) => {
                    self.out.push('[');
                    self.if_chain(t, &clause.body, more, d)?;
                    self.sep();
                    self.out.push(']');
                }
            },
        }
        self.sep();
        self.close();
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    fn stmt(&mut self, s: &'a Stmt, depth: usize) -> Result<(), Unhashable> {
        let d = deeper(depth)?;
        match s {
            Stmt::FunctionDef(f) => {
                self.open(if f.is_async {
                    "AsyncFunctionDef("
                } else {
                    "FunctionDef("
                });
                self.bound_name(f.name.id.as_str());
                self.sep();
                self.arguments(Some(&f.parameters), d)?;
                self.sep();
                self.body(&f.body, true, d)?;
                self.sep();
                self.decorators(&f.decorator_list, d)?;
                self.sep();
                self.type_params(f.type_params.as_deref(), d)?;
            }
            Stmt::ClassDef(c) => {
                self.open("ClassDef(");
                self.bound_name(c.name.id.as_str());
                self.sep();
                let (args, kws): (&[Expr], &[ast::Keyword]) = c
                    .arguments
                    .as_deref()
                    .map_or((&[], &[]), |a| (&a.args[..], &a.keywords[..]));
                self.expr_list(args, d)?;
                self.sep();
                self.keywords(kws, d)?;
                self.sep();
                self.body(&c.body, true, d)?;
                self.sep();
                self.decorators(&c.decorator_list, d)?;
                self.sep();
                self.type_params(c.type_params.as_deref(), d)?;
            }
            Stmt::Return(r) => {
                self.open("Return(");
                self.opt_expr(r.value.as_deref(), d)?;
                self.sep();
            }
            Stmt::Delete(x) => {
                self.open("Delete(");
                self.expr_list(&x.targets, d)?;
                self.sep();
            }
            Stmt::TypeAlias(t) => {
                self.open("TypeAlias(");
                self.expr(&t.name, d)?;
                self.sep();
                self.type_params(t.type_params.as_deref(), d)?;
                self.expr(&t.value, d)?;
                self.sep();
            }
            Stmt::Assign(a) => {
                self.open("Assign(");
                self.expr_list(&a.targets, d)?;
                self.sep();
                self.expr(&a.value, d)?;
                self.sep();
            }
            Stmt::AugAssign(a) => {
                self.open("AugAssign(");
                self.expr(&a.target, d)?;
                self.sep();
                self.operator(operator_name(a.op));
                self.sep();
                self.expr(&a.value, d)?;
                self.sep();
            }
            Stmt::AnnAssign(a) => {
                self.open("AnnAssign(");
                self.expr(&a.target, d)?;
                self.sep();
                self.opt_expr(a.value.as_deref(), d)?;
                self.sep();
                self.int_field(i64::from(a.simple));
                self.sep();
            }
            Stmt::For(f) => {
                self.open(if f.is_async { "AsyncFor(" } else { "For(" });
                self.expr(&f.target, d)?;
                self.sep();
                self.expr(&f.iter, d)?;
                self.sep();
                self.stmt_list(&f.body, d)?;
                self.sep();
                self.stmt_list(&f.orelse, d)?;
                self.sep();
            }
            Stmt::While(w) => {
                self.open("While(");
                self.expr(&w.test, d)?;
                self.sep();
                self.stmt_list(&w.body, d)?;
                self.sep();
                self.stmt_list(&w.orelse, d)?;
                self.sep();
            }
            Stmt::If(i) => return self.if_chain(&i.test, &i.body, &i.elif_else_clauses, depth),
            Stmt::With(w) => {
                self.open(if w.is_async { "AsyncWith(" } else { "With(" });
                self.out.push('[');
                for item in &w.items {
                    self.open("withitem(");
                    self.expr(&item.context_expr, d)?;
                    self.sep();
                    self.opt_expr(item.optional_vars.as_deref(), d)?;
                    self.sep();
                    self.close();
                    self.sep();
                }
                self.out.push(']');
                self.sep();
                self.stmt_list(&w.body, d)?;
                self.sep();
            }
            Stmt::Match(m) => {
                self.open("Match(");
                self.expr(&m.subject, d)?;
                self.sep();
                self.out.push('[');
                for c in &m.cases {
                    self.open("match_case(");
                    self.pattern(&c.pattern, d)?;
                    self.sep();
                    self.opt_expr(c.guard.as_deref(), d)?;
                    self.sep();
                    self.stmt_list(&c.body, d)?;
                    self.sep();
                    self.close();
                    self.sep();
                }
                self.out.push(']');
                self.sep();
            }
            Stmt::Raise(r) => {
                self.open("Raise(");
                self.opt_expr(r.exc.as_deref(), d)?;
                self.sep();
                self.opt_expr(r.cause.as_deref(), d)?;
                self.sep();
            }
            Stmt::Try(t) => {
                self.open(if t.is_star { "TryStar(" } else { "Try(" });
                self.stmt_list(&t.body, d)?;
                self.sep();
                self.out.push('[');
                for ExceptHandler::ExceptHandler(h) in &t.handlers {
                    self.open("ExceptHandler(");
                    self.opt_expr(h.type_.as_deref(), d)?;
                    self.sep();
                    self.opt_name(h.name.as_ref());
                    self.sep();
                    self.stmt_list(&h.body, d)?;
                    self.sep();
                    self.close();
                    self.sep();
                }
                self.out.push(']');
                self.sep();
                self.stmt_list(&t.orelse, d)?;
                self.sep();
                self.stmt_list(&t.finalbody, d)?;
                self.sep();
            }
            Stmt::Assert(a) => {
                self.open("Assert(");
                self.expr(&a.test, d)?;
                self.sep();
                self.opt_expr(a.msg.as_deref(), d)?;
                self.sep();
            }
            Stmt::Import(i) => {
                for a in &i.names {
                    self.keep(a.asname.as_ref().map_or_else(
                        || a.name.id.as_str().split('.').next().unwrap_or(""),
                        |n| n.id.as_str(),
                    ));
                }
                self.open("Import(");
                self.alias_list(&i.names);
                self.sep();
            }
            Stmt::ImportFrom(i) => {
                for a in &i.names {
                    self.keep(a.asname.as_ref().unwrap_or(&a.name).id.as_str());
                }
                self.open("ImportFrom(");
                match &i.module {
                    Some(m) => self.literal_str(m.id.as_str()),
                    None => self.none(),
                }
                self.sep();
                self.alias_list(&i.names);
                self.sep();
                self.int_field(i64::from(i.level));
                self.sep();
            }
            Stmt::Global(g) => {
                for n in &g.names {
                    self.keep(n.id.as_str());
                }
                self.open("Global(");
                self.ident_list(&g.names);
                self.sep();
            }
            Stmt::Nonlocal(g) => {
                for n in &g.names {
                    self.keep(n.id.as_str());
                }
                self.open("Nonlocal(");
                self.ident_list(&g.names);
                self.sep();
            }
            Stmt::Expr(e) => {
                self.open("Expr(");
                self.expr(&e.value, d)?;
                self.sep();
            }
            Stmt::Pass(_) => self.open("Pass("),
            Stmt::Break(_) => self.open("Break("),
            Stmt::Continue(_) => self.open("Continue("),
            Stmt::IpyEscapeCommand(_) => return Err(Unhashable::Unsupported),
        }
        self.close();
        Ok(())
    }

    #[inline]
    fn operator(&mut self, name: &str) {
        self.nodes += 1;
        self.out.push_str(name);
    }

    fn constant_str(&mut self, s: &str) {
        self.open("Constant(");
        self.out.push('s');
        push_decimal(&mut self.out, char_count(s));
        self.out.push(':');
        self.out.push_str(s);
        self.sep();
        self.close();
    }

    fn constant_raw(&mut self, token: &str) {
        self.open("Constant(");
        self.out.push_str(token);
        self.sep();
        self.close();
    }

    fn comprehensions(
        &mut self,
        gens: &'a [ast::Comprehension],
        d: usize,
    ) -> Result<(), Unhashable> {
        self.out.push('[');
        for g in gens {
            self.open("comprehension(");
            self.expr(&g.target, d)?;
            self.sep();
            self.expr(&g.iter, d)?;
            self.sep();
            self.expr_list(&g.ifs, d)?;
            self.sep();
            self.int_field(i64::from(g.is_async));
            self.sep();
            self.close();
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    /// Append f-string elements as `JoinedStr` values: literal runs merged, empty dropped.
    fn joined_values(
        &mut self,
        elements: &'a [InterpolatedStringElement],
        pending: &mut String,
        d: usize,
    ) -> Result<(), Unhashable> {
        for el in elements {
            match el {
                InterpolatedStringElement::Literal(l) => pending.push_str(&l.value),
                InterpolatedStringElement::Interpolation(i) => {
                    let mut conversion = i.conversion;
                    if let Some(debug) = &i.debug_text {
                        // CPython writes `{x=}` as the text "x=" then the value,
                        // repr'd unless a conversion or format spec is given.
                        pending.push_str(debug.as_str());
                        if conversion == ConversionFlag::None && i.format_spec.is_none() {
                            conversion = ConversionFlag::Repr;
                        }
                    }
                    self.flush_literal(pending);
                    self.open("FormattedValue(");
                    self.expr(&i.expression, d)?;
                    self.sep();
                    self.int_field(i64::from(conversion as i8));
                    self.sep();
                    match &i.format_spec {
                        Some(spec) => {
                            let d2 = deeper(d)?;
                            self.open("JoinedStr(");
                            self.out.push('[');
                            let mut inner = String::new();
                            self.joined_values(&spec.elements, &mut inner, d2)?;
                            self.flush_literal(&mut inner);
                            self.out.push(']');
                            self.sep();
                            self.close();
                        }
                        None => self.none(),
                    }
                    self.sep();
                    self.close();
                    self.sep();
                }
            }
        }
        Ok(())
    }

    fn flush_literal(&mut self, pending: &mut String) {
        if !pending.is_empty() {
            let text = std::mem::take(pending);
            self.constant_str(&text);
            self.sep();
        }
    }

    #[allow(clippy::too_many_lines)]
    fn expr(&mut self, e: &'a Expr, depth: usize) -> Result<(), Unhashable> {
        let d = deeper(depth)?;
        match e {
            Expr::Name(n) => {
                self.open("Name(");
                if matches!(n.ctx, ExprContext::Load) {
                    self.name(n.id.as_str());
                } else {
                    self.bound_name(n.id.as_str());
                }
                self.out.push_str(ctx_field(n.ctx));
            }
            Expr::BoolOp(b) => {
                self.open("BoolOp(");
                self.operator(match b.op {
                    BoolOp::And => "And",
                    BoolOp::Or => "Or",
                });
                self.sep();
                self.expr_list(&b.values, d)?;
                self.sep();
            }
            Expr::Named(n) => {
                self.open("NamedExpr(");
                self.expr(&n.target, d)?;
                self.sep();
                self.expr(&n.value, d)?;
                self.sep();
            }
            Expr::BinOp(b) => {
                self.open("BinOp(");
                self.expr(&b.left, d)?;
                self.sep();
                self.operator(operator_name(b.op));
                self.sep();
                self.expr(&b.right, d)?;
                self.sep();
            }
            Expr::UnaryOp(u) => {
                self.open("UnaryOp(");
                self.operator(match u.op {
                    UnaryOp::Invert => "Invert",
                    UnaryOp::Not => "Not",
                    UnaryOp::UAdd => "UAdd",
                    UnaryOp::USub => "USub",
                });
                self.sep();
                self.expr(&u.operand, d)?;
                self.sep();
            }
            Expr::Lambda(l) => {
                self.open("Lambda(");
                self.arguments(l.parameters.as_deref(), d)?;
                self.sep();
                self.expr(&l.body, d)?;
                self.sep();
            }
            Expr::If(i) => {
                self.open("IfExp(");
                self.expr(&i.test, d)?;
                self.sep();
                self.expr(&i.body, d)?;
                self.sep();
                self.expr(&i.orelse, d)?;
                self.sep();
            }
            Expr::Dict(x) => {
                self.open("Dict(");
                self.out.push('[');
                for item in &x.items {
                    self.opt_expr(item.key.as_ref(), d)?;
                    self.sep();
                }
                self.out.push(']');
                self.sep();
                self.out.push('[');
                for item in &x.items {
                    self.expr(&item.value, d)?;
                    self.sep();
                }
                self.out.push(']');
                self.sep();
            }
            Expr::Set(x) => {
                self.open("Set(");
                self.expr_list(&x.elts, d)?;
                self.sep();
            }
            Expr::ListComp(x) => {
                self.open("ListComp(");
                self.expr(&x.elt, d)?;
                self.sep();
                self.comprehensions(&x.generators, d)?;
                self.sep();
            }
            Expr::SetComp(x) => {
                self.open("SetComp(");
                self.expr(&x.elt, d)?;
                self.sep();
                self.comprehensions(&x.generators, d)?;
                self.sep();
            }
            Expr::Generator(x) => {
                self.open("GeneratorExp(");
                self.expr(&x.elt, d)?;
                self.sep();
                self.comprehensions(&x.generators, d)?;
                self.sep();
            }
            Expr::DictComp(x) => {
                self.open("DictComp(");
                self.opt_expr(x.key.as_deref(), d)?;
                self.sep();
                self.expr(&x.value, d)?;
                self.sep();
                self.comprehensions(&x.generators, d)?;
                self.sep();
            }
            Expr::Await(x) => {
                self.open("Await(");
                self.expr(&x.value, d)?;
                self.sep();
            }
            Expr::Yield(x) => {
                self.open("Yield(");
                self.opt_expr(x.value.as_deref(), d)?;
                self.sep();
            }
            Expr::YieldFrom(x) => {
                self.open("YieldFrom(");
                self.expr(&x.value, d)?;
                self.sep();
            }
            Expr::Compare(c) => {
                self.open("Compare(");
                self.expr(&c.left, d)?;
                self.sep();
                self.out.push('[');
                for op in &c.ops {
                    self.operator(cmp_name(*op));
                    self.sep();
                }
                self.out.push(']');
                self.sep();
                self.expr_list(&c.comparators, d)?;
                self.sep();
            }
            Expr::Call(c) => {
                self.open("Call(");
                self.expr(&c.func, d)?;
                self.sep();
                self.expr_list(&c.arguments.args, d)?;
                self.sep();
                self.keywords(&c.arguments.keywords, d)?;
                self.sep();
            }
            Expr::FString(f) => {
                self.open("JoinedStr(");
                self.out.push('[');
                let mut pending = String::new();
                for part in &f.value {
                    match part {
                        ast::FStringPart::Literal(l) => pending.push_str(&l.value),
                        ast::FStringPart::FString(fs) => {
                            self.joined_values(&fs.elements, &mut pending, d)?;
                        }
                    }
                }
                self.flush_literal(&mut pending);
                self.out.push(']');
                self.sep();
            }
            Expr::StringLiteral(s) => {
                self.constant_str(s.value.to_str());
                return Ok(());
            }
            Expr::BytesLiteral(b) => {
                let mut token = String::from("b");
                for byte in b.value.bytes() {
                    let _ = write!(token, "{byte:02x}");
                }
                self.constant_raw(&token);
                return Ok(());
            }
            Expr::NumberLiteral(n) => {
                if let Number::Int(i) = &n.value {
                    if let Some(v) = i.as_u64() {
                        // The common case, written in place: no token string.
                        self.open("Constant(");
                        self.out.push('i');
                        push_hex(&mut self.out, v);
                        self.sep();
                        self.close();
                        return Ok(());
                    }
                }
                let token = match &n.value {
                    Number::Int(i) => format!("i{}", int_hex(i)),
                    Number::Float(f) => format!("f{}", python_float_repr(*f)),
                    Number::Complex { imag, .. } => format!("j{}", python_float_repr(*imag)),
                };
                self.constant_raw(&token);
                return Ok(());
            }
            Expr::BooleanLiteral(b) => {
                self.constant_raw(if b.value { "T" } else { "F" });
                return Ok(());
            }
            Expr::NoneLiteral(_) => {
                self.constant_raw("N");
                return Ok(());
            }
            Expr::EllipsisLiteral(_) => {
                self.constant_raw("E");
                return Ok(());
            }
            Expr::Attribute(a) => {
                self.open("Attribute(");
                self.expr(&a.value, d)?;
                self.sep();
                self.literal_str(a.attr.id.as_str());
                self.out.push_str(ctx_field(a.ctx));
            }
            Expr::Subscript(s) => {
                self.open("Subscript(");
                self.expr(&s.value, d)?;
                self.sep();
                self.expr(&s.slice, d)?;
                self.out.push_str(ctx_field(s.ctx));
            }
            Expr::Starred(s) => {
                self.open("Starred(");
                self.expr(&s.value, d)?;
                self.out.push_str(ctx_field(s.ctx));
            }
            Expr::List(l) => {
                self.open("List(");
                self.expr_list(&l.elts, d)?;
                self.out.push_str(ctx_field(l.ctx));
            }
            Expr::Tuple(t) => {
                self.open("Tuple(");
                self.expr_list(&t.elts, d)?;
                self.out.push_str(ctx_field(t.ctx));
            }
            Expr::Slice(s) => {
                self.open("Slice(");
                self.opt_expr(s.lower.as_deref(), d)?;
                self.sep();
                self.opt_expr(s.upper.as_deref(), d)?;
                self.sep();
                self.opt_expr(s.step.as_deref(), d)?;
                self.sep();
            }
            Expr::TString(_) | Expr::IpyEscapeCommand(_) => return Err(Unhashable::Unsupported),
        }
        self.close();
        Ok(())
    }

    fn pattern_list(&mut self, ps: &'a [Pattern], d: usize) -> Result<(), Unhashable> {
        self.out.push('[');
        for p in ps {
            self.pattern(p, d)?;
            self.sep();
        }
        self.out.push(']');
        Ok(())
    }

    fn pattern(&mut self, p: &'a Pattern, depth: usize) -> Result<(), Unhashable> {
        let d = deeper(depth)?;
        match p {
            Pattern::MatchValue(v) => {
                self.open("MatchValue(");
                self.expr(&v.value, d)?;
            }
            Pattern::MatchSingleton(s) => {
                self.open("MatchSingleton(");
                self.out.push(match s.value {
                    ast::Singleton::None => '~',
                    ast::Singleton::True => 'T',
                    ast::Singleton::False => 'F',
                });
            }
            Pattern::MatchSequence(s) => {
                self.open("MatchSequence(");
                self.pattern_list(&s.patterns, d)?;
            }
            Pattern::MatchMapping(m) => {
                self.open("MatchMapping(");
                self.expr_list(&m.keys, d)?;
                self.sep();
                self.pattern_list(&m.patterns, d)?;
                self.sep();
                self.opt_name(m.rest.as_ref());
            }
            Pattern::MatchClass(c) => {
                self.open("MatchClass(");
                self.expr(&c.cls, d)?;
                self.sep();
                self.pattern_list(&c.arguments.patterns, d)?;
                self.sep();
                self.out.push('[');
                for k in &c.arguments.keywords {
                    self.literal_str(k.attr.id.as_str());
                    self.sep();
                }
                self.out.push(']');
                self.sep();
                self.out.push('[');
                for k in &c.arguments.keywords {
                    self.pattern(&k.pattern, d)?;
                    self.sep();
                }
                self.out.push(']');
            }
            Pattern::MatchStar(s) => {
                self.open("MatchStar(");
                self.opt_name(s.name.as_ref());
            }
            Pattern::MatchAs(a) => {
                self.open("MatchAs(");
                match &a.pattern {
                    Some(p) => self.pattern(p, d)?,
                    None => self.none(),
                }
                self.sep();
                self.opt_name(a.name.as_ref());
            }
            Pattern::MatchOr(o) => {
                self.open("MatchOr(");
                self.pattern_list(&o.patterns, d)?;
            }
        }
        self.sep();
        self.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(code: &str) -> String {
        ast_hash(code, false).unwrap()
    }

    #[test]
    fn renamed_and_reformatted_copies_collide() {
        let a = "def total(xs):\n    \"\"\"Sum.\"\"\"\n    acc = 0\n    for x in xs:\n        acc += x  # add\n    return acc\n";
        let b = "def add_all(values: list[int]) -> int:\n    s = 0\n    for v in values: s += v\n    return s";
        assert_eq!(h(a), h(b));
        assert_ne!(ast_hash(a, true).unwrap(), ast_hash(b, true).unwrap());
        assert_eq!(h("def f(): return 'a' \"b\""), h("def g(): return 'ab'"));
        assert_eq!(h("def f(): return 0x10"), h("def f(): return 16"));
    }

    #[test]
    fn semantic_changes_do_not_collide() {
        let base = h("def f(a, b):\n    return max(a, b) + 1\n");
        assert_ne!(base, h("def f(a, b):\n    return max(a, b) - 1\n"));
        assert_ne!(base, h("def f(a, b):\n    return max(a, b) + 2\n"));
        assert_ne!(base, h("def f(a, b):\n    return min(a, b) + 1\n"));
        assert_ne!(base, h("def f(a, b):\n    return max(b, a) + 1\n"));
    }

    #[test]
    fn float_repr_matches_python() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (f64::INFINITY, "inf"),
            (2.5e300, "2.5e+300"),
        ] {
            assert_eq!(python_float_repr(x), want);
        }
    }

    #[test]
    fn big_integers_in_any_base() {
        let f = |src: &str| normal_form(src, false).unwrap().text;
        assert_eq!(f("0xFFFFFFFFFFFFFFFFFF"), f("4722366482869645213695"));
        assert!(f(
            "0b1_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000"
        )
        .contains("i10000000000000000"));
    }

    #[test]
    fn batches_hash_as_one_code_at_a_time() {
        // Groups mixing codes without a hash, small forms (staged, hashed four at a
        // time) and a form too big for the stage (hashed on its own as it is written).
        let mut lines = String::new();
        for i in 0..3000 {
            let _ = writeln!(lines, "    x{i} = y + {i}");
        }
        let big = format!("def f(y):\n{lines}    return x1\n");
        assert!(normal_form(&big, false).unwrap().text.len() > STAGE_BYTES);
        let mut codes = vec!["def f(:\n".to_owned(), big.clone()];
        codes.extend((0..40).map(|i| format!("def g{i}(a):\n    return a + {i}\n")));
        codes.push(big);
        codes.push(String::new());
        for threads in [1, 2] {
            let batch = digest_batch(&codes, true, threads);
            assert_eq!(batch.len(), codes.len());
            for (code, got) in codes.iter().zip(&batch) {
                assert_eq!(*got, ast_digest(code, true).ok(), "{code:.40}");
            }
        }
        assert!(digest_batch(&codes[..1], false, 1)[0].is_none());
        assert!(digest_batch::<String>(&[], false, 1).is_empty());
    }

    #[test]
    fn syntax_errors_and_depth_are_refused() {
        assert_eq!(ast_hash("def f(:\n", false), Err(Unhashable::Syntax));
        let deep = format!("x = {}1{}", "[".repeat(3000), "]".repeat(3000));
        let r = crate::stack::on_big_stack(move || ast_hash(&deep, false));
        assert_eq!(r, Err(Unhashable::TooDeep));
    }
}
