//! Text to token ids as llama.cpp's `llama_tokenize(vocab, text, add_special, parse_special =
//! false)` gives them (llama-perplexity, llama-imatrix and llama-tokenize call it so), from a
//! GGUF's `tokenizer.*` metadata (llama.cpp 0.3.36's `src/llama-vocab.cpp`):
//!
//! - the vocabulary as `llama_vocab::load` reads it: each token's attributes from its type,
//!   plus those it infers from token texts (end-of-generation and FIM tokens become control
//!   tokens, ...), because they decide what is split out of the raw text;
//! - user-defined tokens are split out of the raw text first, longest first; control and
//!   unknown tokens are not (`parse_special = false`): their text is ordinary text;
//! - SentencePiece (`llama`): each run of raw text, spaces escaped to `▁` and a space put in
//!   front at the start and after a split-out token, merged pair by pair by piece score
//!   (`llm_tokenizer_spm`), with byte pieces `<0xXX>` for what forms no piece;
//! - byte-level BPE (`gpt2`): the `tokenizers` crate's BPE on the tokens and merges, with the
//!   pre-tokenizer [`super::export`] rebuilds for `tokenizer.ggml.pre`, one text run at a time;
//! - with `add_special`, BOS first and EOS last when the vocabulary asks for them.
//!
//! Other vocabularies (WPM, UGM, RWKV, ...) are an error naming the type.

use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value, ValueType};
use std::borrow::Cow;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

/// The token ids of `text` as llama.cpp tokenizes it for the vocabulary in `md`; with
/// `add_special`, BOS and EOS added where the vocabulary says (llama-perplexity passes true,
/// `llama-tokenize --no-bos` false).
pub fn tokenize(md: &Metadata, text: &str, add_special: bool) -> Result<Vec<u32>> {
    let vocab = Vocab::load(md)?;
    let mut out = Vec::with_capacity(text.len() / 3 + 2);
    if add_special && vocab.head.add_bos {
        out.push(vocab.head.bos()?);
    }
    let fragments = vocab.partition(text);
    match vocab.head.kind {
        Kind::Spm => vocab.spm(text, &fragments, &mut out)?,
        Kind::Bpe => bpe(md, &vocab, text, &fragments, &mut out)?,
    }
    if add_special && vocab.head.add_eos {
        out.push(vocab.head.ids.eos.ok_or_else(|| {
            Error::Invalid("the vocabulary adds EOS but has no eos_token_id".into())
        })?);
    }
    Ok(out)
}

/// The BOS id llama.cpp puts first (and llama-perplexity at the start of every chunk), `None`
/// when the vocabulary adds none; an error when it would but has no BOS token, or when the
/// vocabulary is not one smelt tokenizes.
pub fn bos_to_add(md: &Metadata) -> Result<Option<u32>> {
    let head = Header::read(md)?;
    if head.add_bos {
        head.bos().map(Some)
    } else {
        Ok(None)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Spm,
    Bpe,
}

/// llama.cpp's token attributes (`LLAMA_TOKEN_ATTR_*`), the ones tokenizing looks at.
mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// The special token ids llama.cpp keeps (those tokenizing or the attribute inference uses).
#[derive(Clone, Debug, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

/// What the vocabulary says about adding tokens, read without building the vocabulary.
#[derive(Clone, Debug)]
struct Header {
    kind: Kind,
    n_tokens: usize,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    ids: SpecialIds,
}

impl Header {
    fn read(md: &Metadata) -> Result<Header> {
        let model = md.get_str("tokenizer.ggml.model").ok_or_else(|| {
            Error::Invalid("cannot tokenize: the model has no tokenizer.ggml.model".into())
        })?;
        let kind = match model {
            "llama" => Kind::Spm,
            "gpt2" => Kind::Bpe,
            other => {
                let what = match other {
                    "bert" => "WPM, BERT's WordPiece",
                    "t5" => "UGM, T5's Unigram",
                    "rwkv" => "RWKV",
                    "plamo2" => "PLaMo-2",
                    "hybriddna" | "whitespace" | "gemma4" => "a BPE variant",
                    "no_vocab" | "none" => "no vocabulary",
                    _ => "not a type llama.cpp knows",
                };
                return Err(Error::Invalid(format!(
                    "cannot tokenize: tokenizer.ggml.model `{other}` ({what}) is not supported; \
                     smelt tokenizes SentencePiece (`llama`) and byte-level BPE (`gpt2`) vocabularies"
                )));
            }
        };
        let n_tokens = md
            .get("tokenizer.ggml.tokens")
            .and_then(Value::array_len)
            .ok_or_else(|| {
                Error::Invalid("cannot tokenize: no tokenizer.ggml.tokens array".into())
            })?;
        // llama.cpp's defaults per type, then the keys the GGUF has.
        let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("");
        let (mut add_bos, mut add_eos, mut add_space_prefix) = match kind {
            Kind::Spm => (true, false, true),
            // The pre-tokenizers whose families always start with BOS.
            Kind::Bpe => (
                matches!(
                    pre,
                    "llama3"
                        | "llama-v3"
                        | "llama-bpe"
                        | "falcon3"
                        | "falcon-h1"
                        | "pixtral"
                        | "midm-2.0"
                        | "lfm2"
                        | "jina-v5-nano"
                        | "tekken"
                        | "chameleon"
                ),
                false,
                false,
            ),
        };
        if let Some(b) = flag(md, "tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = b;
        }
        if let Some(b) = flag(md, "tokenizer.ggml.add_bos_token")? {
            add_bos = b;
        }
        if let Some(b) = flag(md, "tokenizer.ggml.add_eos_token")? {
            add_eos = b;
        }
        let (bos, eos) = match kind {
            Kind::Spm => (Some(1), Some(2)),
            Kind::Bpe => (Some(11), Some(11)),
        };
        let id = |key: &str, default: Option<u32>| special_id(md, key, default, n_tokens);
        let mut ids = SpecialIds {
            bos: id("bos_token_id", bos)?,
            eos: id("eos_token_id", eos)?,
            eot: id("eot_token_id", None)?,
            eom: id("eom_token_id", None)?,
            fim_pre: id("fim_pre_token_id", None)?,
            fim_suf: id("fim_suf_token_id", None)?,
            fim_mid: id("fim_mid_token_id", None)?,
            fim_pad: id("fim_pad_token_id", None)?,
            fim_rep: id("fim_rep_token_id", None)?,
            fim_sep: id("fim_sep_token_id", None)?,
        };
        // The deprecated names, read after the new ones (llama.cpp's order: they win).
        ids.fim_pre = id("prefix_token_id", ids.fim_pre)?;
        ids.fim_suf = id("suffix_token_id", ids.fim_suf)?;
        ids.fim_mid = id("middle_token_id", ids.fim_mid)?;
        Ok(Header {
            kind,
            n_tokens,
            add_bos,
            add_eos,
            add_space_prefix,
            ids,
        })
    }

    fn bos(&self) -> Result<u32> {
        self.ids
            .bos
            .ok_or_else(|| Error::Invalid("the vocabulary adds BOS but has no bos_token_id".into()))
    }
}

fn flag(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::Invalid(format!(
            "{key} is a {:?}, not a bool",
            other.value_type()
        ))),
    }
}

/// `tokenizer.ggml.<key>`, as llama.cpp reads it: a default out of the vocabulary is none, an
/// id out of it leaves the default.
fn special_id(md: &Metadata, key: &str, default: Option<u32>, n: usize) -> Result<Option<u32>> {
    let default = default.filter(|&d| (d as usize) < n);
    let full = format!("tokenizer.ggml.{key}");
    match md.get(&full) {
        None => Ok(default),
        Some(v) => {
            let id = v
                .as_u64()
                .ok_or_else(|| Error::Invalid(format!("{full} is not a token id")))?;
            Ok(if id < n as u64 {
                Some(id as u32)
            } else {
                default
            })
        }
    }
}

/// A run of the text (byte range) still to tokenize, or a token split out of it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

struct Vocab<'a> {
    head: Header,
    tokens: Vec<Cow<'a, str>>,
    ids: HashMap<Cow<'a, str>, u32>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    /// The tokens split out of raw text, in llama.cpp's order (longest first).
    split_tokens: Vec<u32>,
    /// SentencePiece's byte tokens, `<0xXX>`.
    byte_tokens: [Option<u32>; 256],
}

impl<'a> Vocab<'a> {
    fn load(md: &'a Metadata) -> Result<Vocab<'a>> {
        let head = Header::read(md)?;
        let n = head.n_tokens;
        let items = md
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::Invalid("cannot tokenize: tokenizer.ggml.tokens is not strings".into())
            })?;
        let mut tokens = Vec::with_capacity(n);
        for (i, v) in items.iter().enumerate() {
            let s = v.as_str().ok_or_else(|| {
                Error::Invalid("cannot tokenize: tokenizer.ggml.tokens is not strings".into())
            })?;
            // llama.cpp renames empty tokens so that every text names one token.
            tokens.push(if s.is_empty() {
                Cow::Owned(format!("[EMPTY_{i}]"))
            } else {
                Cow::Borrowed(s)
            });
        }
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(t.clone(), i as u32) {
                // llama.cpp refuses such a vocabulary (its text -> id map would lose one).
                return Err(Error::Invalid(format!(
                    "cannot tokenize: tokens {first} and {i} are both {:?}",
                    t.as_ref()
                )));
            }
        }
        let scores = numbers(md, "tokenizer.ggml.scores", n)?.unwrap_or_else(|| vec![0.0; n]);
        let attrs = match numbers(md, "tokenizer.ggml.token_type", n)? {
            Some(types) => types.iter().map(|&t| type_attr(t as i32)).collect(),
            None => vec![attr::NORMAL; n],
        };
        let mut v = Vocab {
            head,
            tokens,
            ids,
            scores,
            attrs,
            split_tokens: Vec::new(),
            byte_tokens: [None; 256],
        };
        v.infer_attrs();
        // llama.cpp's special-token cache: control, user-defined and unknown tokens, longest
        // first. (Its std::sort is not stable; ties keep id order here, which differs only
        // for two same-length user-defined tokens overlapping in the text.)
        let mut cache: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                v.attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        cache.sort_by_key(|&i| std::cmp::Reverse(v.tokens[i as usize].len()));
        v.name_attrs(md, &cache);
        // parse_special = false: control and unknown tokens stay text.
        v.split_tokens = cache
            .into_iter()
            .filter(|&i| v.attrs[i as usize] & (attr::CONTROL | attr::UNKNOWN) == 0)
            .collect();
        // (llama.cpp then tries the byte as a one-character token: that finds only an ASCII
        // character, which never needs spelling, being a token already.)
        for b in 0..=255u8 {
            v.byte_tokens[b as usize] = v.id(&format!("<0x{b:02X}>"));
        }
        Ok(v)
    }

    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The attributes `llama_vocab::load` infers from token texts: end-of-generation and FIM
    /// tokens become control tokens (so their text is no longer split out), gpt-oss's
    /// channel tokens become user-defined, and a few model-specific exceptions.
    fn infer_attrs(&mut self) {
        const EOT: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ];
        const EOM: &[&str] = &["<|eom_id|>"];
        const FIM_PRE: &[&str] = &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ];
        const FIM_SUF: &[&str] = &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ];
        const FIM_MID: &[&str] = &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ];
        const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
        const FIM_REP: &[&str] = &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ];
        const FIM_SEP: &[&str] = &["<|file_sep|>"];
        const EOG: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "</s>",
            "<|eom_id|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "[EOS]",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<eos>",
            "<turn|>",
            "<|tool_response>",
            "<｜end▁of▁sentence｜>",
            "[e~[",
        ];
        const ALWAYS_SHOWN: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

        // llama.cpp walks its text -> id map in byte order; the first match of a list wins.
        let named: Vec<(&str, u32)> = [
            EOT,
            EOM,
            FIM_PRE,
            FIM_SUF,
            FIM_MID,
            FIM_PAD,
            FIM_REP,
            FIM_SEP,
            EOG,
            ALWAYS_SHOWN,
        ]
        .concat()
        .into_iter()
        .filter_map(|t| Some((t, self.id(t)?)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
        let mut ids = self.head.ids.clone();
        for &(text, id) in &named {
            for (slot, list) in [
                (&mut ids.eot, EOT),
                (&mut ids.eom, EOM),
                (&mut ids.fim_pre, FIM_PRE),
                (&mut ids.fim_suf, FIM_SUF),
                (&mut ids.fim_mid, FIM_MID),
                (&mut ids.fim_pad, FIM_PAD),
                (&mut ids.fim_rep, FIM_REP),
                (&mut ids.fim_sep, FIM_SEP),
            ] {
                if slot.is_none() && list.contains(&text) {
                    *slot = Some(id);
                    self.attrs[id as usize] |= attr::CONTROL;
                }
            }
        }
        // (Control tokens named "unused" also get UNUSED there: no effect on tokenizing.)
        let mut eog: BTreeSet<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for &(text, id) in &named {
            if EOG.contains(&text) {
                eog.insert(id);
                self.attrs[id as usize] |= attr::CONTROL;
            }
        }
        for &(text, id) in &named {
            if ALWAYS_SHOWN.contains(&text) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
        let in_eog = |text: &str| {
            self.id(text)
                .filter(|id| eog.contains(id))
                .map(|id| id as usize)
        };
        // gpt-oss and solar-open: `<|end|>` ends a message, not generation; a plain token.
        let end = in_eog("<|end|>");
        let call = in_eog("<|call|>").or(in_eog("<|calls|>")).is_some();
        let (ret, flush) = (
            in_eog("<|return|>").is_some(),
            in_eog("<|flush|>").is_some(),
        );
        let end_demoted = end.filter(|_| call && (ret || flush));
        // Gemma 4 and PLaMo: `</s>` is a normal token.
        let s = in_eog("</s>");
        let s_normal =
            s.filter(|_| in_eog("<|tool_response>").is_some() || in_eog("<|plamo:eos|>").is_some());
        if let Some(e) = end_demoted {
            self.attrs[e] = attr::USER_DEFINED;
        }
        if let Some(s) = s_normal {
            self.attrs[s] = attr::NORMAL;
        }
    }

    /// The per-model attributes llama.cpp sets by name after building its cache: Phi-3
    /// strips the whitespace after its special tokens, a few BERT-like models before `<mask>`.
    fn name_attrs(&mut self, md: &Metadata, cache: &[u32]) {
        let name = md
            .get_str("general.name")
            .unwrap_or("")
            .to_ascii_lowercase();
        let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("");
        let arch = md.get_str("general.architecture").unwrap_or("");
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"]
                .iter()
                .any(|a| arch.contains(a))
        {
            self.set_attr("<mask>", attr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in cache {
                self.attrs[id as usize] |= attr::RSTRIP;
            }
            self.set_attr("</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                self.set_attr(t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            self.set_attr("[MASK]", attr::LSTRIP, true);
        }
    }

    fn set_attr(&mut self, text: &str, a: u16, on: bool) {
        // llama.cpp fails to load when the token is missing; here that changes nothing.
        if let Some(id) = self.id(text) {
            let at = &mut self.attrs[id as usize];
            *at = if on { *at | a } else { *at & !a };
        }
    }

    /// `tokenizer_st_partition` with `parse_special = false`: each split token in turn cut
    /// out of every text run, leftmost occurrences first.
    fn partition(&self, text: &str) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        // C's isspace in the "C" locale.
        let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
        let mut frags = if text.is_empty() {
            vec![]
        } else {
            vec![Fragment::Text(0, text.len())]
        };
        for &id in &self.split_tokens {
            let tok: &str = &self.tokens[id as usize];
            let a = self.attrs[id as usize];
            let present = frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(s, e) if text[s..e].contains(tok)));
            if !present {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(s, e) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = s;
                while let Some(off) = text[pos..e].find(tok) {
                    let m = pos + off;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > pos && space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > pos {
                        next.push(Fragment::Text(pos, left_end));
                    }
                    next.push(Fragment::Token(id));
                    pos = m + tok.len();
                    if a & attr::RSTRIP != 0 {
                        while pos < e && space(bytes[pos]) {
                            pos += 1;
                        }
                    }
                }
                if pos < e {
                    next.push(Fragment::Text(pos, e));
                }
            }
            frags = next;
        }
        frags
    }

    /// The SentencePiece path of `llama_vocab::impl::tokenize`.
    fn spm(&self, text: &str, frags: &[Fragment], out: &mut Vec<u32>) -> Result<()> {
        let mut after_token = true; // the text's start counts as one
        let mut run = String::new();
        for f in frags {
            match *f {
                Fragment::Text(s, e) => {
                    run.clear();
                    if self.head.add_space_prefix && after_token {
                        run.push('\u{2581}');
                    }
                    for c in text[s..e].chars() {
                        run.push(if c == ' ' { '\u{2581}' } else { c });
                    }
                    self.spm_run(&run, out)?;
                    after_token = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    after_token = true;
                }
            }
        }
        Ok(())
    }

    /// `llm_tokenizer_spm_session::tokenize` on one escaped run: start from characters and
    /// repeatedly merge the adjacent pair forming the best-scored token (leftmost on ties);
    /// what is left is a token, or its bytes.
    fn spm_run(&self, run: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(run.len());
        for (start, c) in run.char_indices() {
            let i = syms.len();
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        let Some(last) = syms.last_mut() else {
            return Ok(());
        };
        last.next = None;
        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.push_pair(run, &syms, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(p) = queue.pop() {
            let (l, r) = (p.left, p.right);
            // Stale: one side was merged since the pair was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != p.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            self.push_pair(run, &syms, &mut queue, syms[l].prev, Some(l));
            self.push_pair(run, &syms, &mut queue, Some(l), syms[l].next);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let sym = &syms[i];
            let piece = &run[sym.start..sym.start + sym.len];
            if let Some(id) = self.id(piece) {
                out.push(id);
            } else {
                // Every merge formed a token, so this is one character the vocabulary lacks.
                for b in piece.bytes() {
                    out.push(self.byte_tokens[b as usize].ok_or_else(|| {
                        Error::Invalid(format!(
                            "cannot tokenize the text: {piece:?} is no token of the vocabulary and \
                             it has no byte token <0x{b:02X}> to spell it with (llama.cpp fails on this text too)"
                        ))
                    })?);
                }
            }
            at = sym.next;
        }
        Ok(())
    }

    fn push_pair(
        &self,
        run: &str,
        syms: &[Symbol],
        queue: &mut BinaryHeap<Pair>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let start = syms[l].start;
        let size = syms[l].len + syms[r].len;
        if let Some(id) = self.id(&run[start..start + size]) {
            let score = self.scores[id as usize];
            queue.push(Pair {
                // -0 and +0 compare equal in C++: one key for both.
                score: if score == 0.0 { 0.0 } else { score },
                left: l,
                right: r,
                size,
            });
        }
    }
}

/// A symbol of `llm_tokenizer_spm_session`: bytes `start..start + len` of the run (`len` 0
/// once merged into its left neighbour), linked to its current neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols into a token of `size` bytes.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Pair {
    /// llama.cpp's `llm_bigram_spm::comparator`: the highest score first, then the leftmost.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Pair {}

/// llama.cpp's attribute for a token type (gguf-py `TokenType`).
fn type_attr(t: i32) -> u16 {
    use super::token_type as ty;
    match t {
        ty::NORMAL => attr::NORMAL,
        ty::UNKNOWN => attr::UNKNOWN,
        ty::CONTROL => attr::CONTROL,
        ty::USER_DEFINED => attr::USER_DEFINED,
        ty::UNUSED => attr::UNUSED,
        ty::BYTE => attr::BYTE,
        _ => 0,
    }
}

/// The first `n` numbers of an F32 or I32 array (scores, token types) as f32; `None` when
/// the key is absent.
fn numbers(md: &Metadata, key: &str, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let bad = |why: &str| Error::Invalid(format!("cannot tokenize: {key} {why}"));
    let Value::Numbers(ty @ (ValueType::F32 | ValueType::I32), bytes) = v else {
        return Err(bad("is not an array of f32 or i32"));
    };
    if bytes.len() / 4 < n {
        return Err(bad("is shorter than tokenizer.ggml.tokens"));
    }
    Ok(Some(
        bytes
            .chunks_exact(4)
            .take(n)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                match ty {
                    ValueType::F32 => f32::from_le_bytes(b),
                    _ => i32::from_le_bytes(b) as f32,
                }
            })
            .collect(),
    ))
}

/// The byte-level BPE path: the `tokenizers` crate's BPE with the vocabulary's tokens and
/// merges and the pre-tokenizer `tokenizer.ggml.pre` names, on each text run (no added
/// tokens: the partition above split out what llama.cpp splits out).
fn bpe(
    md: &Metadata,
    vocab: &Vocab,
    text: &str,
    frags: &[Fragment],
    out: &mut Vec<u32>,
) -> Result<()> {
    let tok = bpe_tokenizer(md, vocab)?;
    for f in frags {
        match *f {
            Fragment::Text(s, e) => {
                let enc = tok
                    .encode(&text[s..e], false)
                    .map_err(|e| Error::Invalid(format!("tokenizing the text: {e}")))?;
                out.extend_from_slice(enc.get_ids());
            }
            Fragment::Token(id) => out.push(id),
        }
    }
    Ok(())
}

fn bpe_tokenizer(md: &Metadata, vocab: &Vocab) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{Merges, Vocab as BpeVocab, BPE};
    let pre_name = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre = super::export::pre_tokenizer(pre_name).ok_or_else(|| {
        Error::Invalid(format!(
            "cannot tokenize: the BPE pre-tokenizer `{pre_name}` is not one smelt knows \
             (gpt2, smollm, llama-bpe, qwen2)"
        ))
    })?;
    let pre: tokenizers::PreTokenizerWrapper = serde_json::from_value(pre)
        .map_err(|e| Error::Invalid(format!("pre-tokenizer `{pre_name}`: {e}")))?;
    let merges = md
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Invalid("cannot tokenize: no tokenizer.ggml.merges".into()))?;
    let mut pairs: Merges = Vec::with_capacity(merges.len());
    for m in merges {
        let m = m
            .as_str()
            .ok_or_else(|| Error::Invalid("tokenizer.ggml.merges is not strings".into()))?;
        // Split as llama.cpp does: at the first space after the first byte.
        let Some(at) = m.bytes().skip(1).position(|c| c == b' ').map(|i| i + 1) else {
            continue;
        };
        let (a, b) = (&m[..at], &m[at + 1..]);
        // The crate wants both sides and the result in the vocabulary (real ones are).
        if [a, b].iter().all(|t| vocab.id(t).is_some()) && vocab.id(&format!("{a}{b}")).is_some() {
            pairs.push((a.to_string(), b.to_string()));
        }
    }
    let ids: BpeVocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(ids, pairs)
        // llama.cpp's families that take a whole word that is a token as it is.
        .ignore_merges(matches!(pre_name, "llama3" | "llama-bpe"))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot tokenize: the BPE vocabulary: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::token_type as ty;

    const N: i32 = ty::NORMAL;

    /// A SentencePiece vocabulary of `pieces` (text, score, type), no space prefix unless
    /// `extra` says.
    fn spm(pieces: &[(&str, f32, i32)], extra: &[(&str, Value)]) -> Metadata {
        let mut md = Metadata::new();
        md.set("tokenizer.ggml.model", Value::String("llama".into()));
        md.set(
            "tokenizer.ggml.tokens",
            Value::strings(pieces.iter().map(|p| p.0)),
        );
        md.set(
            "tokenizer.ggml.scores",
            Value::f32s(pieces.iter().map(|p| p.1)),
        );
        md.set(
            "tokenizer.ggml.token_type",
            Value::i32s(pieces.iter().map(|p| p.2)),
        );
        md.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
        for (k, v) in extra {
            md.set(format!("tokenizer.ggml.{k}"), v.clone());
        }
        md
    }

    const SPECIALS: [(&str, f32, i32); 3] = [
        ("<unk>", 0.0, ty::UNKNOWN),
        ("<s>", 0.0, ty::CONTROL),
        ("</s>", 0.0, ty::CONTROL),
    ];

    /// 3 `a`, 4 `b`, 5 `c`, 6 `ab`, 7 `bc` with the two pairs' scores given.
    fn abc(ab: f32, bc: f32) -> Metadata {
        let mut p = SPECIALS.to_vec();
        p.extend([
            ("a", -5.0, N),
            ("b", -5.0, N),
            ("c", -5.0, N),
            ("ab", ab, N),
            ("bc", bc, N),
        ]);
        spm(&p, &[])
    }

    fn ids(md: &Metadata, text: &str) -> Vec<u32> {
        tokenize(md, text, false).unwrap()
    }

    #[test]
    fn the_best_scored_pair_merges_first_and_ties_go_left() {
        assert_eq!(ids(&abc(-1.0, -2.0), "abc"), [6, 5]);
        assert_eq!(ids(&abc(-2.0, -1.0), "abc"), [3, 7]);
        assert_eq!(ids(&abc(-1.0, -1.0), "abc"), [6, 5]);
        // Not left to right: `bc` (better) is taken in the middle, then `a` is left alone.
        assert_eq!(ids(&abc(-2.0, -1.0), "abcab"), [3, 7, 6]);
        // -0 and +0 are one score: the tie goes left.
        assert_eq!(ids(&abc(0.0, -0.0), "abc"), [6, 5]);
        assert_eq!(ids(&abc(-0.0, 0.0), "abc"), [6, 5]);
    }

    #[test]
    fn merges_go_on_through_longer_tokens() {
        let mut p = SPECIALS.to_vec();
        // The best pair first, whatever the longest token: `bc`, not `ab` + `cd`.
        p.extend([
            ("a", -9.0, N),
            ("b", -9.0, N),
            ("c", -9.0, N),
            ("d", -9.0, N),
            ("ab", -3.0, N),
            ("bc", -1.0, N),
            ("cd", -2.0, N),
            ("abcd", -4.0, N),
            ("abc", -8.0, N),
        ]);
        let md = spm(&p, &[]);
        // bc first, then a + bc = abc, then abc + d = abcd.
        assert_eq!(ids(&md, "abcd"), [10]);
        // Without `abc`, nothing forms after bc: a bc d, though `abcd` is a token.
        p.pop();
        let md = spm(&p, &[]);
        assert_eq!(ids(&md, "abcd"), [3, 8, 6]);
    }

    #[test]
    fn unknown_characters_fall_back_to_byte_tokens() {
        let mut p = SPECIALS.to_vec();
        p.push(("a", -1.0, N));
        for b in 0..=255u8 {
            p.push((
                Box::leak(format!("<0x{b:02X}>").into_boxed_str()),
                0.0,
                ty::BYTE,
            ));
        }
        let md = spm(&p, &[]);
        let byte = |b: u8| 4 + b as u32;
        // é is C3 A9; the byte pieces never merge with their neighbours.
        assert_eq!(ids(&md, "aéa"), [3, byte(0xC3), byte(0xA9), 3]);
        assert_eq!(
            ids(&md, "🎉"),
            [byte(0xF0), byte(0x9F), byte(0x8E), byte(0x89)]
        );
        let md = spm(
            &[SPECIALS[0], SPECIALS[1], SPECIALS[2], ("a", -1.0, N)],
            &[],
        );
        // No byte token at all: an error naming the character, not a panic.
        let err = tokenize(&md, "aéa", false).unwrap_err().to_string();
        assert!(err.contains("\"é\"") && err.contains("<0xC3>"), "{err}");
    }

    #[test]
    fn spaces_are_escaped_and_prefixed() {
        let mut p = SPECIALS.to_vec();
        p.extend([
            ("\u{2581}", -1.0, N),
            ("a", -1.0, N),
            ("\u{2581}a", -0.5, N),
            ("\u{2581}\u{2581}", -0.7, N),
        ]);
        let md = spm(&p, &[("add_space_prefix", Value::Bool(true))]);
        // " a  a" -> ▁▁a▁▁a: the leftmost best pair first (▁a at 1, then at 4), rest ▁.
        assert_eq!(ids(&md, "a  a"), [5, 3, 5]);
        assert_eq!(ids(&md, ""), Vec::<u32>::new());
        let md = spm(&p, &[]);
        assert_eq!(ids(&md, "a a"), [4, 5]);
        assert_eq!(ids(&md, " "), [3]);
    }

    #[test]
    fn bos_and_eos_as_the_vocabulary_says() {
        let md = abc(-1.0, -2.0);
        // SentencePiece adds BOS (id 1) unless told otherwise, and no EOS.
        assert_eq!(tokenize(&md, "ab", true).unwrap(), [1, 6]);
        assert_eq!(bos_to_add(&md).unwrap(), Some(1));
        let mut md = abc(-1.0, -2.0);
        md.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        md.set("tokenizer.ggml.add_eos_token", Value::Bool(true));
        md.set("tokenizer.ggml.eos_token_id", Value::U32(5));
        assert_eq!(tokenize(&md, "ab", true).unwrap(), [6, 5]);
        assert_eq!(tokenize(&md, "ab", false).unwrap(), [6]);
        assert_eq!(bos_to_add(&md).unwrap(), None);
        // A BOS id out of the vocabulary leaves the default (1); none when that is out too.
        let mut md = spm(&[("a", 0.0, N)], &[("bos_token_id", Value::U32(7))]);
        assert!(tokenize(&md, "a", true).is_err());
        md.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        assert_eq!(tokenize(&md, "a", true).unwrap(), [0]);
    }

    #[test]
    fn user_defined_tokens_are_split_out_control_tokens_are_not() {
        let mut p = SPECIALS.to_vec();
        p.extend([
            ("\u{2581}", -1.0, N),
            ("<", -1.0, N),
            ("s", -1.0, N),
            (">", -1.0, N),
            ("a", -1.0, N),
            ("<tool>", 0.0, ty::USER_DEFINED),
            ("<tool>x", 0.0, ty::USER_DEFINED),
            ("t", -1.0, N),
            ("o", -1.0, N),
            ("l", -1.0, N),
            ("x", -1.0, N),
            // Marked user-defined, but llama.cpp makes end-of-generation names control.
            ("<|im_end|>", 0.0, ty::USER_DEFINED),
            ("|", -1.0, N),
            ("i", -1.0, N),
            ("m", -1.0, N),
            ("_", -1.0, N),
            ("e", -1.0, N),
            ("n", -1.0, N),
            ("d", -1.0, N),
        ]);
        let md = spm(&p, &[("add_space_prefix", Value::Bool(true))]);
        let v = Vocab::load(&md).unwrap();
        assert_eq!(
            v.split_tokens,
            [9, 8],
            "longest first, control ones left out"
        );
        // The text's start and each split token give the next run a space in front.
        assert_eq!(ids(&md, "a<tool>a"), [3, 7, 8, 3, 7]);
        assert_eq!(ids(&md, "<tool>xa"), [9, 3, 7]);
        // `<s>` (control) and `<|im_end|>` stay text.
        assert_eq!(ids(&md, "<s>"), [3, 4, 5, 6]);
        let im_end: Vec<u32> = "<|im_end|>"
            .chars()
            .map(|c| v.id(c.encode_utf8(&mut [0; 4])).unwrap())
            .collect();
        assert_eq!(ids(&md, "<|im_end|>"), [&[3][..], &im_end].concat());
    }

    #[test]
    fn phi3_strips_spaces_after_user_defined_tokens() {
        let mut p = SPECIALS.to_vec();
        p.extend([
            ("\u{2581}", -1.0, N),
            ("a", -1.0, N),
            ("<tool>", 0.0, ty::USER_DEFINED),
        ]);
        let mut md = spm(&p, &[]);
        assert_eq!(ids(&md, "<tool>  a"), [5, 3, 3, 4]);
        md.set("general.name", Value::String("Phi3 Mini".into()));
        assert_eq!(ids(&md, "<tool> \t\na"), [5, 4]);
    }

    #[test]
    fn byte_level_bpe_merges_and_splits_user_defined_tokens() {
        let mut md = Metadata::new();
        md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        md.set("tokenizer.ggml.pre", Value::String("gpt2".into()));
        let tokens = ["<|endoftext|>", "Ġ", "<", "a", "b", "Ġ<", "ab", "<t>"];
        md.set("tokenizer.ggml.tokens", Value::strings(tokens));
        md.set(
            "tokenizer.ggml.token_type",
            Value::i32s([ty::CONTROL, N, N, N, N, N, N, ty::USER_DEFINED]),
        );
        // The first side of a merge may be several bytes long (`Ġ` is two).
        md.set("tokenizer.ggml.merges", Value::strings(["Ġ <", "a b"]));
        assert_eq!(tokenize(&md, " <ab", true).unwrap(), [5, 6]);
        assert_eq!(tokenize(&md, "a<t>b", true).unwrap(), [3, 7, 4]);
        assert_eq!(bos_to_add(&md).unwrap(), None);
        // Llama 3's pre-tokenizer adds BOS unless told otherwise; its default id (11) is out.
        md.set("tokenizer.ggml.pre", Value::String("llama-bpe".into()));
        assert!(tokenize(&md, "ab", true).is_err());
        md.set("tokenizer.ggml.bos_token_id", Value::U32(0));
        assert_eq!(tokenize(&md, "ab", true).unwrap(), [0, 6]);
        md.set("tokenizer.ggml.pre", Value::String("unheard-of".into()));
        let err = tokenize(&md, "ab", true).unwrap_err().to_string();
        assert!(err.contains("unheard-of"), "{err}");
    }

    #[test]
    fn unsupported_vocabularies_name_their_type() {
        for (model, what) in [
            ("bert", "WPM"),
            ("t5", "UGM"),
            ("rwkv", "RWKV"),
            ("xyz", "xyz"),
        ] {
            let mut md = abc(-1.0, -1.0);
            md.set("tokenizer.ggml.model", Value::String(model.into()));
            let err = tokenize(&md, "ab", true).unwrap_err().to_string();
            assert!(err.contains(model) && err.contains(what), "{err}");
            assert!(bos_to_add(&md).is_err());
        }
        let mut md = abc(-1.0, -1.0);
        md.remove("tokenizer.ggml.model");
        assert!(tokenize(&md, "ab", true).is_err());
        // Scores shorter than the tokens, duplicate texts: errors too.
        let mut md = abc(-1.0, -1.0);
        md.set("tokenizer.ggml.scores", Value::f32s([0.0]));
        assert!(tokenize(&md, "ab", true).is_err());
        let md = spm(&[("a", 0.0, N), ("a", 0.0, N)], &[]);
        assert!(tokenize(&md, "a", true).is_err());
    }
}
