//! SentencePiece `tokenizer.model` vocabularies (the script's `_create_vocab_sentencepiece`).
//!
//! The file is a protobuf `ModelProto`; only its repeated field 1, `pieces`, matters here,
//! each a `SentencePiece { piece = 1 (string), score = 2 (float), type = 3 (enum) }`. Protobuf
//! is varints and length-delimited fields, so a small reader that skips every other field
//! is enough, and a truncated or garbled file is an error rather than a panic.

use super::{looks_special, read_json, token_type, unescape_spaces};
use crate::error::{Error, Result};
use serde_json::Value as Json;
use std::path::Path;

/// One piece of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Piece {
    pub piece: String,
    pub score: f32,
    /// SentencePiece's `Type`: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
    pub kind: u64,
}

pub(super) struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

/// The vocabulary of `tokenizer.model` at `path`, `vocab_size` long (`config.json`'s, else
/// the model's own size), with `added_tokens.json` and `tokenizer_config.json`'s
/// `added_tokens_decoder` applied on top as the script does.
pub(super) fn vocab(
    path: &Path,
    dir: &Path,
    vocab_size: Option<u64>,
    tokenizer_config: Option<&Json>,
) -> Result<SpmVocab> {
    let bytes =
        crate::input::read_in(dir, path)?.ok_or_else(|| Error::format(path, "no such file"))?;
    let pieces = parse_model(&bytes).map_err(|m| Error::format(path, m))?;
    let n = vocab_size.unwrap_or(pieces.len() as u64) as usize;
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![token_type::UNUSED; n];
    // Pieces past `vocab_size` are dropped (the script warns and stops there).
    for (i, p) in pieces.into_iter().enumerate().take(n) {
        // The script asks SentencePieceProcessor IsUnknown / IsControl / IsUnused / IsByte;
        // anything else, USER_DEFINED pieces included, is written as NORMAL.
        types[i] = match p.kind {
            2 => token_type::UNKNOWN,
            3 => token_type::CONTROL,
            5 => token_type::UNUSED,
            6 => token_type::BYTE,
            _ => token_type::NORMAL,
        };
        tokens[i] = p.piece;
        scores[i] = p.score;
    }

    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_json(&added_path)? {
        let map = added
            .as_object()
            .ok_or_else(|| Error::format(&added_path, "not a JSON object of token -> id"))?;
        for (token, id) in map {
            let id = id.as_u64().ok_or_else(|| {
                Error::format(
                    &added_path,
                    format!("token {token:?}: id {id} is not a number"),
                )
            })? as usize;
            if id >= n {
                continue;
            }
            tokens[id] = token.clone();
            scores[id] = -1000.0;
            types[id] = token_type::USER_DEFINED;
        }
    }

    let tc_path = dir.join("tokenizer_config.json");
    if let Some(decoder) = tokenizer_config
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Json::as_object)
    {
        for (id, data) in decoder {
            let bad = |m: &str| Error::format(&tc_path, format!("added_tokens_decoder[{id}]: {m}"));
            let id: usize = id.parse().map_err(|_| bad("the key is not a token id"))?;
            let content = data
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("no `content` string"))?;
            if id >= n {
                continue;
            }
            let special = data.get("special").and_then(Json::as_bool).unwrap_or(false);
            if special || looks_special(content) {
                types[id] = token_type::CONTROL;
                tokens[id] = content.to_string();
            } else {
                types[id] = token_type::USER_DEFINED;
                tokens[id] = unescape_spaces(content);
            }
            scores[id] = -1000.0;
        }
    }
    Ok(SpmVocab {
        tokens,
        scores,
        types,
    })
}

/// The pieces of a serialized `ModelProto`, in order.
pub(super) fn parse_model(bytes: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut pieces = Vec::new();
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            let body = r.bytes()?;
            pieces.push(parse_piece(body).map_err(|m| format!("piece {}: {m}", pieces.len()))?);
        } else {
            r.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        return Err("no SentencePiece pieces: not a SentencePiece model".into());
    }
    Ok(pieces)
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<Piece, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    // proto2 defaults: empty piece, score 0, type NORMAL.
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    while !r.done() {
        match r.key()? {
            (1, 2) => {
                p.piece = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| "piece text is not UTF-8".to_string())?;
            }
            (2, 5) => p.score = f32::from_le_bytes(r.fixed::<4>()?),
            (3, 0) => p.kind = r.varint()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(p)
}

/// A cursor over protobuf wire data; every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("truncated protobuf: the file ends inside a varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("bad protobuf varint at byte {}", self.pos))
    }

    /// Field number and wire type.
    fn key(&mut self) -> std::result::Result<(u64, u64), String> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated protobuf: a {n}-byte field at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(n)
    }

    fn fixed<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn skip(&mut self, wire: u64) -> std::result::Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            _ => Err(format!(
                "unsupported protobuf wire type {wire} at byte {}: not a SentencePiece model",
                self.pos
            )),
        }
    }
}
