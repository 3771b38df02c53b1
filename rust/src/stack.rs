//! Running parser work where deep nesting cannot overflow the stack.
//!
//! ruff's parser and our AST walks recurse once per nesting level, and Rust aborts
//! the whole process on a stack overflow, so untrusted text is parsed only on
//! threads with a large stack (reserved virtual memory: only touched pages cost
//! anything) and only after [`too_complex`] has bounded its nesting.

use std::sync::Mutex;

use rayon::prelude::*;
use ruff_python_ast::token::TokenKind;
use ruff_python_parser::{lexer, Mode};

/// Stack of every parsing thread.
pub const STACK_BYTES: usize = 512 << 20;

/// Texts up to this size cannot nest deeper than their length in bytes, which the
/// stack above holds at several KiB per level, so they skip the token scan.
const SCAN_ABOVE_BYTES: usize = 16 << 10;

/// Most tokens one logical line (statement) may hold; nesting within a statement
/// is bounded by its token count. CPython refuses far less nesting than this.
pub const MAX_LINE_TOKENS: usize = 50_000;

/// Deepest indentation accepted (CPython's own limit is 100 levels).
pub const MAX_INDENT: usize = 1_000;

/// Whether `source` could nest deeply enough to threaten the stack.
pub fn too_complex(source: &str) -> bool {
    if source.len() <= SCAN_ABOVE_BYTES {
        return false;
    }
    // The lexer is iterative (f-string nesting is an explicit stack), so this pass
    // is safe on anything.
    let mut lex = lexer::lex(source, Mode::Module);
    let (mut line_tokens, mut indent) = (0usize, 0usize);
    loop {
        match lex.next_token() {
            TokenKind::EndOfFile => return false,
            TokenKind::Newline => line_tokens = 0,
            TokenKind::Indent => indent += 1,
            TokenKind::Dedent => indent = indent.saturating_sub(1),
            _ => line_tokens += 1,
        }
        if line_tokens > MAX_LINE_TOKENS || indent > MAX_INDENT {
            return true;
        }
    }
}

/// The process's parser threads: one per core, each with [`STACK_BYTES`] of stack,
/// made on first use and kept. A thread made per call had cost ~0.15-0.2 ms of CPU
/// (mapping and unmapping its stack, clone, exit), ten times the parse of a small
/// answer. Keyed by process id: threads do not survive `fork`, so a forked child
/// makes its own pool (the parent's is left to the parent).
fn parse_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: Mutex<Option<(u32, &'static rayon::ThreadPool)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((owner, pool)) = *slot {
        if owner == pid {
            return Some(pool);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(STACK_BYTES)
        .thread_name(|i| format!("amr-parse-{i}"))
        .build()
        .ok()?;
    let pool: &'static rayon::ThreadPool = Box::leak(Box::new(pool));
    *slot = Some((pid, pool));
    Some(pool)
}

/// Run `f` on a thread with [`STACK_BYTES`] of stack and return its result: one of
/// the parser threads (the caller waits), or a fresh thread if none can be made.
pub fn on_big_stack<T: Send, F: FnOnce() -> T + Send>(f: F) -> T {
    match parse_pool() {
        Some(pool) => pool.install(f),
        None => on_fresh_thread(f),
    }
}

fn on_fresh_thread<T: Send, F: FnOnce() -> T + Send>(f: F) -> T {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("amr-parse".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, f)
            .expect("spawning a parser thread");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Run `work` on big-stack threads: serially on one parser thread (`threads == 1`),
/// across the parser threads (`0` or at least as many as there are), or on a pool
/// of exactly `threads` made for this call.
fn on_threads<R: Send>(
    threads: usize,
    serial: impl FnOnce() -> R + Send,
    parallel: impl FnOnce() -> R + Send,
) -> R {
    if threads == 1 {
        return on_big_stack(serial);
    }
    if let Some(pool) = parse_pool() {
        if threads == 0 || threads >= pool.current_num_threads() {
            return pool.install(parallel);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        })
        .stack_size(STACK_BYTES)
        .thread_name(|i| format!("amr-parse-{i}"))
        .build();
    match pool {
        Ok(pool) => pool.install(parallel),
        Err(_) => on_fresh_thread(serial),
    }
}

/// Map `f` over `items` on `threads` big-stack threads (`0`: one per core), in order.
pub fn map_batch<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = if items.len() < 2 { 1 } else { threads };
    on_threads(
        threads,
        || items.iter().map(&f).collect(),
        || items.par_iter().map(&f).collect(),
    )
}

/// [`map_batch`] with per-thread state: each worker makes one `S` with `init` and
/// passes it to every `f` it runs (e.g. an allocation arena reused across items).
pub fn map_batch_with<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &T) -> R + Sync + Send,
) -> Vec<R> {
    let threads = if items.len() < 2 { 1 } else { threads };
    on_threads(
        threads,
        || {
            let mut state = init();
            items.iter().map(|item| f(&mut state, item)).collect()
        },
        // `map_init` makes a state per split job, not per item: a few per thread.
        || items.par_iter().map_init(&init, &f).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_only_long_deep_statements() {
        assert!(!too_complex("x = 1\n"));
        let flat = (0..20_000)
            .map(|i| format!("x{i} = {i}\n"))
            .collect::<Vec<_>>()
            .concat();
        assert!(!too_complex(&flat));
        let deep = format!("x = {}1{}", "[".repeat(60_000), "]".repeat(60_000));
        assert!(too_complex(&deep));
        let unary = format!("x = {}1", "-".repeat(200_000));
        assert!(too_complex(&unary));
    }

    #[test]
    fn batches_keep_order() {
        let items: Vec<usize> = (0..1000).collect();
        assert_eq!(
            map_batch(&items, 2, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(map_batch(&items, 1, |x| x + 1)[999], 1000);
        for threads in [1, 2] {
            let out = map_batch_with(
                &items,
                threads,
                || 0usize,
                |seen, x| {
                    *seen += 1;
                    x * 3
                },
            );
            assert_eq!(out, items.iter().map(|x| x * 3).collect::<Vec<_>>());
        }
    }
}
