//! The model-free default embedder: feature hashing of code and docstring text.
//!
//! Features of one text, each hashed to a signed bucket of a fixed-size vector:
//!
//! - every identifier or word (Unicode letters, digits, `_`; not starting with a
//!   digit), lower-cased, weight 1; Python keywords get their own feature space
//!   (`k:`), so `for` the keyword and "for" the word do not add up;
//! - the sub-words of an identifier split at `_` and camelCase boundaries
//!   (`parseHTTPResponse` → parse, http, response), weight 1 each, in the same space
//!   as plain words so a docstring's "sort" meets an identifier's `sort_items`;
//! - character trigrams of each lower-cased identifier with `^`/`$` boundaries,
//!   weight 0.25, which tolerates spelling variants (`colour`/`color`);
//! - a short list of English stop words is skipped.
//!
//! The vector is L2-normalised; a text with no features maps to the zero vector.
//! Hashing is FNV-1a with a fixed seed and a splitmix finaliser: the output is
//! identical on every machine and run. The sign bit halves collision bias.

use rayon::prelude::*;

const KEYWORDS: [&str; 35] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

const STOP_WORDS: [&str; 24] = [
    "a", "an", "the", "of", "to", "in", "and", "or", "is", "are", "be", "it", "this", "that",
    "for", "on", "with", "as", "by", "at", "from", "if", "its", "then",
];

const TRIGRAM_WEIGHT: f32 = 0.25;

fn hash(space: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(space);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV's low bits are weak, and we use them for the bucket.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn add(vec: &mut [f32], space: u8, bytes: &[u8], weight: f32) {
    let h = hash(space, bytes);
    let bucket = ((h >> 1) % vec.len() as u64) as usize;
    vec[bucket] += if h & 1 == 0 { weight } else { -weight };
}

/// Split an identifier into lower-case sub-words at `_`, digits and case changes.
fn sub_words(ident: &str) -> Vec<String> {
    let chars: Vec<char> = ident.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c.is_numeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_uppercase() && !cur.is_empty() {
            let prev_lower = chars[i - 1].is_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = chars[i - 1].is_uppercase();
            // "parseHTTP" splits before H; "HTTPResponse" splits before R.
            if prev_lower || (prev_upper && next_lower) {
                words.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn add_identifier(vec: &mut [f32], ident: &str) {
    if KEYWORDS.contains(&ident) {
        add(vec, b'k', ident.as_bytes(), 1.0);
        return;
    }
    let lower = ident.to_lowercase();
    if STOP_WORDS.contains(&lower.as_str()) {
        return;
    }
    add(vec, b'w', lower.as_bytes(), 1.0);
    let subs = sub_words(ident);
    if subs.len() > 1 {
        for s in &subs {
            if !STOP_WORDS.contains(&s.as_str()) {
                add(vec, b'w', s.as_bytes(), 1.0);
            }
        }
    }
    let bounded: Vec<char> = std::iter::once('^')
        .chain(lower.trim_matches('_').chars())
        .chain(std::iter::once('$'))
        .collect();
    if bounded.len() >= 5 {
        let mut buf = String::new();
        for w in bounded.windows(3) {
            buf.clear();
            buf.extend(w);
            add(vec, b'g', buf.as_bytes(), TRIGRAM_WEIGHT);
        }
    }
}

/// Embed one text into `out` (length = dimension), L2-normalised.
pub fn embed_into(text: &str, out: &mut [f32]) {
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    let mut start: Option<usize> = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        let word_char = c == '_' || c.is_alphanumeric();
        match (start, word_char) {
            (None, true) if !c.is_numeric() => start = Some(i),
            (Some(s), false) => {
                add_identifier(out, &text[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in out.iter_mut() {
            *v /= norm;
        }
    }
}

/// Embed a batch in parallel: `texts.len() × dim`, row-major.
pub fn embed_batch(texts: &[String], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; texts.len() * dim];
    if dim == 0 {
        return out;
    }
    out.par_chunks_mut(dim)
        .zip(texts.par_iter())
        .for_each(|(row, t)| embed_into(t, row));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn splits_snake_and_camel_case() {
        assert_eq!(
            sub_words("parseHTTPResponse"),
            ["parse", "http", "response"]
        );
        assert_eq!(sub_words("sort_items_v2"), ["sort", "items", "v"]);
        assert_eq!(sub_words("__init__"), ["init"]);
    }

    #[test]
    fn unit_norm_deterministic_and_zero_for_no_features() {
        let v = embed_batch(
            &[
                "def sort_items(xs): return sorted(xs)".into(),
                "  ... 123 ".into(),
            ],
            64,
        );
        let n: f32 = v[..64].iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        assert!(v[64..].iter().all(|&x| x == 0.0));
        assert_eq!(
            v,
            embed_batch(
                &[
                    "def sort_items(xs): return sorted(xs)".into(),
                    "  ... 123 ".into()
                ],
                64
            )
        );
    }

    #[test]
    fn related_code_scores_higher_than_unrelated() {
        let e = |s: &str| embed_batch(&[s.to_string()], 384);
        let a = e("def sort_list(items):\n    \"\"\"Sort a list of items.\"\"\"\n    return sorted(items)");
        let b = e("def sortItems(values):\n    return sorted(values)");
        let c =
            e("def read_config(path):\n    with open(path) as fh:\n        return json.load(fh)");
        assert!(
            cos(&a, &b) > cos(&a, &c) + 0.1,
            "{} vs {}",
            cos(&a, &b),
            cos(&a, &c)
        );
    }
}
