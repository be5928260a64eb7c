//! `tokenizer.ggml.pre`: which pre-tokenizer (split regexes) llama.cpp must use for a BPE
//! vocabulary. Like the script's `get_vocab_base_pre`, the name comes from the token ids of a
//! fixed check text: sha256 of Python's `str(ids)`, looked up in the script's table.

pub use super::pre_table::CHECK_TEXT;
use super::pre_table::PRE_HASHES;
use sha2::{Digest, Sha256};

/// The hex sha256 of `ids` printed as Python prints a list of ints (`[1, 22, 333]`).
pub fn ids_hash(ids: &[u32]) -> String {
    let text = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `tokenizer.ggml.pre` name for check-text hash `hash`, when llama.cpp knows it.
pub fn pre_name(hash: &str) -> Option<&'static str> {
    PRE_HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| *name)
}
