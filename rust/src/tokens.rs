//! Offline token counting.
//!
//! OpenAI's `cl100k_base` and `o200k_base` are counted exactly with the `bpe-openai`
//! crate, which embeds both vocabularies and reproduces tiktoken's pre-tokenisation
//! (text is counted as ordinary text: special-token strings such as `<|endoftext|>`
//! count as the characters they are, like tiktoken's `encode_ordinary`).
//!
//! Anthropic publishes no tokenizer for its current models, so `anthropic_estimate`
//! is `ceil(1.2 × cl100k_base)`: Claude's tokenizer yields more tokens than
//! `cl100k_base` on English and code, and over-counting is the safe side for a
//! tokens-per-minute limiter, which reconciles with the `usage` the API reports.

use rayon::prelude::*;

/// A tokenizer the counter knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Cl100kBase,
    O200kBase,
    AnthropicEstimate,
}

impl Encoding {
    /// Every accepted name, for error messages.
    pub const NAMES: [&'static str; 3] = ["cl100k_base", "o200k_base", "anthropic_estimate"];

    /// Parse an encoding name; `None` for an unknown one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "cl100k_base" => Some(Self::Cl100kBase),
            "o200k_base" => Some(Self::O200kBase),
            "anthropic_estimate" => Some(Self::AnthropicEstimate),
            _ => None,
        }
    }
}

/// Tokens in one text.
pub fn count(text: &str, encoding: Encoding) -> usize {
    match encoding {
        Encoding::Cl100kBase => bpe_openai::cl100k_base().count(text),
        Encoding::O200kBase => bpe_openai::o200k_base().count(text),
        Encoding::AnthropicEstimate => (bpe_openai::cl100k_base().count(text) * 6).div_ceil(5),
    }
}

/// Token ids of one text (OpenAI encodings only), for checks against known encodings.
pub fn encode(text: &str, encoding: Encoding) -> Option<Vec<u32>> {
    match encoding {
        Encoding::Cl100kBase => Some(bpe_openai::cl100k_base().encode(text)),
        Encoding::O200kBase => Some(bpe_openai::o200k_base().encode(text)),
        Encoding::AnthropicEstimate => None,
    }
}

/// Below this many bytes a batch is counted on the calling thread: handing a job to the
/// pool costs a thread wake-up (tens of µs on a busy machine), more than counting it.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// Tokens in each text; large batches are counted in parallel.
pub fn count_batch(texts: &[String], encoding: Encoding) -> Vec<usize> {
    let bytes: usize = texts.iter().map(String::len).sum();
    if texts.len() < 2 || bytes < PARALLEL_MIN_BYTES {
        return texts.iter().map(|t| count(t, encoding)).collect();
    }
    texts.par_iter().map(|t| count(t, encoding)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings_from_the_openai_cookbook() {
        // "tiktoken is great!" as printed by tiktoken for both encodings.
        assert_eq!(
            encode("tiktoken is great!", Encoding::Cl100kBase).unwrap(),
            vec![83, 1609, 5963, 374, 2294, 0]
        );
        assert_eq!(
            encode("tiktoken is great!", Encoding::O200kBase).unwrap(),
            vec![83, 8251, 2488, 382, 2212, 0]
        );
    }

    #[test]
    fn small_and_large_batches_count_alike() {
        let text = "def f(x):\n    return x ** 2  # square\n".to_string();
        let one = count(&text, Encoding::O200kBase);
        for n in [1, 3, 4000] {
            // 4000 copies exceed PARALLEL_MIN_BYTES: the parallel path.
            let batch = vec![text.clone(); n];
            assert_eq!(count_batch(&batch, Encoding::O200kBase), vec![one; n]);
        }
    }

    #[test]
    fn counts_agree_with_encode_and_empty_is_zero() {
        let text = "def f(x):\n    return x ** 2  # square\n\n\tünïcödé 😀";
        for enc in [Encoding::Cl100kBase, Encoding::O200kBase] {
            assert_eq!(count(text, enc), encode(text, enc).unwrap().len());
            assert_eq!(count("", enc), 0);
        }
        let c = count(text, Encoding::Cl100kBase);
        assert_eq!(
            count(text, Encoding::AnthropicEstimate),
            (c * 6).div_ceil(5)
        );
    }

    #[test]
    fn names_round_trip() {
        for name in Encoding::NAMES {
            assert!(Encoding::from_name(name).is_some());
        }
        assert_eq!(Encoding::from_name("gpt2"), None);
    }
}
